"""Modality and VOI LUTs against values computed by hand from PS3.3's formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from overread.errors import InvalidDicomError
from overread.imaging import read
from overread.imaging.lut import window
from overread.imaging.transforms import VoiWindow


def test_linear_window_c11_2_1_2():
    # c=40, w=400: x <= c-0.5-(w-1)/2 = -160 -> 0; x > c-0.5+(w-1)/2 = 239 -> 1;
    # else ((x - 39.5)/399 + 0.5)
    x = np.array([-1000, -160, -159, 0, 39.5, 100, 239, 239.5, 3000], dtype=np.float32)
    expected = [0.0, 0.0, 1 / 399, 0.5 - 39.5 / 399, 0.5, 0.5 + 60.5 / 399, 1.0, 1.0, 1.0]
    np.testing.assert_allclose(window(x, 40, 400, "LINEAR"), expected, atol=1e-6)


def test_linear_full_range_12_bit():
    # c=2048, w=4096 maps 0 -> 0 and 4095 -> 1 exactly.
    out = window(np.array([0, 4095], dtype=np.float32), 2048, 4096)
    np.testing.assert_allclose(out, [0.0, 1.0], atol=1e-6)


def test_linear_width_one_is_a_threshold():
    out = window(np.array([9, 9.4, 9.6, 10, 11], dtype=np.float32), 10, 1)
    np.testing.assert_array_equal(out, [0, 0, 1, 1, 1])


def test_linear_exact_c11_2_1_3_2():
    # x <= c - w/2 -> 0; x > c + w/2 -> 1; else (x - c)/w + 0.5
    x = np.array([-200, -160, 0, 40, 140, 240, 241], dtype=np.float32)
    expected = [0.0, 0.0, 0.4, 0.5, 0.75, 1.0, 1.0]
    np.testing.assert_allclose(window(x, 40, 400, "LINEAR_EXACT"), expected, atol=1e-6)


def test_sigmoid_c11_2_1_3_1():
    # y = 1 / (1 + exp(-4 (x - c) / w))
    x = np.array([40, 140, -60], dtype=np.float32)
    expected = [0.5, 1 / (1 + math.exp(-1)), 1 / (1 + math.exp(1))]
    np.testing.assert_allclose(window(x, 40, 400, "SIGMOID"), expected, atol=1e-6)


def test_output_range_parameters():
    out = window(np.array([-1e6, 1e6], dtype=np.float32), 0, 100, y_min=10, y_max=20)
    np.testing.assert_allclose(out, [10, 20])


@pytest.mark.parametrize(
    ("function", "width"), [("LINEAR", 0.5), ("LINEAR_EXACT", 0), ("SIGMOID", -1)]
)
def test_invalid_widths_are_refused(function, width):
    with pytest.raises(InvalidDicomError, match="width"):
        window(np.zeros(3, dtype=np.float32), 0, width, function)


def test_inplace_window_matches_copy():
    x = np.linspace(-500, 500, 101, dtype=np.float32)
    expected = window(x, 10, 300, "LINEAR")
    buf = x.copy()
    out = window(buf, 10, 300, "LINEAR", inplace=True)
    assert out is buf
    np.testing.assert_array_equal(out, expected)


def test_rescale_slope_intercept_in_file(write_dicom):
    stored = np.array([[0, 1, 2], [1000, 2000, 4095]], dtype=np.uint16)
    path = write_dicom(stored, RescaleSlope="0.5", RescaleIntercept="-1024", Modality="CT")
    image = read(path)
    np.testing.assert_array_equal(image.pixels, stored * 0.5 - 1024)


def test_modality_lut_sequence_c11_1_1_1(write_dicom):
    stored = np.array([[9, 10, 11], [12, 13, 50]], dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [4, 10, 16]  # 4 entries, first input 10, 16 bits
    item.add(DataElement(0x00283006, "US", [100, 200, 300, 400]))
    item.ModalityLUTType = "HU"
    path = write_dicom(stored, ModalityLUTSequence=Sequence([item]))
    image = read(path)
    # below first -> first entry; past the end -> last entry
    np.testing.assert_array_equal(image.pixels, [[100, 100, 200], [300, 400, 400]])
    assert "Modality LUT Sequence" in image.provenance[-1]


def test_signed_first_mapped_value(write_dicom):
    stored = np.array([[-2, -1, 0, 5]], dtype=np.int16)
    item = Dataset()
    item.LUTDescriptor = [3, -1, 16]  # first mapped -1 (SS since pixels are signed)
    item.add(DataElement(0x00283006, "US", [7, 8, 9]))
    path = write_dicom(stored, ModalityLUTSequence=Sequence([item]))
    np.testing.assert_array_equal(read(path).pixels, [[7, 7, 8, 9]])


def test_voi_lut_sequence(write_dicom):
    stored = np.array([[0, 1, 2, 3]], dtype=np.uint16)
    item = Dataset()
    item.LUTDescriptor = [3, 0, 8]
    item.add(DataElement(0x00283006, "US", [0, 128, 255]))
    path = write_dicom(stored, VOILUTSequence=Sequence([item]))
    out = VoiWindow()(read(path))
    np.testing.assert_allclose(out.pixels, [[0, 128 / 255, 1, 1]], atol=1e-6)


def test_file_window_multiple_values_and_function(write_dicom):
    stored = np.array([[0, 40, 140, 1000]], dtype=np.int16)
    path = write_dicom(
        stored,
        WindowCenter=[40, 500],
        WindowWidth=[400, 1000],
        VOILUTFunction="LINEAR_EXACT",
    )
    image = read(path)
    assert image.metadata.window_center == (40.0, 500.0)
    first = VoiWindow()(image)
    np.testing.assert_allclose(first.pixels, [[0.4, 0.5, 0.75, 1.0]], atol=1e-6)
    second = VoiWindow(index=1)(image)
    np.testing.assert_allclose(second.pixels, [[0.0, 0.04, 0.14, 1.0]], atol=1e-6)
    assert "window 2 of 2" in second.provenance[-1]


def test_unusable_file_window_falls_back(write_dicom):
    stored = np.arange(100, dtype=np.uint16).reshape(10, 10)
    path = write_dicom(stored, WindowCenter=50, WindowWidth=0)
    out = VoiWindow(fallback="minmax")(read(path))
    assert out.pixels.min() == 0.0 and out.pixels.max() == 1.0
    assert any("unusable" in p for p in out.provenance)


def test_per_frame_rescale_in_functional_groups(write_dicom):
    stored = np.stack([np.full((2, 2), 100, np.uint16), np.full((2, 2), 100, np.uint16)])
    groups = []
    for slope, intercept in ((1.0, 0.0), (2.0, -50.0)):
        transform = Dataset()
        transform.RescaleSlope = slope
        transform.RescaleIntercept = intercept
        transform.RescaleType = "US"
        group = Dataset()
        group.PixelValueTransformationSequence = Sequence([transform])
        groups.append(group)
    path = write_dicom(stored, PerFrameFunctionalGroupsSequence=Sequence(groups))
    image = read(path)
    np.testing.assert_array_equal(image.pixels[0], 100)
    np.testing.assert_array_equal(image.pixels[1], 150)
    assert "per-frame" in image.provenance[-1]


def test_shared_functional_group_rescale(write_dicom):
    transform = Dataset()
    transform.RescaleSlope = 0.5
    transform.RescaleIntercept = 10
    shared = Dataset()
    shared.PixelValueTransformationSequence = Sequence([transform])
    path = write_dicom(
        np.full((2, 4, 4), 8, np.uint16), SharedFunctionalGroupsSequence=Sequence([shared])
    )
    image = read(path)
    np.testing.assert_array_equal(image.pixels, 14)
    assert image.metadata.rescale_slope == 0.5


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    center=st.floats(-5000, 5000),
    width=st.floats(1, 10000),
    function=st.sampled_from(["LINEAR", "LINEAR_EXACT", "SIGMOID"]),
)
def test_windows_are_bounded_and_monotone(center, width, function):
    x = np.linspace(-20000, 20000, 2001, dtype=np.float32)
    y = window(x, center, width, function)
    assert y.min() >= 0.0 and y.max() <= 1.0
    assert np.all(np.diff(y) >= -1e-6)


def _windowed_corpus_files():  # type: ignore[no-untyped-def]
    from pathlib import Path

    import pydicom.data

    root = Path(pydicom.data.__file__).parent / "test_files"
    names = [
        "MR_small.dcm",
        "693_J2KI.dcm",
        "examples_overlay.dcm",
        "dicomdirtests/77654033/CT2/17136",
        "dicomdirtests/77654033/CR1/6154",
        "dicomdirtests/98892003/MR2/4981",
        "dicomdirtests/98892001/CT5N/2392",
    ]
    return [root / n for n in names if (root / n).is_file()]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("path", _windowed_corpus_files(), ids=lambda p: p.name)
def test_file_windows_agree_with_pydicom(path):
    """pydicom's own windowing, rescaled from its output range to [0, 1], agrees with ours."""
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    if "WindowCenter" not in ds:
        pytest.skip("no window in this file")
    theirs = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds).astype(np.float64)
    bits, signed = int(ds.BitsStored), int(ds.PixelRepresentation) == 1
    y_min, y_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope, intercept = float(ds.get("RescaleSlope", 1)), float(ds.get("RescaleIntercept", 0))
    y_min, y_max = y_min * slope + intercept, y_max * slope + intercept  # pydicom's output range
    ours = VoiWindow()(read(path)).pixels
    np.testing.assert_allclose(ours, (theirs - y_min) / (y_max - y_min), atol=1e-6)
