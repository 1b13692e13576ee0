"""The ``classical`` lung mask (``volume.lung_refine``): airways out, holes in, the
boundary at the source resolution; old manifests keep their mask and their hash."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from overread.evaluation.segmentation import dice
from overread.imaging import ImageMetadata
from overread.imaging.series import Volume
from overread.inference.lung_mask import fill_lung_holes, large_airways, source_lung_plane
from overread.inference.volume import LUNG_VALUE, VolumePipeline
from overread.models.ct_baseline import write_baseline_package
from overread.models.manifest import Manifest, VolumeSpec
from overread.models.package import load_package
from overread.phantom.ct import CtCase, make_case

BUNDLED = Path(__file__).resolve().parents[2] / "src/overread/models/bundled"


def _chest(shape: tuple[int, int, int] = (30, 48, 48)) -> np.ndarray:
    """HU: air, a soft-tissue body, two box lungs (-850), a trachea (-1000) from the top
    slice down to the lungs' upper third."""
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, 4:44, 4:44] = 40.0
    hu[3:27, 10:38, 8:22] = -850.0
    hu[3:27, 10:38, 26:40] = -850.0
    hu[18:, 20:26, 21:27] = -1000.0  # the trachea (12 mm across at 2 mm)
    return hu


def test_large_airways_are_the_trachea_not_the_air_outside_nor_small_bronchi() -> None:
    hu = _chest()
    hu[8:14, 20:22, 12:14] = -1000.0  # a small bronchus inside the right lung (4 mm)
    airway = large_airways(hu, (2.0, 2.0, 2.0), airway_hu=-950.0, min_radius_mm=2.5)
    assert airway[25, 23, 24] and airway[19, 22, 23]  # the trachea
    assert not airway[:, :4].any() and not airway[:, :, :4].any()  # not the air outside
    assert not airway[10, 21, 13]  # the small bronchus stays lung
    assert not airway[10, 20, 15]  # nor the lung


def test_no_airway_reaching_the_ends_is_no_airway() -> None:
    hu = _chest()
    hu[18:, 20:26, 21:27] = 40.0
    hu[10:16, 20:26, 21:27] = -1000.0  # air inside, but not reaching the first or last slice
    assert not large_airways(hu, (2.0, 2.0, 2.0), airway_hu=-950.0, min_radius_mm=2.5).any()


def test_a_vessel_at_the_hilum_is_lung_and_the_diaphragm_dome_is_not() -> None:
    lung = np.zeros((30, 60, 60), bool)
    lung[4:26, 8:52, 8:52] = True
    lung[18:22, 40:44, 44:48] = False  # a vessel fully inside: a hole in 3-D
    lung[16:19, 28:31, 9:40] = False  # a hilar vessel, closed in its slices by the lung ...
    lung[15, 28:31, 8:12] = False  # ... but open in 3-D (the bronchial wall, one slice down)
    lung[4:12, 16:44, 16:44] = False  # the dome: 56 x 56 mm, ringed in its slices and
    # open below (slice 3 is no lung)
    filled = fill_lung_holes(lung, (2.0, 2.0, 2.0), max_hole_mm2=1600.0, open_mm=5.0)
    assert filled[20, 42, 46]  # the enclosed vessel
    assert filled[17, 29, 30]  # the hilar vessel: a hole in its slices, not in 3-D
    assert not ndimage.binary_fill_holes(lung)[17, 29, 30]
    assert not filled[5:12, 30, 30].any()  # the dome stays out
    # Slice by slice filling (the default rule) calls the dome lung.
    slicewise = np.stack([ndimage.binary_fill_holes(p) for p in lung])
    assert slicewise[5, 30, 30]


def test_the_airways_are_not_filled_back() -> None:
    lung = np.zeros((20, 40, 40), bool)
    lung[2:18, 5:35, 5:35] = True
    airway = np.zeros_like(lung)
    airway[8:12, 18:22, 18:22] = True  # a main bronchus inside the lung
    lung &= ~airway
    filled = fill_lung_holes(lung, (2.0, 2.0, 2.0), max_hole_mm2=1600.0, open_mm=5.0, airway=airway)
    assert not filled[airway].any()


