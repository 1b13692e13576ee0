"""The nodule CAD's operating points: chosen on a training FROC, carried by the package."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.inference.ct_series import SHAPE, SPACING, Nodule, chest_volume, write_series

from overread.errors import ConfigError
from overread.imaging.series import load_series
from overread.inference.volume import VolumePipeline
from overread.models.ct_cad import SCORE_FLOOR
from overread.models.package import load_package, resign_package
from overread.service.config import DEFAULT_ROUTES
from overread.training.ct_cad import (
    FLOOR_POINT,
    nodule_operating_points,
    write_operating_points,
)
from overread.training.ct_eval import figures_at, threshold_for_fp

NODULE_MM = (24.0, 38.0, 50.0)
BUNDLED = Path(__file__).resolve().parents[2] / "src/overread/models/bundled/ct-nodule-cad"

# Three scans: scores of the marks (descending) with their FP/scan and sensitivity.
DETECTION: dict[str, Any] = {
    "curve": {
        "score": [None, 0.9, 0.7, 0.5, 0.3, 0.1],
        "fp_per_scan": [0.0, 0.0, 0.3333, 1.0, 1.3333, 4.0],
        "sensitivity": [0.0, 0.25, 0.5, 0.5, 0.75, 1.0],
    }
}


def test_the_threshold_lies_half_way_below_the_lowest_score_within_the_rate() -> None:
    # Strictly between two distinct scores: no mark sits on the boundary.
    assert threshold_for_fp(DETECTION, 1.0) == pytest.approx(0.4)
    assert threshold_for_fp(DETECTION, 0.99) == pytest.approx(0.6)
    assert threshold_for_fp(DETECTION, 4.0) == pytest.approx(0.05)
    assert threshold_for_fp(DETECTION, 4.0, floor=0.02) == pytest.approx(0.06)
    assert (
        threshold_for_fp({"curve": {**DETECTION["curve"], "fp_per_scan": [0, 2, 2, 2, 2, 2]}}, 1)
        is None
    )
    points = nodule_operating_points({"detection": DETECTION, "score_floor": 0.02})
    assert points == pytest.approx({"balanced": 0.4, "high sensitivity": 0.06})
    for name, rate in (("balanced", 1.0), ("high sensitivity", 4.0)):
        assert figures_at(DETECTION, points[name])["fp_per_scan"] <= rate
    crowded = {"curve": {**DETECTION["curve"], "fp_per_scan": [0, 2, 2, 2, 2, 2]}}
    with pytest.raises(ConfigError, match=r"at or below 1 per scan"):
        nodule_operating_points({"detection": crowded})


def test_figures_at_a_threshold_count_the_marks_at_or_above_it() -> None:
    assert figures_at(DETECTION, 0.5) == {"threshold": 0.5, "sensitivity": 0.5, "fp_per_scan": 1.0}
    # Between two marks: those above it.
    assert figures_at(DETECTION, 0.4)["fp_per_scan"] == 1.0
    assert figures_at(DETECTION, 0.95) == {
        "threshold": 0.95,
        "sensitivity": 0.0,
        "fp_per_scan": 0.0,
    }


def test_write_operating_points_resigns_and_keeps_the_floor(tmp_path: Path) -> None:
    package = tmp_path / "cad"
    shutil.copytree(BUNDLED, package)
    manifest = write_operating_points(
        package,
        {"balanced": 0.5, "high sensitivity": 0.1},
        cohort="three phantoms",
        metrics={"detection": DETECTION},
    )
    loaded = load_package(package)  # hashes and signature verified
    assert loaded.manifest == manifest
    assert manifest.operating_points["nodule"] == {
        "balanced": 0.5,
        "high sensitivity": 0.1,
        FLOOR_POINT: SCORE_FLOOR,
    }
    assert set(manifest.operating_points["lung"]) == set(manifest.operating_points["nodule"])
    recorded = manifest.training["operating_points"]
    assert recorded["cohort"] == "three phantoms"
    assert recorded["figures"]["balanced"]["fp_per_scan"] == 1.0
    card = (package / "MODEL_CARD.md").read_text()
    assert card.count("## Operating points") == 1 and "three phantoms" in card
    assert list(loaded.thresholds(FLOOR_POINT)) == pytest.approx([0.5, SCORE_FLOOR])
    with pytest.raises(ConfigError, match="below the score floor"):
        write_operating_points(package, {"balanced": 0.001}, cohort="x", metrics={})


def test_the_bundled_cad_reports_at_a_fitted_point_above_its_floor() -> None:
    manifest = load_package(BUNDLED).manifest
    nodule = manifest.operating_points["nodule"]
    assert manifest.default_operating_point == "balanced"
    assert nodule[FLOOR_POINT] == SCORE_FLOOR
    assert SCORE_FLOOR < nodule["high sensitivity"] < nodule["balanced"] < 1.0
    recorded = manifest.training["operating_points"]
    # A tuning seed: not the trees' own (seed 0), not a held-out one (4, 5).
    assert "seed 6" in recorded["cohort"] and "seed 0)" not in recorded["cohort"]
    assert recorded["figures"]["balanced"]["fp_per_scan"] <= 1.0
    assert recorded["figures"]["high sensitivity"]["fp_per_scan"] <= 4.0
    assert recorded["figures"]["balanced"]["threshold"] == nodule["balanced"]
    # Measured once on a held-out seed at the same points.
    held = recorded["held_out"]
    assert "seed 5" in held["cohort"] and set(held["figures"]) == {"balanced", "high sensitivity"}
    for name in held["figures"]:
        assert held["figures"][name]["threshold"] == nodule[name]


def test_the_default_ct_route_names_the_cad() -> None:
    [ct] = [route for route in DEFAULT_ROUTES if "CT" in route.modality]
    assert ct.models == ["ct-nodule-cad"]


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Any:
    # A 12 mm nodule: the CAD also scores a weak candidate beside it.
    volume = chest_volume(SHAPE, SPACING, [Nodule(NODULE_MM, 6.0, 30.0)])
    paths = write_series(tmp_path_factory.mktemp("ct") / "series", volume, SPACING)
    return load_series(paths).volumes[0]


def _at_nodule(regions: Any) -> Any:
    """The region at the phantom's nodule, picked by where it is."""
    [hit] = [r for r in regions if np.linalg.norm(np.subtract(r.centre_mm, NODULE_MM)) < 3]
    return hit


