"""``overread models calibrate``: an onboarded model gets calibration, operating points,
conformal sets and an evaluation report fitted on a labelled phantom cohort."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from tests.models.foreign import LABELS, write_torchscript

from overread.models import load_package, verify_package
from overread.models.manifest import SourceFormat
from overread.models.onboard import OnboardSpec, package_model

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from overread.cli import main

    out = tmp_path_factory.mktemp("cohort") / "local"
    status = main(
        ["phantom", "cxr", "--n", "60", "--out", str(out), "--size", "128", "--seed", "9",
         "--workers", "1"]
    )  # fmt: skip
    assert status == 0
    return out


def test_calibrate_writes_a_calibrated_version_with_its_report(
    run_cli: Run, cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    write_torchscript(tmp_path / "model.ts", size=64, sigmoid=True)
    source = package_model(
        SourceFormat.TORCHSCRIPT,
        tmp_path / "model.ts",
        tmp_path / "pkg",
        OnboardSpec(name="ts-model", version="1.0", labels=tuple(LABELS), size=64),
    )
    before = (source.path / "manifest.json").read_bytes()
    out = tmp_path / "calibrated"
    status, stdout, err = run_cli(
        "models", "calibrate", "--model", source.path, "--data", cohort, "--out", out, "--json"
    )
    assert status == 0, err
    summary = json.loads(stdout)
    assert summary["version"] == "1.0+calibrated"
    assert summary["cohort"]["fit_images"] + summary["cohort"]["held_out_images"] == 60
    assert verify_package(out) == []
    package = load_package(out)
    manifest = package.manifest
    assert manifest.calibrated and manifest.onboarded is not None
    assert manifest.onboarded.calibration_cohort["cohort"] == "local"
    assert manifest.calibration.method == "platt"
    assert set(manifest.calibration.parameters) == set(LABELS)
    for label in LABELS:
        assert set(manifest.operating_points[label]) == {
            "balanced",
            "high sensitivity",
            "high specificity",
        }
    assert any(manifest.operating_points[label]["balanced"] != 0.5 for label in LABELS)
    assert manifest.conformal is not None
    assert manifest.conformal.n == summary["cohort"]["held_out_images"]
    # The evaluation report travels inside the package, hashed like the weights.
    assert {"evaluation/metrics.json", "evaluation/report.html"} <= set(manifest.files)
    metrics = json.loads((out / "evaluation" / "metrics.json").read_text())
    assert set(metrics["labels"]) == set(LABELS)
    assert (source.path / "manifest.json").read_bytes() == before
    # Calibrating a calibrated version again is refused in one line.
    status, _, err = run_cli(
        "models", "calibrate", "--model", out, "--data", cohort, "--out", tmp_path / "again"
    )
    assert status != 0 and err.strip().splitlines()[-1].startswith("error: ")
    assert "already calibrated" in err
    # A folder without truth is refused before anything runs.
    status, _, err = run_cli(
        "models", "calibrate", "--model", source.path, "--data", tmp_path, "--out", tmp_path / "x"
    )
    assert status != 0 and "truth.csv" in err
