"""Agreement with R: pROC (DeLong), psych (ICC) and stats (McNemar, power.prop.test).

The reference numbers in data/r_reference.json were produced by
data/r_reference.R from pROC's own aSAH data; the last test re-runs that script
when R with pROC and psych is installed, so the stored file cannot drift from
what R says.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from overread.evaluation import (
    IccForm,
    delong_ci,
    delong_covariance,
    delong_test,
    icc,
    mcnemar,
    two_proportions,
    unpaired_auc_test,
)

DATA = Path(__file__).parent / "data"
REFERENCE = json.loads((DATA / "r_reference.json").read_text())


@pytest.fixture(scope="module")
def poor(asah) -> np.ndarray:
    return (asah["outcome"] == "Poor").to_numpy().astype(int)


@pytest.mark.parametrize("marker", ["s100b", "ndka", "wfns", "age"])
def test_auc_variance_and_ci_match_proc(asah, poor, marker: str) -> None:
    ref = REFERENCE["auc"][marker]
    est = delong_ci(poor, asah[marker])
    assert est.auc == pytest.approx(ref["auc"], abs=1e-12)
    assert est.se**2 == pytest.approx(ref["var"], rel=1e-9)
    assert est.ci == pytest.approx(tuple(ref["ci"]), abs=1e-9)


@pytest.mark.parametrize("pair", ["s100b-wfns", "s100b-ndka", "ndka-wfns", "wfns-age"])
def test_paired_delong_matches_proc(asah, poor, pair: str) -> None:
    a, b = pair.split("-")
    ref = REFERENCE["paired"][pair]
    result = delong_test(poor, asah[a], asah[b])
    assert result.z == pytest.approx(ref["z"], rel=1e-9)
    assert result.p == pytest.approx(ref["p"], rel=1e-8)
    assert result.ci == pytest.approx(tuple(ref["ci"]), abs=1e-9)
    _, cov = delong_covariance(poor, np.vstack([asah[a], asah[b]]))
    assert cov[0, 1] == pytest.approx(ref["cov"], rel=1e-8, abs=1e-15)


def test_unpaired_delong_matches_proc(asah, poor) -> None:
    ref = REFERENCE["unpaired_s100b_male_vs_female"]
    male = (asah["gender"] == "Male").to_numpy()
    result = unpaired_auc_test(poor[male], asah["s100b"][male], poor[~male], asah["s100b"][~male])
    assert result.auc_a == pytest.approx(ref["auc_male"], abs=1e-12)
    assert result.auc_b == pytest.approx(ref["auc_female"], abs=1e-12)
    assert result.z == pytest.approx(ref["d"], rel=1e-9)
    assert result.p == pytest.approx(ref["p"], rel=1e-8)


def test_icc_values_and_intervals_match_psych() -> None:
    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    result = icc(ratings)
    names = {
        IccForm.ICC1: "ICC1",
        IccForm.ICC2: "ICC2",
        IccForm.ICC3: "ICC3",
        IccForm.ICC1K: "ICC1k",
        IccForm.ICC2K: "ICC2k",
        IccForm.ICC3K: "ICC3k",
    }
    for form, name in names.items():
        ref = REFERENCE["icc_shrout_fleiss"][name]
        assert result[form].value == pytest.approx(ref["icc"], abs=1e-12), form
        assert result[form].ci == pytest.approx(tuple(ref["ci"]), abs=1e-6), form


def test_mcnemar_and_power_match_r_stats() -> None:
    ref = REFERENCE["mcnemar_30_12_4_54"]
    table = [[30, 12], [4, 54]]
    corrected = mcnemar(table, exact=False, correction=True)
    plain = mcnemar(table, exact=False, correction=False)
    assert (corrected.statistic, corrected.p) == pytest.approx(
        (ref["chi2_corrected"], ref["p_corrected"])
    )
    assert (plain.statistic, plain.p) == pytest.approx((ref["chi2"], ref["p"]))
    n1, _ = two_proportions(0.85, 0.75)
    assert n1 == math.ceil(REFERENCE["power_prop_test_85_75"]["n"])


def _r_has(package: str) -> bool:
    if shutil.which("Rscript") is None:
        return False
    probe = subprocess.run(
        ["Rscript", "-e", f"quit(status = !requireNamespace('{package}', quietly = TRUE))"],
        capture_output=True,
        check=False,
    )
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not (_r_has("pROC") and _r_has("psych")), reason="needs R with pROC and psych")
def test_stored_reference_is_what_r_prints() -> None:
    fresh = subprocess.run(
        ["Rscript", str(DATA / "r_reference.R")],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    assert json.loads(fresh.stdout) == REFERENCE


@pytest.mark.parametrize("marker", ["s100b", "ndka", "wfns"])
def test_youden_operating_point_matches_proc(asah, poor, marker: str) -> None:
    from overread.evaluation import operating_point, youden_threshold

    ref = REFERENCE["youden"][marker]
    threshold = youden_threshold(poor, asah[marker])
    op = operating_point(poor, asah[marker], threshold)
    assert op.specificity.value == pytest.approx(ref["specificity"], abs=1e-12)
    assert op.sensitivity.value == pytest.approx(ref["sensitivity"], abs=1e-12)
    # pROC reports the midpoint between neighbouring scores; ours is the lowest score called positive.
    below = asah[marker][asah[marker] < threshold].max()
    assert ref["threshold"] == pytest.approx((below + threshold) / 2)
