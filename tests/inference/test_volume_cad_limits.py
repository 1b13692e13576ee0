"""The nodule CAD's limits: memory by slabs, thick slices, vessels and the chest wall."""

from __future__ import annotations

import json
import logging
import math
import tracemalloc
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy import ndimage

from overread.models.blob_cad import (
    Candidate,
    find_candidates,
    fwhm_mask,
    search_candidates,
)
from overread.models.ct_cad import write_cad_package
from overread.models.manifest import Manifest
from overread.models.package import load_package

from .ct_series import NODULES, SHAPE, SPACING, chest_volume


def _grid(
    shape: tuple[int, int, int], spacing: tuple[float, float, float]
) -> tuple[npt.NDArray[np.float64], ...]:
    return tuple(
        np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij")
    )


def _spheres(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    spheres: list[tuple[tuple[float, float, float], float, float]],
    seed: int = 0,
) -> npt.NDArray[np.float32]:
    """Lung (-850 HU, noise 15) with spheres ``((z, y, x) mm, radius mm, HU)``."""
    z, y, x = _grid(shape, spacing)
    hu = np.full(shape, -850.0) + np.random.default_rng(seed).normal(0, 15, shape)
    for (cz, cy, cx), r, value in spheres:
        hu[(z - cz) ** 2 + (y - cy) ** 2 + (x - cx) ** 2 <= r * r] = value
    return hu.astype(np.float32)


def _extent_mm(mask: npt.NDArray[np.bool_], spacing: tuple[float, float, float]) -> float:
    """The longest distance between two voxels of ``mask`` (centre to centre, mm)."""
    points = np.argwhere(mask) * np.asarray(spacing)
    d = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    return float(d.max())


def test_slabs_give_the_whole_volume_candidates() -> None:
    rng = np.random.default_rng(0)
    noisy = chest_volume(SHAPE, SPACING, NODULES) + rng.normal(0, 15, SHAPE)
    chest = noisy.astype(np.float32)
    # Air-like voxels and two voxels around them: the lungs' and the body's edges hold
    # most of the blob peaks (the lungs alone hold two), peaks the slabs must all find.
    lung = ndimage.binary_dilation(chest < -400, iterations=2)
    whole = find_candidates(chest, SPACING, lung, slab_slices=10_000)
    assert len(whole) > 5
    for slab in (1, 4, 7):
        assert find_candidates(chest, SPACING, lung, slab_slices=slab) == whole


def _peak_bytes(slices: int) -> int:
    shape = (slices, 256, 256)
    spacing = (2.5, 0.8, 0.8)
    hu = _spheres(shape, spacing, [((slices * 1.25, 100.0, 100.0), 5.0, 30.0)])
    lung = np.ones(shape, dtype=bool)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        find_candidates(hu, spacing, lung, scales_mm=(1.2, 3.4))
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


def test_the_candidate_search_memory_does_not_grow_with_the_slices() -> None:
    short, long = _peak_bytes(40), _peak_bytes(120)
    # Bounded by a slab (8 slices and the kernels' reach), not by the series: about
    # 37 MB at 40 and at 120 slices (a whole-box Hessian took 9 float32 copies of the box).
    assert long < 1.15 * short + 1_000_000, (short, long)
    assert long < 48_000_000, (short, long)


@pytest.mark.parametrize("slice_mm", [2.5, 3.0, 3.5])
def test_a_constant_hu_offset_changes_no_candidate_on_thick_slices(slice_mm: float) -> None:
    spacing = (slice_mm, 0.8, 0.8)
    shape = (int(60 / slice_mm), 64, 64)
    hu = _spheres(
        shape, spacing, [((30.0, 25.0, 25.0), 4.0, 30.0), ((30.0, 30.0, 40.0), 2.5, -500)]
    )
    lung = np.ones(shape, dtype=bool)
    plain = find_candidates(hu, spacing, lung)
    shifted = find_candidates(hu + np.float32(600.0), spacing, lung)
    assert [c.centre for c in plain] == [c.centre for c in shifted]
    assert [c.scale_mm for c in plain] == [c.scale_mm for c in shifted]
    np.testing.assert_allclose(
        [c.blobness for c in plain], [c.blobness for c in shifted], rtol=1e-3, atol=0.05
    )
    np.testing.assert_allclose(
        [c.contrast for c in plain], [c.contrast for c in shifted], rtol=1e-4, atol=0.05
    )
    assert plain, "the spheres have candidates"


