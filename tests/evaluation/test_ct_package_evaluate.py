"""``overread evaluate`` on a volumetric package and a phantom CT cohort."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from overread.cli import main


def test_evaluate_reports_ct_figures_with_cis_and_a_froc_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    cohort = tmp_path / "cohort"
    assert (
        main(
            ["phantom", "ct", "--n", "3", "--seed", "5", "--size", "64", "--out", str(cohort), "-q"]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "report"
    status = main(
        [
            "evaluate",
            "--model",
            "ct-threshold-baseline",
            "--data",
            str(cohort),
            "--out",
            str(out),
            "--resamples",
            "200",
            "--json",
        ]
    )
    assert status in (0, None)
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert json.loads(printed[: printed.rindex("}") + 1]) == metrics
    assert printed.rstrip().endswith("metrics.json")
    assert metrics["cases"] == 3 and metrics["model"]["task"] == "segmentation"
    # The baseline finds the lungs: a real Dice, inside its own interval.
    assert 0.5 < metrics["lung_dice"] <= 1.0
    lo, hi = metrics["ci95"]["lung_dice"]
    assert lo <= metrics["lung_dice"] <= hi
    assert 0.0 < metrics["lung_nsd"] <= 1.0 and metrics["ci95"]["lung_nsd"] is not None
    detection = metrics["detection"]
    assert {"sensitivity_at_1fp", "cpm", "curve"} <= set(detection)
    assert set(metrics["by_size"]) and set(metrics["by_density"]) == {
        "solid",
        "part-solid",
        "ground-glass",
    }
    report = (out / "report.html").read_text()
    assert "Lung Dice" in report and "<svg" in report and "FROC" in report


def test_evaluate_a_classifier_on_a_ct_cohort_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    cohort = tmp_path / "cohort"
    assert main(["phantom", "ct", "--n", "1", "--size", "64", "--out", str(cohort), "-q"]) == 0
    status = main(
        ["evaluate", "--model", "cxr-default", "--data", str(cohort), "--out", str(tmp_path / "r")]
    )
    assert status not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "not a volumetric package" in err[-1]


def test_evaluate_the_nodule_cad_masks_and_finds_nodules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    cohort = tmp_path / "cohort"
    argv = ["phantom", "ct", "--n", "3", "--seed", "5", "--size", "96", "--out", str(cohort)]
    assert main([*argv, "-q"]) == 0
    figures = {}
    for model in ("ct-nodule-cad", "ct-threshold-baseline"):
        out = tmp_path / model
        args = ["--data", str(cohort), "--out", str(out), "--resamples", "200"]
        assert main(["evaluate", "--model", model, *args]) in (0, None)
        figures[model] = json.loads((out / "metrics.json").read_text())
    capsys.readouterr()
    cad, base = figures["ct-nodule-cad"], figures["ct-threshold-baseline"]
    assert cad["model"]["task"] == "segmentation" and cad["nodules_ge6mm"] > 0
    # Masks (SEG) and marks both: nodule Dice and CPM above the threshold package's.
    assert cad["nodule_dice_ge6mm"] > max(0.3, base["nodule_dice_ge6mm"] + 0.2)
    assert cad["detection"]["cpm"] > base["detection"]["cpm"]
    # The CAD runs at its score floor (the whole FROC); each named point is read off it.
    assert cad["run_at"] == "all candidates" and "operating_points" not in base
    points = cad["operating_points"]
    assert list(points) == ["balanced", "high sensitivity", "all candidates"]
    fp = [points[name]["fp_per_scan"] for name in points]
    assert fp == sorted(fp) and points["all candidates"]["sensitivity"] > 0
    assert points["all candidates"]["fp_per_scan"] == cad["detection"]["curve"]["fp_per_scan"][-1]
