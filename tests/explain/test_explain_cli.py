"""``overread explain`` on a tiny phantom cohort, and its answers to bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _private_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))


def test_json_is_one_object_with_every_method(
    run_cli, phantom_cohort: Path, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "report"
    status, stdout, stderr = run_cli(
        "explain",
        "--model",
        "cxr-default",
        "--data",
        phantom_cohort,
        "--method",
        "gradcam,cam",
        "--limit",
        "2",
        "--steps",
        "4",
        "--sanity-images",
        "1",
        "--json",
        "--out",
        out,
    )
    assert status == 0, stderr
    report = json.loads(stdout)  # exactly one JSON document on stdout
    assert stdout.strip().count("\n") == 0
    assert set(report["methods"]) == {"gradcam", "cam"}
    for entry in report["methods"].values():
        for key in (
            "pointing_game",
            "mask_iou",
            "deletion_auc",
            "insertion_auc",
            "sanity_rank_corr",
            "ms_per_image",
            "by_size",
            "by_finding",
            "road",
        ):
            assert key in entry
        assert set(entry["by_size"]) == {"small", "medium", "large"}
        assert 0.0 <= entry["pointing_game"] <= 1.0 and 0.0 <= entry["mask_iou"] <= 1.0
        assert -1.0 <= entry["sanity_rank_corr"] <= 1.0 and entry["ms_per_image"] > 0
        assert len(entry["curves"]["deletion"]) == 5
        assert sum(part["n"] for part in entry["by_size"].values()) == report["findings"]
    assert report["images"]["explained"] + report["images"]["without_findings"] <= 2
    assert "explained image" in stderr
    assert json.loads((out / "explanations.json").read_text())["methods"].keys() == {
        "gradcam",
        "cam",
    }
    assert "| gradcam |" in (out / "explanations.md").read_text()
    assert list((out / "overlays").glob("*.png"))


def test_table_without_json(run_cli, phantom_cohort: Path) -> None:  # type: ignore[no-untyped-def]
    status, stdout, stderr = run_cli(
        "explain", "--data", phantom_cohort, "--model", "cxr-default", "--method", "cam",
        "--limit", "1", "--steps", "2", "--sanity-images", "0",
    )  # fmt: skip
    assert status == 0, stderr
    assert "| cam |" in stdout and "| random map |" in stdout and "ms / image" in stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--data", "{missing}"], "no such cohort directory"),
        (["--data", "{empty}"], "ground_truth.json: not found"),
        (["--data", "{cohort}", "--method", "gradcam,lime"], "unknown method 'lime'"),
        (["--data", "{cohort}", "--model", "no-such-model"], "no-such-model"),
        (["--data", "{cohort}", "--target-layer", "features.99"], "no layer 'features.99'"),
        (["--data", "{cohort}", "--limit", "0"], "--limit"),
    ],
)
def test_bad_input_is_one_error_line(  # type: ignore[no-untyped-def]
    run_cli, phantom_cohort: Path, tmp_path: Path, args: list[str], says: str
) -> None:
    (tmp_path / "empty").mkdir()
    places = {
        "missing": tmp_path / "missing",
        "empty": tmp_path / "empty",
        "cohort": phantom_cohort,
    }
    filled = [a.format(**places) for a in args]
    if "--model" not in filled:
        filled += ["--model", "cxr-default"]
    status, stdout, stderr = run_cli("explain", *filled, "--json")
    assert status == 2
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0], stderr
