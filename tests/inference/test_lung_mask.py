"""The ``classical`` lung mask (``volume.lung_refine``): airways out, holes in, the
boundary at the source resolution; old manifests keep their mask and their hash."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from scipy import ndimage

from overread.cli import main
from overread.evaluation.segmentation import dice
from overread.imaging import ImageMetadata
from overread.imaging.series import Volume
from overread.inference.lung_mask import (
    DOME_BALL_MM,
    NODULE_BALL_MM,
    _ball,
    _opened,
    _rolled,
    airway_warning,
    fill_lung_holes,
    head_last,
    large_airways,
    source_lung_plane,
)
from overread.inference.volume import LUNG_VALUE, VolumePipeline, lung_and_nodules
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
    hu[20:22, 22:24, 13:21] = -1000.0  # a small bronchus (4 mm) off the trachea's side
    airway = large_airways(hu, (2.0, 2.0, 2.0), airway_hu=-950.0, min_radius_mm=2.5)
    assert airway[25, 23, 24] and airway[19, 22, 23]  # the trachea
    assert not airway[:, :4].any() and not airway[:, :, :4].any()  # not the air outside
    assert not airway[20:22, 22:24, 13:18].any()  # the small bronchus stays lung
    assert not airway[10, 20, 15]  # nor the lung


def _bronchi(hu: np.ndarray) -> None:
    """Main bronchi (8 mm by 16 mm across) below the trachea of :func:`_chest`, the
    lumen broken for one slice at the carina (slice 17)."""
    hu[12:17, 21:25, 14:22] = -1000.0
    hu[12:17, 21:25, 26:34] = -1000.0
    hu[12:17, 21:25, 22:26] = 40.0


def test_main_bronchi_past_a_break_at_the_carina_are_airway() -> None:
    hu = _chest()
    _bronchi(hu)
    airway = large_airways(hu, (2.0, 2.0, 2.0), airway_hu=-950.0, min_radius_mm=2.5)
    assert airway[19, 22, 23]  # the trachea
    assert airway[14, 22:24, 16:20].all() and airway[14, 22:24, 28:32].all()


def test_emphysema_beside_a_bronchus_stays_lung() -> None:
    hu = _chest()
    _bronchi(hu)
    hu[11:17, 27:33, 14:20] = -1000.0  # 12 mm of air 4 mm from the right main bronchus
    hu[20:26, 20:26, 13:19] = -1000.0  # and 12 mm of air 4 mm beside the trachea
    airway = large_airways(hu, (2.0, 2.0, 2.0), airway_hu=-950.0, min_radius_mm=2.5)
    assert airway[14, 22:24, 16:20].all() and airway[22, 22:24, 22:25].all()
    assert not airway[11:17, 27:33, 14:20].any()  # the emphysema
    assert not airway[20:26, 20:26, 13:18].any()


def test_an_implausible_airway_volume_is_warned_about() -> None:
    lung = np.zeros((10, 20, 20), bool)
    lung[:, 2:18, 2:18] = True
    airway = np.zeros_like(lung)
    airway[:, 9:11, 9:11] = True  # a trachea: 1.6% of the lung
    assert airway_warning(airway, lung) is None
    assert airway_warning(None, lung) is None
    airway[:, 4:16, 4:10] = True  # air joined to it: 28.9% of lung and airways
    message = airway_warning(airway, lung)
    assert message is not None and "28.9%" in message and "under 10.0%" in message


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


#: The bundled baseline's manifest before the classical lung (version 1.0.0).
OLD_MANIFEST = Path(__file__).parent / "data" / "ct-threshold-baseline-1.0.0-manifest.json"


def test_old_manifests_keep_their_mask_settings_and_hash() -> None:
    manifest = Manifest.model_validate(json.loads(OLD_MANIFEST.read_text()))
    assert manifest.signature is not None
    assert manifest.content_sha256() == manifest.signature.manifest_sha256
    assert manifest.volume is not None and manifest.volume.lung_refine == "none"
    assert b"lung_refine" not in manifest.canonical_bytes()
    assert b"airway_hu" not in manifest.canonical_bytes()
    # Its mask: holes filled slice by slice (the dome called lung), no airway taken out.
    lung = _dome_chest(nodule=False)
    probabilities = np.stack([lung, np.zeros_like(lung)]).astype(np.float32)
    airway = np.zeros_like(lung)
    airway[20:, 30:34, 30:34] = True
    old, _, _ = lung_and_nodules(
        probabilities, [0.5, 0.5], 0, 1, (2.0, 2.0, 2.0), manifest.volume, airway=airway
    )
    slicewise = np.stack([ndimage.binary_fill_holes(p) for p in lung])
    slicewise[:, :1] = slicewise[:, -1:] = False
    assert np.array_equal(old, slicewise) and old[6, 32, 32] and old[25, 32, 32]
    classical = manifest.volume.model_copy(update={"lung_refine": "classical"})
    new, _, _ = lung_and_nodules(
        probabilities, [0.5, 0.5], 0, 1, (2.0, 2.0, 2.0), classical, airway=airway
    )
    assert not new[6, 32, 32] and not new[25, 32, 32]
    with_classical = manifest.model_copy(update={"volume": classical})
    assert b'"lung_refine":"classical"' in with_classical.canonical_bytes()
    assert b'"lung_source_hu":-400.0' in with_classical.canonical_bytes()
    assert with_classical.content_sha256() != manifest.content_sha256()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("airway_min_radius_mm", 1e9, "volume.airway_min_radius_mm"),
        ("lung_hole_open_mm", 0.0, "volume.lung_hole_open_mm"),
        ("airway_hu", -500.0, "volume.airway_hu"),
        ("lung_source_hu", float("nan"), "volume.lung_source_hu"),
        ("lung_hole_max_mm2", float("inf"), "volume.lung_hole_max_mm2"),
        ("postprocess", "centre-heatmap", "lung_refine 'classical' needs postprocess"),
        ("lung_output", "probability", "needs lung_output 'filled-mask'"),
        (
            "airway_min_radius_mm",
            1.5,
            "airway_min_radius_mm 1.5 mm is below the in-plane grid step",
        ),
        ("lung_hole_open_mm", 15.0, "lung_hole_open_mm 15 mm is over 6 steps"),
    ],
)
def test_a_bad_classical_lung_setting_is_one_error_line(
    key: str, value: object, message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    package = tmp_path / "bad"
    shutil.copytree(BUNDLED / "ct-threshold-baseline", package)
    path = package / "manifest.json"
    data = json.loads(path.read_text())
    data["volume"][key] = value
    path.write_text(json.dumps(data))
    assert main(["models", "show", str(package)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and message in err[0], err


def test_an_anisotropic_grid_takes_radii_from_its_in_plane_steps() -> None:
    # 2.5 mm airway ball on a 5 mm slice grid: a disc of 1 mm pixels (accepted).
    spec = VolumeSpec(lung_refine="classical", spacing_mm=(5.0, 1.0, 1.0))
    assert spec.airway_min_radius_mm < max(spec.spacing_mm)
    assert _ball(spec.airway_min_radius_mm, spec.spacing_mm).shape[0] == 1
    with pytest.raises(ValidationError, match="below the in-plane grid step"):
        VolumeSpec(lung_refine="classical", spacing_mm=(5.0, 3.0, 3.0))
    # Slices finer than the pixels: the ball would be a line along the slices.
    assert _ball(2.5, (1.0, 3.0, 3.0)).shape[1:] == (1, 1)
    with pytest.raises(ValidationError, match="below the in-plane grid step"):
        VolumeSpec(lung_refine="classical", spacing_mm=(1.0, 3.0, 3.0))
    with pytest.raises(ValidationError, match="below the in-plane grid step"):
        VolumeSpec(lung_refine="classical", spacing_mm=(1.0, 1.0, 3.0))


def test_the_classical_lung_only_where_it_does_something() -> None:
    VolumeSpec(lung_refine="classical", postprocess="blob-cad")
    VolumeSpec(lung_refine="none", postprocess="lung-field", lung_output="probability")
    for bad in (
        {"postprocess": "lung-field"},
        {"postprocess": "none"},
        {"lung_output": "probability"},
    ):
        with pytest.raises(ValidationError, match="lung_refine 'classical' needs"):
            VolumeSpec.model_validate({"lung_refine": "classical", **bad})


@pytest.mark.parametrize("name", ["ct-threshold-baseline", "ct-nodule-cad"])
def test_the_bundled_ct_packages_use_the_classical_lung(name: str) -> None:
    package = load_package(BUNDLED / name)
    assert package.manifest.volume is not None
    assert package.manifest.volume.lung_refine == "classical"


def _dome_chest(nodule: bool, at: tuple[float, float] = (16.5, 32.0)) -> np.ndarray:
    """Lung (True) in slices 4-33 of a 2 mm grid with a dome of the diaphragm rising
    from below to slice 12 (a half-ellipsoid 30 mm high, 72 mm wide at its base) and,
    with ``nodule``, a 16 mm nodule centred at ``at`` (slice, column; its apex by
    default)."""
    zz, yy, xx = np.mgrid[0:36, 0:64, 0:64].astype(float)
    lung = np.zeros((36, 64, 64), bool)
    lung[4:34, 4:60, 4:60] = True
    dome = ((yy - 32) / 18) ** 2 + ((xx - 32) / 18) ** 2 + ((zz - 3) / 9.5) ** 2 <= 1.0
    lung &= ~dome
    if nodule:
        lung &= ((zz - at[0]) ** 2 + (yy - 32) ** 2 + (xx - at[1]) ** 2) > 16.0
    return lung


def test_a_nodule_resting_on_the_dome_stays_lung() -> None:
    lung = _dome_chest(nodule=True)
    sphere = _dome_chest(nodule=False) & ~lung
    dome = ~_dome_chest(nodule=False) & (np.arange(36)[:, None, None] >= 4)
    dome[:, :4] = dome[:, 60:] = dome[:, :, :4] = dome[:, :, 60:] = False
    filled = fill_lung_holes(lung, (2.0, 2.0, 2.0), max_hole_mm2=1600.0, open_mm=5.0)
    # The nodule's slices above the apex are lung (holes filled), the dome is not.
    assert filled[15:21, 32, 32].all()
    assert filled[sphere].mean() > 0.8
    assert filled[dome & (np.arange(36)[:, None, None] <= 8)].mean() < 0.15  # the opening's rim


def test_the_balls_are_metric() -> None:
    # 2.5 mm at 2 mm: the centre and its 6 face neighbours (2 mm away), not 2.83 mm.
    assert _ball(2.5, (2.0, 2.0, 2.0)).sum() == 7
    # 5 mm at 2 mm reaches 4 mm along an axis and (4, 2) mm = 4.47 mm, not (4, 4) mm.
    ball = _ball(5.0, (2.0, 2.0, 2.0))
    assert ball.shape == (5, 5, 5) and ball[4, 3, 2] and not ball[4, 4, 2]
    # 2.5 mm with 5 mm slices: a disc in one slice.
    assert _ball(2.5, (5.0, 1.0, 1.0)).shape == (1, 5, 5)


@pytest.mark.parametrize("name", ["ct-threshold-baseline", "ct-nodule-cad"])
def test_the_bundled_packages_find_a_nodule_resting_on_the_dome(name: str) -> None:
    lung = _dome_chest(nodule=True)
    hu = np.full((36, 72, 72), -1000.0, np.float32)
    hu[:, 2:70, 2:70] = 40.0
    hu[:, 4:68, 4:68][lung] = -850.0
    hu[26:, 34:40, 34:40] = -1000.0  # the trachea
    volume = Volume(
        pixels=hu,
        affine=np.diag([2.0, 2.0, 2.0, 1.0]),
        spacing=(2.0, 2.0, 2.0),
        metadata=ImageMetadata(),
    )
    output = VolumePipeline(load_package(BUNDLED / name)).run_volume(volume)
    # The 16 mm nodule centred at voxel (16.5, 36, 36): one region holding it.
    found = [
        r
        for r in output.prediction.regions
        if r.box_voxels[0] <= 16 < r.box_voxels[3]
        and r.box_voxels[1] <= 36 < r.box_voxels[4]
        and r.box_voxels[2] <= 36 < r.box_voxels[5]
    ]
    assert len(found) == 1 and 12.0 <= found[0].longest_diameter_mm <= 20.0
    assert output.label_map is not None and output.label_map[16, 36, 36] > LUNG_VALUE


def test_a_bulla_joined_to_the_trachea_is_warned_about() -> None:
    lung = _dome_chest(nodule=False)
    hu = np.full((36, 72, 72), -1000.0, np.float32)
    hu[:, 2:70, 2:70] = 40.0
    hu[:, 4:68, 4:68][lung] = -850.0
    hu[26:, 34:40, 34:40] = -1000.0  # the trachea
    volume = Volume(
        pixels=hu.copy(),
        affine=np.diag([2.0, 2.0, 2.0, 1.0]),
        spacing=(2.0, 2.0, 2.0),
        metadata=ImageMetadata(),
    )
    pipeline = VolumePipeline(load_package(BUNDLED / "ct-threshold-baseline"))
    assert not any("large airways" in w for w in pipeline.run_volume(volume).prediction.warnings)
    hu[16:30, 14:58, 14:58] = -1000.0  # a wide bulla the trachea opens into
    volume = Volume(
        pixels=hu, affine=volume.affine, spacing=volume.spacing, metadata=ImageMetadata()
    )
    warnings = pipeline.run_volume(volume).prediction.warnings
    assert any("large airways" in w and "emphysema" in w for w in warnings), warnings


def test_a_piece_below_the_trachea_wider_than_it_stays_lung() -> None:
    hu = _chest()
    # 24 mm by 36 mm of air two slices below the trachea, straight under it: within
    # reach of the bridge, but wider than the trachea in its slices (a bulla).
    hu[13:16, 17:29, 15:33] = -1000.0
    # A wide tube of air leaving the scan at the top, apart from the trachea: wider in
    # its slices than the bulla, so the bulla is measured against the trachea it
    # touches, not the widest trunk slice.
    hu[25:, 30:40, 10:30] = -1000.0
    airway = large_airways(hu, (2.0, 2.0, 2.0), airway_hu=-950.0, min_radius_mm=2.5)
    assert airway[22, 22:24, 22:25].all()  # the trachea
    assert airway[27, 32:38, 12:28].all()  # the wide tube
    assert not airway[13:16, 19:27, 17:31].any()


def test_a_dome_narrower_at_its_base_than_above_stays_out() -> None:
    lung = np.zeros((30, 60, 60), bool)
    lung[4:26, 8:52, 8:52] = True
    lung[4:6, 21:39, 21:39] = False  # the dome's base: 36 mm across (under the hole limit)
    lung[6:12, 16:44, 16:44] = False  # and 56 mm across above it; open below (slice 3)
    lung[12:18, 26:34, 26:34] = False  # a 16 mm nodule resting on the dome's top
    filled = fill_lung_holes(lung, (2.0, 2.0, 2.0), max_hole_mm2=1600.0, open_mm=5.0)
    assert not filled[4:12, 30, 30].any()  # the dome's base needs the backward pass
    assert filled[13:17, 28:32, 28:32].mean() > 0.8  # the nodule is lung


def test_gas_below_the_lung_is_not_airway_and_a_bulla_above_it_stays_lung() -> None:
    hu = _chest()
    hu[0:3, 12:36, 10:38] = -1000.0  # stomach gas below the lung, reaching the last slice
    hu[4:8, 14:22, 10:18] = -1000.0  # a basal bulla 2 mm above it (16 mm across)
    airway = large_airways(hu, (2.0, 2.0, 2.0), airway_hu=-950.0, min_radius_mm=2.5)
    assert airway[22, 22:24, 22:25].all()  # the trachea
    assert not airway[0:3].any()
    assert not airway[4:8, 15:21, 11:17].any()


def test_gas_outside_the_lung_does_not_count_in_the_airway_warning() -> None:
    lung = np.zeros((14, 20, 20), bool)
    lung[4:14, 2:18, 2:18] = True
    airway = np.zeros_like(lung)
    airway[4:, 9:11, 9:11] = True  # a trachea: 1.6% of the lung
    airway[0:3, 1:19, 1:19] = True  # gas below the lung
    assert airway_warning(airway & ~lung, lung & ~airway) is None


def test_an_oblique_main_bronchus_a_little_wider_than_the_trachea_is_airway() -> None:
    hu = _chest()
    hu[17, 20:26, 21:27] = 40.0  # the carina's break, one slice
    for i, z in enumerate(range(16, 12, -1)):  # a bronchus running down and out, cut
        hu[z, 21:26, 17 - i : 27 - i] = -1000.0  # obliquely: 50 pixels a slice
    airway = large_airways(hu, (2.0, 2.0, 2.0), airway_hu=-950.0, min_radius_mm=2.5)
    assert airway[20, 22:24, 22:25].all()  # the trachea (36 pixels a slice)
    assert airway[14, 22:25, 17:24].all()


@pytest.mark.parametrize("at", [(9.0, 47.0), (13.0, 40.0)], ids=["side", "shoulder"])
def test_a_nodule_on_the_side_or_shoulder_of_the_dome_stays_lung(
    at: tuple[float, float],
) -> None:
    lung = _dome_chest(nodule=True, at=at)
    sphere = _dome_chest(nodule=False) & ~lung
    dome = ~_dome_chest(nodule=False) & (np.arange(36)[:, None, None] >= 4)
    dome[:, :4] = dome[:, 60:] = dome[:, :, :4] = dome[:, :, 60:] = False
    filled = fill_lung_holes(lung, (2.0, 2.0, 2.0), max_hole_mm2=1600.0, open_mm=5.0)
    assert filled[sphere].mean() > 0.8
    assert filled[dome & (np.arange(36)[:, None, None] <= 8)].mean() < 0.15


def _flipped(affine: np.ndarray, slices: int) -> np.ndarray:
    """The affine of the same volume with its slices in reverse order."""
    out = np.array(affine, dtype=np.float64)
    out[:3, 3] = (affine @ np.array([0.0, 0.0, slices - 1.0, 1.0]))[:3]
    out[:3, 2] = -affine[:3, 2]
    return out


def test_head_last_reads_the_slice_direction_from_the_affine() -> None:
    assert head_last(np.diag([2.0, 2.0, 2.0, 1.0])) is True
    assert head_last(_flipped(np.diag([2.0, 2.0, 2.0, 1.0]), 10)) is False
    sagittal = np.zeros((4, 4))
    sagittal[:3, 0], sagittal[:3, 1], sagittal[:3, 2] = (0, 1, 0), (0, 0, -1), (2, 0, 0)
    assert head_last(sagittal) is None


def test_a_chest_running_from_head_to_feet_gives_the_same_lung_flipped(
    phantom: CtCase, tmp_path: Path
) -> None:
    pipeline = VolumePipeline(
        load_package(
            write_baseline_package(tmp_path / "new", volume=VolumeSpec(lung_refine="classical"))
        )
    )
    geo = phantom.geometry
    spacing = (geo.slice_thickness, geo.pixel_spacing, geo.pixel_spacing)
    hu = phantom.hu.astype(np.float32)
    outputs = [
        pipeline.run_volume(
            Volume(pixels=pixels, affine=affine, spacing=spacing, metadata=ImageMetadata())
        )
        for pixels, affine in (
            (hu, geo.affine),
            (np.ascontiguousarray(hu[::-1]), _flipped(geo.affine, len(hu))),
        )
    ]
    maps = [output.label_map for output in outputs]
    assert maps[0] is not None and maps[1] is not None
    feet_first, head_first = maps[0] >= LUNG_VALUE, maps[1] >= LUNG_VALUE
    assert feet_first.any()
    assert np.array_equal(head_first[::-1], feet_first)
    assert outputs[0].prediction.warnings == outputs[1].prediction.warnings
    # Both directions were read as axial and refined (not the old lung).
    assert not any("not axial" in w for w in outputs[1].prediction.warnings)
    old = VolumePipeline(
        load_package(write_baseline_package(tmp_path / "old", volume=VolumeSpec()))
    ).run_volume(
        Volume(
            pixels=np.ascontiguousarray(hu[::-1]),
            affine=_flipped(geo.affine, len(hu)),
            spacing=spacing,
            metadata=ImageMetadata(),
        )
    )
    assert old.label_map is not None
    assert not np.array_equal(old.label_map >= LUNG_VALUE, head_first)


def test_a_series_that_is_not_axial_keeps_the_old_lung_with_a_warning(tmp_path: Path) -> None:
    hu = _chest()
    affine = np.zeros((4, 4))
    affine[:3, 0], affine[:3, 1], affine[:3, 2], affine[3, 3] = (0, 1, 0), (0, 0, -1), (2, 0, 0), 1
    volume = Volume(pixels=hu, affine=affine, spacing=(2.0, 1.0, 1.0), metadata=ImageMetadata())
    package = write_baseline_package(tmp_path / "new", volume=VolumeSpec(lung_refine="classical"))
    output = VolumePipeline(load_package(package)).run_volume(volume)
    assert any("not axial" in w for w in output.prediction.warnings), output.prediction.warnings
    old = VolumePipeline(
        load_package(
            write_baseline_package(tmp_path / "old", volume=VolumeSpec(lung_refine="none"))
        )
    ).run_volume(volume)
    assert output.label_map is not None and old.label_map is not None
    assert np.array_equal(output.label_map, old.label_map)


def _opened_whole(mask: np.ndarray, radius_mm: float, spacing: tuple[float, ...]) -> np.ndarray:
    """The opening on the whole grid (the uncropped reference)."""
    core = ndimage.distance_transform_edt(mask, sampling=spacing) > radius_mm
    if not core.any():
        return np.zeros_like(mask)
    return (ndimage.distance_transform_edt(~core, sampling=spacing) <= radius_mm) & mask


def _rolled_whole(holes: np.ndarray, lung: np.ndarray, spacing: tuple[float, ...]) -> np.ndarray:
    solid = holes.copy()
    for z in range(len(solid) - 2, -1, -1):
        solid[z] |= solid[z + 1] & ~lung[z]
    pad = int(np.ceil(DOME_BALL_MM / spacing[0])) + 1
    solid = np.concatenate([np.repeat(solid[:1], pad, axis=0), solid])
    return _opened_whole(solid, DOME_BALL_MM, spacing)[pad:] & holes


@pytest.mark.parametrize("spacing", [(2.0, 2.0, 2.0), (5.0, 1.5, 1.5)])
def test_the_cropped_balls_give_the_whole_grid_result(spacing: tuple[float, ...]) -> None:
    cases = [_dome_chest(nodule=True), _dome_chest(nodule=True, at=(9.0, 47.0))]
    cases.append(_dome_chest(nodule=False)[:, :40, 20:])  # holes touching the array's sides
    for lung in cases:
        holes = np.zeros_like(lung)
        for z, plane in enumerate(lung):
            holes[z] = ndimage.binary_fill_holes(plane)
        holes &= ~ndimage.binary_fill_holes(lung)
        holes[:, 30:34, 30:34] |= True  # reaching the top slice
        assert holes.any()
        assert np.array_equal(_rolled(holes, lung, spacing), _rolled_whole(holes, lung, spacing))
        for radius in (NODULE_BALL_MM, DOME_BALL_MM):
            assert np.array_equal(
                _opened(holes, radius, spacing), _opened_whole(holes, radius, spacing)
            )
