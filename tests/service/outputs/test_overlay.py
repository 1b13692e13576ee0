"""The heatmap Secondary Capture: valid IOD, caveat burned in, heatmap where it should be."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from overread.errors import ServiceError
from overread.results import Prediction
from overread.service.outputs import RESEARCH_BANNER, build_overlay, build_overlays
from overread.service.outputs.overlay import burn_in_text, windowed_grey

from .conftest import dciodvfy_errors, gaussian_heatmap


@pytest.fixture(scope="module")
def overlay_file(tmp_path_factory: pytest.TempPathFactory, dx_chest: Dataset) -> Path:
    from .conftest import make_prediction

    sc = build_overlay(make_prediction(), dx_chest, "Pneumothorax")
    path = tmp_path_factory.mktemp("overlay") / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    return path


def test_overlay_is_a_valid_secondary_capture(overlay_file: Path) -> None:
    assert dciodvfy_errors(overlay_file) == []


def test_overlay_header_same_study_new_series_burned_in(
    overlay_file: Path, dx_chest: Dataset
) -> None:
    sc = pydicom.dcmread(overlay_file)
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert sc.StudyInstanceUID == dx_chest.StudyInstanceUID
    assert sc.SeriesInstanceUID != dx_chest.SeriesInstanceUID
    assert sc.PatientID == dx_chest.PatientID
    assert sc.BurnedInAnnotation == "YES"
    assert sc.PhotometricInterpretation == "RGB"
    assert sc.SamplesPerPixel == 3
    assert "research use" in sc.SeriesDescription
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == dx_chest.SOPInstanceUID
    # Shrunk to 1024 on the long side, aspect kept, spacing scaled to match.
    assert max(sc.Rows, sc.Columns) == 1024
    assert sc.Rows / sc.Columns == pytest.approx(dx_chest.Rows / dx_chest.Columns, abs=2e-3)
    assert float(sc.PixelSpacing[0]) == pytest.approx(0.14 * dx_chest.Columns / 1024, rel=1e-3)
    assert list(sc.PatientOrientation) == list(dx_chest.PatientOrientation)


def test_heatmap_peak_is_coloured_and_far_field_stays_grey(overlay_file: Path) -> None:
    rgb = pydicom.dcmread(overlay_file).pixel_array.astype(int)
    rows, cols = rgb.shape[:2]
    peak = rgb[
        int(0.2 * rows) - 5 : int(0.2 * rows) + 5, int(0.75 * cols) - 5 : int(0.75 * cols) + 5
    ]
    # At the peak cividis is yellow: red and green well above blue (jet's red
    # would have no green).
    assert (peak[..., 0] - peak[..., 2]).mean() > 40
    assert (peak[..., 1] - peak[..., 2]).mean() > 30
    far = rgb[int(0.9 * rows) - 5 : int(0.9 * rows) + 5, int(0.1 * cols) - 5 : int(0.1 * cols) + 5]
    # Far from the peak the heatmap weight is ~0: channels equal (grey image).
    assert np.abs(far[..., 0] - far[..., 2]).max() <= 2


def test_top_region_is_outlined_and_boxed_in_white(overlay_file: Path) -> None:
    rgb = pydicom.dcmread(overlay_file).pixel_array.astype(int)
    rows, cols = rgb.shape[:2]
    white = np.all(rgb >= 250, axis=-1)
    # The Pneumothorax map is a Gaussian (sigma 6 of 56) at 20% down, 75% across: its
    # half-maximum circle, with the box touching it, lies 7.06/56 of a side from there.
    reach = 6.0 * np.sqrt(2 * np.log(2)) / 56
    dr, dc = rows // 50, cols // 50  # within 2% (resampling a 56-pixel map moves edges)
    for r, c in ((0.2, 0.75 + reach), (0.2, 0.75 - reach), (0.2 + reach, 0.75)):
        window = white[
            round(r * rows) - dr : round(r * rows) + dr, round(c * cols) - dc : round(c * cols) + dc
        ]
        assert window.any(), (r, c)
    inside = white[round(0.2 * rows) - 10 : round(0.2 * rows) + 10, round(0.75 * cols) - 10 :]
    assert not inside[:, :20].any()  # the region itself stays coloured


def test_banner_is_in_the_pixels(overlay_file: Path) -> None:
    rgb = pydicom.dcmread(overlay_file).pixel_array
    band = rgb[: rgb.shape[0] // 12, : rgb.shape[1] // 2]
    white = np.all(band >= 250, axis=-1).sum()
    black = np.all(band <= 5, axis=-1).sum()
    assert white > 500 and black > 500  # white lettering on its dark band


def test_burn_in_changes_only_the_top_band() -> None:
    grey = np.full((400, 600, 3), 128, dtype=np.uint8)
    out = burn_in_text(grey, [RESEARCH_BANNER])
    changed_rows = np.where(np.any(out != 128, axis=(1, 2)))[0]
    assert changed_rows.size > 0
    assert changed_rows.max() < 60


def test_monochrome1_is_inverted_so_bone_is_bright(cr_small: Dataset) -> None:
    assert cr_small.PhotometricInterpretation == "MONOCHROME1"
    grey = windowed_grey(cr_small)
    raw = cr_small.pixel_array.astype(float)
    # Highest stored values (dense in MONOCHROME1 = displayed dark) come out darkest.
    assert grey.flat[np.argmax(raw)] <= grey.flat[np.argmin(raw)]
    assert grey.dtype == np.uint8


def test_small_real_cr_overlay_validates(
    tmp_path: Path, cr_small: Dataset, prediction: Prediction
) -> None:
    assert prediction.heatmaps is not None
    prediction.heatmaps["Pneumothorax"] = gaussian_heatmap(7, 7, (0.5, 0.5), 2.0)
    sc = build_overlay(prediction, cr_small, "Pneumothorax", max_dimension=None)
    assert (sc.Rows, sc.Columns) == (cr_small.Rows, cr_small.Columns)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_letterboxed_heatmap_is_cropped_to_the_image(
    dx_chest: Dataset, prediction: Prediction
) -> None:
    # The model saw the 2614x3072 image fitted into a 224 square with rows padded
    # top and bottom; a blob in the image's bottom-left corner sits above the padding.
    used_rows = round(2614 * 224 / 3072)
    top = (224 - used_rows) // 2
    heat = np.zeros((224, 224), dtype=np.float32)
    heat[top + used_rows - 20 : top + used_rows, 0:20] = 1.0
    assert prediction.heatmaps is not None
    prediction.heatmaps["Pneumothorax"] = heat
    sc = build_overlay(
        prediction, dx_chest, "Pneumothorax", heatmap_space="letterbox", max_dimension=256
    )
    rgb = sc.pixel_array.astype(int)
    corner = rgb[-6:-2, 2:6]
    assert (corner[..., 0] - corner[..., 2]).mean() > 40
    # Read as spanning the image instead, the blob would sit higher and leave the
    # bottom-left corner grey.
    unpadded = build_overlay(prediction, dx_chest, "Pneumothorax", max_dimension=256)
    corner = unpadded.pixel_array.astype(int)[-6:-2, 2:6]
    assert np.abs(corner[..., 0] - corner[..., 2]).max() <= 2


def test_missing_heatmap_or_label_is_a_clear_error(
    dx_chest: Dataset, prediction: Prediction
) -> None:
    with pytest.raises(ServiceError, match="no heatmap for 'Edema'"):
        build_overlay(prediction, dx_chest, "Edema")
    with pytest.raises(ServiceError, match="no finding 'Mass'"):
        build_overlay(prediction, dx_chest, "Mass")
    header_only = pydicom.dcmread(Path(dx_chest.filename), stop_before_pixels=True)
    with pytest.raises(ServiceError, match="pixel data cannot be decoded"):
        build_overlay(prediction, header_only, "Pneumothorax")


def test_voi_lut_and_percentile_window_are_used(cr_small: Dataset) -> None:
    raw = cr_small.pixel_array.astype(float)
    # A VOI LUT that reverses the stored range: the display must follow the LUT.
    with_lut = copy.deepcopy(cr_small)
    bits = int(cr_small.BitsStored)
    item = Dataset()
    item.LUTDescriptor = [2**bits if bits < 16 else 0, 0, 16]
    item.LUTData = list(range(2**bits - 1, -1, -1))
    with_lut.VOILUTSequence = [item]
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in with_lut:
            delattr(with_lut, keyword)
    plain = copy.deepcopy(with_lut)
    del plain.VOILUTSequence
    lut_grey = windowed_grey(with_lut).astype(float)
    plain_grey = windowed_grey(plain).astype(float)
    assert np.corrcoef(lut_grey.ravel(), plain_grey.ravel())[0, 1] < -0.9
    # Without any window the 1st-99th percentile range fills the display range.
    assert plain_grey.min() == 0 and plain_grey.max() == 255
    assert np.corrcoef(plain_grey.ravel(), raw.ravel())[0, 1] < -0.9  # MONOCHROME1


def test_overlays_for_positive_findings_share_one_series(
    dx_chest: Dataset, prediction: Prediction
) -> None:
    # Heatmaps exist for Pneumothorax (positive, p=0.93) and Cardiomegaly (positive,
    # p=0.62); Pleural Effusion is positive but has no heatmap.
    overlays = build_overlays(prediction, dx_chest, max_dimension=256)
    assert [o.SeriesDescription for o in overlays] == [
        "overread heatmap Pneumothorax (research use)",
        "overread heatmap Cardiomegaly (research use)",
    ]
    assert len({o.SeriesInstanceUID for o in overlays}) == 1
    assert [o.InstanceNumber for o in overlays] == [1, 2]
    assert (
        build_overlays(prediction, dx_chest, ["Cardiomegaly"], max_dimension=256)[0].InstanceNumber
        == 1
    )


def test_colour_scale_legend_is_drawn_bottom_right(overlay_file: Path) -> None:
    rgb = pydicom.dcmread(overlay_file).pixel_array.astype(int)
    corner = rgb[-rgb.shape[0] // 12 :, -rgb.shape[1] // 3 :]
    # cividis: dark blue at the low end, yellow at the high end.
    blue = (corner[..., 2] > 60) & (corner[..., 0] < 20) & (corner[..., 1] < 60)
    yellow = (corner[..., 0] > 200) & (corner[..., 1] > 200) & (corner[..., 2] < 80)
    assert blue.sum() > 20 and yellow.sum() > 20