def test_the_source_plane_grows_to_the_partial_volume_boundary_not_into_airways() -> None:
    lung = np.zeros((10, 10), np.float32)
    lung[2:8, 2:8] = 1.0
    lung[1, 2:8] = 0.3  # within one coarse voxel of the lung: the band
    hu = np.full((10, 10), 40.0, np.float32)
    hu[2:8, 2:8] = -850.0
    hu[1, 2:5] = -500.0  # partial volume: more lung than tissue
    hu[1, 5:8] = -200.0  # more tissue than lung
    airway = np.zeros_like(lung)
    airway[1, 4] = 0.4
    plane = source_lung_plane(lung, 0.5, airway, hu, -400.0)
    assert plane[2:8, 2:8].all()
    assert plane[1, 2] and plane[1, 3]  # grown
    assert not plane[1, 4]  # next to the airway
    assert not plane[1, 5:8].any()  # tissue
    assert not plane[0].any()  # outside the band


@pytest.fixture(scope="module")
def phantom() -> CtCase:
    return make_case(5, 0, size=128, missing_rate=0.0)


def _lung_of(pipeline: VolumePipeline, case: CtCase) -> np.ndarray:
    geo = case.geometry
    spacing = (geo.slice_thickness, geo.pixel_spacing, geo.pixel_spacing)
    volume = Volume(
        pixels=case.hu.astype(np.float32),
        affine=geo.affine,
        spacing=spacing,
        metadata=ImageMetadata(),
    )
    output = pipeline.run_volume(volume)
    assert output.label_map is not None
    return np.asarray(output.label_map >= LUNG_VALUE)


def test_the_classical_lung_matches_the_phantom_truth_where_the_threshold_did_not(
    phantom: CtCase, tmp_path: Path
) -> None:
    old = VolumePipeline(
        load_package(write_baseline_package(tmp_path / "old", volume=VolumeSpec()))
    )
    new = VolumePipeline(
        load_package(
            write_baseline_package(tmp_path / "new", volume=VolumeSpec(lung_refine="classical"))
        )
    )
    truth = phantom.lung > 0
    before, after = _lung_of(old, phantom), _lung_of(new, phantom)
    assert dice(before, truth) < 0.94 < 0.97 < dice(after, truth)
    # The trachea above the lungs: lung before, not lung now.
    top = phantom.airways[-3:] > 0
    assert top.any() and before[-3:][top].mean() > 0.5 and not after[-3:][top].any()
    # The dome of the diaphragm (soft tissue ringed by lung in the lowest lung slices).
    dome = ~truth & (phantom.hu > -200) & (phantom.hu < 200)
    slices = np.flatnonzero(truth.any(axis=(1, 2)))
    band = slice(int(slices[0]), int(slices[0] + 0.2 * (slices[-1] - slices[0])))
    called_before, called_after = before[band][dome[band]].sum(), after[band][dome[band]].sum()
    assert called_before > 5000 and called_after < 0.05 * called_before  # a rim at most
    # Vessels inside the lung (soft tissue in the truth's lung, away from its edge).
    inner = ndimage.binary_erosion(truth, iterations=2)
    vessels = inner & (phantom.hu > -300)
    # Most are lung (those next to the main bronchi at the hilum are not, as before).
    assert vessels.sum() > 500 and after[vessels].mean() >= max(0.8, before[vessels].mean())


def test_old_manifests_keep_their_mask_settings_and_hash() -> None:
    data = json.loads((BUNDLED / "ct-threshold-baseline" / "manifest.json").read_text())
    data["volume"].pop("lung_refine", None)
    for key in ("lung_source_hu", "airway_hu", "airway_min_radius_mm", "lung_hole_max_mm2"):
        data["volume"].pop(key, None)
    manifest = Manifest.model_validate(data)
    assert manifest.volume is not None and manifest.volume.lung_refine == "none"
    assert b"lung_refine" not in manifest.canonical_bytes()
    assert b"airway_hu" not in manifest.canonical_bytes()
    classical = manifest.model_copy(
        update={"volume": manifest.volume.model_copy(update={"lung_refine": "classical"})}
    )
    assert b'"lung_refine":"classical"' in classical.canonical_bytes()
    assert b'"lung_source_hu":-400.0' in classical.canonical_bytes()
    assert classical.content_sha256() != manifest.content_sha256()


@pytest.mark.parametrize("name", ["ct-threshold-baseline", "ct-nodule-cad"])
def test_the_bundled_ct_packages_use_the_classical_lung(name: str) -> None:
    package = load_package(BUNDLED / name)
    assert package.manifest.volume is not None
    assert package.manifest.volume.lung_refine == "classical"
