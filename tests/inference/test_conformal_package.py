"""``overread models conformal``: calibrate on a cohort, write a new package version,
and ``overread evaluate`` reports the coverage achieved and the risk-coverage curve."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.models.conftest import LABELS, tiny_package

from overread.models import load_package, verify_package
from overread.models.manifest import MANIFEST_NAME

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from overread.cli import main

    out = tmp_path_factory.mktemp("cohort") / "cal"
    status = main(
        ["phantom", "cxr", "--n", "20", "--out", str(out), "--size", "64", "--seed", "5",
         "--workers", "1"]
    )  # fmt: skip
    assert status == 0
    return out


def test_conformal_writes_a_new_verified_version(
    run_cli: Run, cohort: Path, tmp_path: Path
) -> None:
    source = tiny_package(tmp_path / "src")
    before = (source / MANIFEST_NAME).read_bytes()
    out = tmp_path / "calibrated"
    status, stdout, err = run_cli(
        "models", "conformal", "--model", source, "--data", cohort, "--alpha", "0.2",
        "--version", "1.0.1", "--out", out, "--json",
    )  # fmt: skip
    assert status == 0, err
    report = json.loads(stdout)
    assert report["version"] == "1.0.1" and Path(report["path"]) == out.resolve()
    assert verify_package(out) == []
    package = load_package(out)
    section = package.manifest.conformal
    assert section is not None and section.alpha == 0.2 and section.n == 20
    assert section.method == "class-conditional"
    assert set(section.quantiles) == set(LABELS)
    assert section.calibration["phantom_seed"] == 5 and section.scores["tta_views"] == 1
    assert (source / MANIFEST_NAME).read_bytes() == before
    # The same version again is refused; so is a bad alpha, in one line.
    status, _, err = run_cli(
        "models", "conformal", "--model", source, "--data", cohort, "--version", "1.0.0",
        "--out", tmp_path / "again",
    )  # fmt: skip
    assert status == 2 and err.startswith("error: ") and "new version" in err
    status, _, err = run_cli(
        "models", "conformal", "--model", source, "--data", cohort, "--alpha", "1.5",
        "--out", tmp_path / "bad",
    )  # fmt: skip
    assert status == 2 and err.count("\n") == 1 and "alpha" in err

    evaluation = tmp_path / "eval"
    status, _, err = run_cli(
        "evaluate", "--model", out, "--data", cohort, "--resamples", "20", "--out", evaluation
    )
    assert status == 0, err
    metrics = json.loads((evaluation / "metrics.json").read_text())
    conformal = metrics["conformal"]
    assert conformal["asked"] == pytest.approx(0.8) and conformal["served"] == "class-conditional"
    for label in LABELS:
        entry = conformal["labels"][label]
        assert set(entry) == {"marginal", "class-conditional"}
        # On its own calibration cohort a class-conditional set covers >= 1 - alpha of
        # each class by construction (the quantile's rank).
        for key in ("coverage_positive", "coverage_negative"):
            value = entry["class-conditional"][key]
            assert value is None or value >= 0.8
    selective = metrics["selective"]
    assert set(selective["pooled"]) == {"proximity", "conformal", "joined"}
    joined = selective["pooled"]["joined"]
    assert joined["referral_rate"] >= selective["pooled"]["conformal"]["referral_rate"]
    assert joined["referral_rate"] >= selective["pooled"]["proximity"]["referral_rate"]
    assert "Selective prediction" in (evaluation / "report.html").read_text()


def test_calibrating_with_tta_makes_it_the_served_default(
    run_cli: Run, cohort: Path, tmp_path: Path
) -> None:
    from overread.inference.pipeline import Pipeline

    source = tiny_package(tmp_path / "src")
    out = tmp_path / "tta"
    status, _, err = run_cli(
        "models", "conformal", "--model", source, "--data", cohort, "--alpha", "0.2",
        "--version", "1.0.2", "--tta", "3", "--out", out,
    )  # fmt: skip
    assert status == 0, err
    package = load_package(out)
    assert package.manifest.uncertainty is not None
    assert package.manifest.uncertainty.tta_views == 3
    pipeline = Pipeline(package)
    assert pipeline.sampling.tta is not None and pipeline.sampling.tta.views == 3
    assert pipeline.conformal_applies
    assert not Pipeline(package, tta_views=1).conformal_applies
