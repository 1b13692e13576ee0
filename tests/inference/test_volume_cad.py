"""The two-stage nodule CAD (``blob-cad``): blob candidates, scores, FWHM masks, SEG and SR."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from overread.inference.volume import VolumePipeline
from overread.models.blob_cad import (
    DEFAULT_WEIGHTS,
    FEATURES,
    find_candidates,
    fit_weights,
    fwhm_mask,
    score,
)
from overread.models.ct_cad import NAME, write_cad_package
from overread.models.manifest import Manifest
from overread.models.package import load_package
from overread.service.outputs.volume import build_volume_outputs

from .ct_series import NODULES, SHAPE, SPACING, chest_volume, write_series

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _with_vessel(volume: np.ndarray) -> np.ndarray:
    """A 3 mm vessel (+40 HU) running through the left lung along the slices."""
    d, h, w = volume.shape
    z, y, x = np.meshgrid(
        np.arange(d) * SPACING[0],
        np.arange(h) * SPACING[1],
        np.arange(w) * SPACING[2],
        indexing="ij",
    )
    tube = ((x - 24.0) ** 2 + (y - 24.0) ** 2 <= 1.5**2) & (z > 20) & (z < 80)
    out = volume.copy()
    out[tube & (volume < -500)] = 40.0
    return out


@pytest.fixture(scope="module")
def chest() -> np.ndarray:
    rng = np.random.default_rng(0)
    volume = _with_vessel(chest_volume(SHAPE, SPACING, NODULES))
    return (volume + rng.normal(0, 15, volume.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def output(chest: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> object:
    root = tmp_path_factory.mktemp("cad")
    paths = write_series(root / "series", chest, SPACING)
    pipeline = VolumePipeline(load_package(write_cad_package(root / "pkg")))
    [result] = pipeline.predict_series(paths)
    return result


def _truth_voxel(centre_mm: tuple[float, float, float]) -> np.ndarray:
    x, y, z = centre_mm
    return np.array([z / SPACING[0], y / SPACING[1], x / SPACING[2]])


def test_spheres_are_candidates_and_score_above_the_vessel(chest: np.ndarray) -> None:
    lung = chest < -400
    candidates = find_candidates(chest, SPACING, lung | (chest > -700) & (chest < 100))
    spacing = np.asarray(SPACING)
    scores = [score(c) for c in candidates]
    for nodule in NODULES:
        near = [
            (s, c)
            for s, c in zip(scores, candidates, strict=True)
            if np.linalg.norm((np.asarray(c.centre) - _truth_voxel(nodule.centre_mm)) * spacing)
            <= nodule.radius_mm
        ]
        assert near, nodule
        best, candidate = max(near, key=lambda item: item[0])
        assert candidate.sphericity > 0.5
        assert abs(candidate.radius_mm - nodule.radius_mm) < 2.5
        # The vessel's candidates (left lung, x = 24 mm, y = 24 mm) all score lower.
        vessel = [
            s
            for s, c in zip(scores, candidates, strict=True)
            if abs(c.centre[2] * SPACING[2] - 24) < 3 and abs(c.centre[1] * SPACING[1] - 24) < 3
        ]
        assert vessel and max(vessel) < best


def test_the_half_maximum_mask_matches_the_sphere(chest: np.ndarray) -> None:
    lung = chest < -400
    candidates = find_candidates(chest, SPACING, lung | (chest > -700) & (chest < 100))
    solid = NODULES[0]
    [candidate] = [
        c
        for c in candidates
        if np.linalg.norm((np.asarray(c.centre) - _truth_voxel(solid.centre_mm)) * SPACING)
        <= solid.radius_mm
    ][:1]
    box, mask = fwhm_mask(chest, SPACING, candidate)
    truth = chest_volume(SHAPE, SPACING, NODULES) == solid.hu
    inside = truth[box]
    dice = 2 * (mask & inside).sum() / (mask.sum() + inside.sum())
    assert dice > 0.8


def test_fit_weights_separates_labelled_candidates() -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, len(FEATURES)))
    y = (x[:, 0] + 0.5 * x[:, 3] > 0).astype(int)
    w = np.asarray(fit_weights(x, y))
    predicted = (w[0] + x @ w[1:]) > 0
    assert (predicted == y).mean() > 0.95


def test_the_package_finds_both_nodules_first_and_measures_them(output: object) -> None:
    prediction = output.prediction  # type: ignore[attr-defined]
    assert prediction.ok and prediction.task == "segmentation"
    assert prediction.model.name == NAME
    regions = sorted(prediction.regions, key=lambda r: -r.score)
    assert len(regions) >= 2
    top = sorted(regions[:2], key=lambda r: r.centre_mm[0])
    for region, truth in zip(top, NODULES, strict=True):
        assert np.linalg.norm(np.subtract(region.centre_mm, truth.centre_mm)) < 2.5
        assert abs(region.longest_diameter_mm - 2 * truth.radius_mm) < 3.5
    solid, glass = top
    assert solid.density == "solid" and glass.density == "ground-glass"
    assert abs(glass.mean_hu - NODULES[1].hu) < 120
    label_map = output.label_map  # type: ignore[attr-defined]
    for region in regions:
        assert (label_map == region.segment_number).sum() > 0
    [finding] = prediction.findings
    assert finding.positive


def test_seg_and_sr_carry_the_cad_nodules(output: object, tmp_path: Path) -> None:
    prediction = output.prediction  # type: ignore[attr-defined]
    seg, sr = build_volume_outputs(
        prediction,
        output.source_datasets(),  # type: ignore[attr-defined]
        output.label_map,  # type: ignore[attr-defined]
        output.labels,  # type: ignore[attr-defined]
    )
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    sr.save_as(sr_path, enforce_file_format=True)
    read = hd.seg.segread(seg_path)
    assert read.SOPClassUID == SEGMENTATION_STORAGE
    labels = [item.SegmentLabel for item in read.SegmentSequence]
    assert labels == ["lung"] + [f"nodule {r.index}" for r in prediction.regions]
    groups = hd.sr.srread(sr_path).content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(prediction.regions)


def test_blob_cad_needs_one_weight_per_feature_and_keeps_other_hashes(tmp_path: Path) -> None:
    package = load_package(write_cad_package(tmp_path / "pkg", revision=2))
    assert package.manifest.volume is not None
    assert package.manifest.volume.cad_weights == tuple(DEFAULT_WEIGHTS)
    data = json.loads(package.manifest.to_json())
    data.pop("signature")
    data["volume"]["cad_weights"] = [1.0, 2.0]
    with pytest.raises(ValueError, match="cad_weights"):
        Manifest.model_validate(data)
    # A lung-nodule manifest does not carry the CAD fields (its hash is unchanged).
    data["volume"]["postprocess"] = "lung-nodule"
    plain = Manifest.model_validate(data)
    assert "cad_weights" not in json.loads(plain.canonical_bytes())["volume"]


def test_a_part_solid_nodule_is_masked_with_its_ground_glass_rim() -> None:
    spacing = (2.0, 1.0, 1.0)
    shape = (24, 48, 48)
    z, y, x = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    dist = np.sqrt((z - 24) ** 2 + (y - 24) ** 2 + (x - 24) ** 2)
    rng = np.random.default_rng(2)
    hu = np.full(shape, -850.0) + rng.normal(0, 15, shape)
    whole = dist <= 7.0
    hu[whole] = -600.0 + rng.normal(0, 15, int(whole.sum()))
    hu[dist <= 3.0] = 30.0
    hu = hu.astype(np.float32)
    candidates = find_candidates(hu, spacing, np.ones(shape, dtype=bool))
    candidate = min(
        candidates,
        key=lambda c: np.linalg.norm((np.asarray(c.centre) - [12, 24, 24]) * spacing),
    )
    box, mask = fwhm_mask(hu, spacing, candidate)
    truth = whole[box]
    dice = 2 * (mask & truth).sum() / (mask.sum() + truth.sum())
    assert dice > 0.7


def test_the_bundled_cad_package_verifies_and_carries_the_fitted_weights() -> None:
    from overread.models import Registry

    package = Registry("unused-registry-root").load(NAME)
    volume = package.manifest.volume
    assert volume is not None and volume.postprocess == "blob-cad"
    assert package.manifest.task.value == "segmentation"
    assert volume.cad_revision == 3 and volume.cad_trees and volume.cad_weights == ()
    assert (package.path / "MODEL_CARD.md").read_text().startswith(f"# {NAME}")


def test_a_prediction_warns_when_max_candidates_leaves_peaks_unscored(
    chest: np.ndarray, tmp_path: Path
) -> None:
    paths = write_series(tmp_path / "series", chest, SPACING)
    pipeline = VolumePipeline(load_package(write_cad_package(tmp_path / "pkg")))
    assert pipeline.spec.cad_max_candidates == 1000
    [full] = pipeline.predict_series(paths)
    assert not any("blob peaks" in w for w in full.prediction.warnings)
    pipeline.spec = pipeline.spec.model_copy(update={"cad_max_candidates": 1})
    [cut] = pipeline.predict_series(paths)
    [warning] = [w for w in cut.prediction.warnings if "blob peaks" in w]
    assert warning.startswith("1 nodule candidates kept from the strongest 1 of ")
    assert len(cut.prediction.regions) <= 1