def _with_balanced(tmp_path: Path, threshold: float) -> VolumePipeline:
    package = tmp_path / "cad"
    shutil.copytree(BUNDLED, package)
    points = load_package(BUNDLED).manifest.operating_points
    nodule = {**points["nodule"], "balanced": threshold}
    resign_package(package, operating_points={**points, "nodule": nodule})
    return VolumePipeline(load_package(package))


def test_a_series_reports_only_nodules_at_the_operating_point(series: Any, tmp_path: Path) -> None:
    pipeline = VolumePipeline(load_package(BUNDLED))
    balanced = pipeline.package.manifest.operating_points["nodule"]["balanced"]
    default = pipeline.run_volume(series).prediction
    every = pipeline.run_volume(series, operating_point=FLOOR_POINT).prediction
    # No more findings than at the floor: exactly those scoring at least the point.
    assert default.regions and len(default.regions) <= len(every.regions)
    assert [r.centre_mm for r in default.regions] == [
        r.centre_mm for r in every.regions if r.score >= balanced
    ]
    assert _at_nodule(default.regions).score == _at_nodule(every.regions).score
    [finding] = default.findings
    assert finding.positive and finding.operating_point == "balanced"
    assert finding.threshold == pytest.approx(balanced)
    # The weaker candidate beside the nodule: dropped by a point between the two.
    scores = sorted((r.score for r in every.regions), reverse=True)
    assert len(scores) >= 2
    between = _with_balanced(tmp_path, (scores[0] + scores[1]) / 2)
    [only] = between.run_volume(series).prediction.regions
    assert only.score == _at_nodule(every.regions).score


def test_a_negative_series_carries_its_best_score_below_the_point(
    series: Any, tmp_path: Path
) -> None:
    every = VolumePipeline(load_package(BUNDLED)).run_volume(series).prediction
    top = max(r.score for r in every.regions)
    # An operating point above every candidate: nothing reported, the score kept.
    prediction = _with_balanced(tmp_path, top + 1e-6).run_volume(series).prediction
    [finding] = prediction.findings
    assert prediction.regions == [] and not finding.positive
    assert finding.probability == pytest.approx(top)


def test_the_command_refuses_a_folder_that_is_not_a_cohort(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from overread.cli import main

    status = main(["models", "ct-operating-points", "--data", str(tmp_path)])
    assert status not in (0, None)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error:") and "not a phantom CT cohort" in err[-1]
