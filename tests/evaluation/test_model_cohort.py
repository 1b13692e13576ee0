"""``overread evaluate --model PACKAGE --data COHORT`` on a generated phantom cohort."""

from __future__ import annotations

import importlib.util
import json

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("overread.inference") is None
    or importlib.util.find_spec("overread.cli.phantom") is None,
    reason="needs overread.inference and the phantom generator",
)


def test_evaluate_bundled_model_on_phantom_cohort(run_cli, tmp_path) -> None:
    import pandas as pd

    cohort = tmp_path / "cohort"
    status, _, err = run_cli(
        "phantom", "cxr", "--n", "24", "--out", cohort, "--size", "128", "--seed", "3"
    )
    assert status == 0, err
    out = tmp_path / "eval"
    status, _, err = run_cli(
        "evaluate",
        "--model",
        "cxr-default",
        "--data",
        cohort,
        "--subgroups",
        "sex,age,site",
        "--resamples",
        "100",
        "--subgroup-resamples",
        "10",
        "--out",
        out,
    )
    assert status == 0, err
    metrics = json.loads((out / "metrics.json").read_text())
    truth = pd.read_csv(cohort / "truth.csv")
    assert metrics["n_cases"] == len(truth)
    assert metrics["n_patients"] == truth["PatientID"].nunique()
    for name, entry in metrics["labels"].items():
        assert entry["n_positive"] == int(truth[name].sum())
        if entry["n_positive"] == 0:
            assert entry["auc"] is None and "no positive" in entry["reason"]
        else:
            assert 0.0 <= entry["auc"] <= 1.0
            assert "given" in entry["threshold_source"]  # the package's operating point
    assert set(metrics["subgroups"]) == {"sex", "age", "site"}
    assert (out / "report.html").stat().st_size > 10_000