def test_a_vessel_crossing_a_nodule_is_not_measured_with_it() -> None:
    spacing = (1.0, 0.7, 0.7)
    shape = (40, 64, 64)
    centre = (20.0, 22.0, 22.0)
    hu = _spheres(shape, spacing, [(centre, 5.0, 30.0)])
    z, y, _ = _grid(shape, spacing)
    tube = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 <= 1.5**2  # along x, 3 mm
    hu[tube] = 40.0
    candidates = find_candidates(hu, spacing, np.ones(shape, dtype=bool))
    target = np.asarray(centre) / np.asarray(spacing)
    candidate = min(candidates, key=lambda c: np.linalg.norm((c.centre - target) * spacing))
    assert np.linalg.norm((candidate.centre - target) * spacing) < 2.0
    _, mask = fwhm_mask(hu, spacing, candidate)
    volume = mask.sum() * math.prod(spacing)
    assert abs(volume - 4 / 3 * math.pi * 125) < 0.15 * 4 / 3 * math.pi * 125, volume
    assert abs(_extent_mm(mask, spacing) - 10.0) < 1.5


def test_a_nodule_on_the_chest_wall_does_not_take_the_wall() -> None:
    spacing = (2.0, 0.8, 0.8)
    shape = (24, 64, 64)
    z, y, x = _grid(shape, spacing)
    centre = (24.0, 25.0, 26.0)
    wall = x >= 30.0
    hu = _spheres(shape, spacing, [(centre, 5.0, 30.0)])
    hu[wall] = 40.0
    lung = (hu <= -700) & ~wall
    voxel = tuple(round(c / s) for c, s in zip(centre, spacing, strict=True))
    candidate = Candidate(voxel, 5.0 / math.sqrt(3), 300.0, 200.0, 0.9, 30.0, -850.0)  # type: ignore[arg-type]
    truth = (z - centre[0]) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2 <= 25.0
    box, mask = fwhm_mask(hu, spacing, candidate, lung=lung)
    volume = mask.sum() * math.prod(spacing)
    expected = truth[~wall].sum() * math.prod(spacing)
    assert abs(volume - expected) < 0.15 * expected, (volume, expected)
    assert not (mask & wall[box]).any()
    # The part-solid rule stays off the wall too (a solid core, a wide dense region).
    box, mask = fwhm_mask(hu, spacing, candidate, lung=lung, rim_ratio=1.0)
    assert not (mask & wall[box]).any()


def test_max_candidates_is_a_warning_and_the_cad_settings_are_hashed(
    caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    hu = _spheres(
        (24, 64, 64),
        (2.0, 0.8, 0.8),
        [((16.0, 20.0, 20.0), 4.0, 30.0), ((30.0, 30.0, 35.0), 4.0, 30.0)],
    )
    lung = np.ones(hu.shape, dtype=bool)
    every = search_candidates(hu, (2.0, 0.8, 0.8), lung)
    assert not every.truncated and len(every.candidates) >= 2
    with caplog.at_level(logging.WARNING, logger="overread.models.blob_cad"):
        [one] = find_candidates(hu, (2.0, 0.8, 0.8), lung, max_candidates=1)
    assert one == every.candidates[0]
    assert any("1 nodule candidates kept" in r.message for r in caplog.records)
    package = load_package(write_cad_package(tmp_path / "pkg", revision=2))
    data = json.loads(package.manifest.to_json())
    data.pop("signature")
    volume = data["volume"]
    assert volume["cad_max_candidates"] == 600 and volume["cad_revision"] == 2
    base = Manifest.model_validate(data).content_sha256()
    for key, value in (
        ("cad_max_candidates", 900),
        ("cad_min_blobness", 10.0),
        ("cad_rim_hu", -550.0),
        ("cad_rim_ratio", 3.0),
    ):
        changed = json.loads(json.dumps(data))
        changed["volume"][key] = value
        assert Manifest.model_validate(changed).content_sha256() != base, key
    # A manifest written before these settings keeps its hash (they are not added).
    for key in (
        "cad_revision",
        "cad_min_blobness",
        "cad_max_candidates",
        "cad_rim_hu",
        "cad_rim_ratio",
    ):
        volume.pop(key)
    old = Manifest.model_validate(data)
    assert "cad_revision" not in json.loads(old.canonical_bytes())["volume"]
