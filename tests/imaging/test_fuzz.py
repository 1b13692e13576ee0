"""Hostile and broken input: bounded time and memory, one clear error, never a crash."""

from __future__ import annotations

import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from overread.config import ImagingSettings
from overread.errors import OverreadError
from overread.imaging import read
from overread.imaging.inspection import inspect

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
SEEDS = {
    name: (PYDICOM_FILES / name).read_bytes()
    for name in (
        "CT_small.dcm",
        "MR_small_RLE.dcm",
        "JPEG2000.dcm",
        "MR_small_jpeg_ls_lossless.dcm",
        "SC_rgb_jpeg_dcmtk.dcm",
        "rtdose.dcm",
        "image_dfl.dcm",
        "MR_small_bigendian.dcm",
    )
}
LIMITS = ImagingSettings(max_pixels=50_000_000, max_frames=1000)
FUZZ = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _read_or_refuse(path: Path) -> None:
    """The only acceptable outcomes: an Image, or an OverreadError with one line naming the file."""
    try:
        image = read(path, settings=LIMITS)
    except OverreadError as exc:
        message = str(exc)
        assert "\n" not in message
        assert message.startswith(str(path))
        assert "unexpected" not in message, message
        return
    assert image.pixels.dtype == np.float32
    assert image.pixels.size <= LIMITS.max_pixels


@FUZZ
@given(seed=st.sampled_from(sorted(SEEDS)), cut=st.floats(0.0, 1.0))
def test_truncated_files(tmp_path_factory, seed, cut):
    data = SEEDS[seed]
    path = tmp_path_factory.mktemp("trunc") / "t.dcm"
    path.write_bytes(data[: int(len(data) * cut)])
    _read_or_refuse(path)


@FUZZ
@given(
    seed=st.sampled_from(sorted(SEEDS)),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), min_size=1, max_size=8),
    header_only=st.booleans(),
)
def test_random_byte_flips(tmp_path_factory, seed, flips, header_only):
    data = bytearray(SEEDS[seed])
    span = min(len(data), 2048) if header_only else len(data)
    for where, value in flips:
        data[int(where * (span - 1))] = value
    path = tmp_path_factory.mktemp("flip") / "f.dcm"
    path.write_bytes(bytes(data))
    _read_or_refuse(path)


VRS = [
    b"US",
    b"SS",
    b"UL",
    b"OB",
    b"OW",
    b"SQ",
    b"UN",
    b"DS",
    b"IS",
    b"LO",
    b"UT",
    b"ZZ",
    b"\x00\x00",
]


@FUZZ
@given(
    tag=st.sampled_from(
        [
            (0x0028, 0x0010),
            (0x0028, 0x0011),
            (0x0028, 0x0100),
            (0x0028, 0x0004),
            (0x0028, 0x1052),
            (0x0028, 0x1053),
            (0x0028, 0x0002),
            (0x7FE0, 0x0010),
        ]
    ),
    vr=st.sampled_from(VRS),
)
def test_wrong_vrs(tmp_path_factory, tag, vr):
    data = bytearray(SEEDS["CT_small.dcm"])  # explicit VR little endian
    needle = struct.pack("<HH", *tag)
    at = data.find(needle, 132)
    assert at > 0
    data[at + 4 : at + 6] = vr
    path = tmp_path_factory.mktemp("vr") / "v.dcm"
    path.write_bytes(bytes(data))
    _read_or_refuse(path)


@FUZZ
@given(
    tag=st.sampled_from([(0x0028, 0x0010), (0x0010, 0x0010), (0x0008, 0x0060), (0x0028, 0x1052)]),
    length=st.integers(0x100, 0xFFFFFFFE),
)
def test_huge_declared_lengths(tmp_path_factory, tag, length):
    data = bytearray(SEEDS["CT_small.dcm"])
    at = data.find(struct.pack("<HH", *tag), 132)
    data[at + 6 : at + 8] = struct.pack("<H", length & 0xFFFF)  # short-form length
    path = tmp_path_factory.mktemp("len") / "l.dcm"
    path.write_bytes(bytes(data))
    _read_or_refuse(path)


def test_huge_pixel_data_length(tmp_path):
    data = bytearray(SEEDS["CT_small.dcm"])
    at = data.rfind(b"\xe0\x7f\x10\x00OW\x00\x00")
    data[at + 8 : at + 12] = struct.pack("<I", 0xFFFFFFF0)
    path = tmp_path / "big.dcm"
    path.write_bytes(bytes(data))
    _read_or_refuse(path)


@pytest.mark.parametrize(("rows", "columns"), [(0, 16), (16, 0), (0, 0)])
def test_zero_rows_or_columns(write_dicom, rows, columns):
    path = write_dicom(np.zeros((4, 4), np.uint16), Rows=rows, Columns=columns)
    with pytest.raises(OverreadError, match="rows"):
        read(path)


def test_hundred_thousand_frame_claim_is_refused_without_allocating(write_dicom):
    path = write_dicom(np.zeros((2, 512, 512), np.uint16), NumberOfFrames=100_000)
    tracemalloc.start()
    try:
        result = inspect(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not result.ok
    assert "100000 frames" in (result.error or "")
    assert peak < 32 * 1024 * 1024  # 100k x 512 x 512 x 2 bytes would be 52 GB


def test_pixel_budget_is_checked_before_decoding(write_dicom):
    path = write_dicom(np.zeros((64, 64), np.uint16))
    with pytest.raises(OverreadError, match=r"imaging\.max_pixels"):
        read(path, settings=ImagingSettings(max_pixels=1000))


def test_pixel_data_too_short_for_declared_geometry(write_dicom):
    path = write_dicom(np.zeros((8, 8), np.uint16), Rows=16)
    with pytest.raises(OverreadError, match="Pixel Data holds 128 bytes"):
        read(path)


@pytest.mark.parametrize("samples", [0, 2, 4])
def test_bad_samples_per_pixel(write_dicom, samples):
    path = write_dicom(np.zeros((8, 8), np.uint16), SamplesPerPixel=samples)
    with pytest.raises(OverreadError, match="Samples per Pixel"):
        read(path)


def test_bits_stored_larger_than_allocated(write_dicom):
    path = write_dicom(np.zeros((8, 8), np.uint16), BitsStored=20)
    with pytest.raises(OverreadError, match="Bits Stored"):
        read(path)


def test_large_file_over_the_budget_is_refused_without_loading_it(write_dicom):
    path = write_dicom(np.zeros((40, 512, 512), np.uint16))  # 21 MB of pixel data
    tracemalloc.start()
    try:
        with pytest.raises(OverreadError, match="max_pixels"):
            read(path, settings=ImagingSettings(max_pixels=1_000_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 1024 * 1024
    image = read(path)  # within the default limits the deferred pixels load normally
    assert image.pixels.shape == (40, 512, 512)


def _png_bytes(tmp_path: Path) -> bytes:
    from PIL import Image as PILImage

    path = tmp_path / "seed.png"
    PILImage.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)).save(path)
    return path.read_bytes()


def _nifti_bytes(tmp_path: Path) -> bytes:
    import nibabel as nib

    path = tmp_path / "seed.nii"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4)), path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["png", "nii"])
@pytest.mark.parametrize("cut", [0.05, 0.3, 0.6, 0.95])
def test_truncated_png_and_nifti(tmp_path, kind, cut):
    data = _png_bytes(tmp_path) if kind == "png" else _nifti_bytes(tmp_path)
    path = tmp_path / f"cut.{kind}"
    path.write_bytes(data[: max(1, int(len(data) * cut))])
    _read_or_refuse(path)


def test_png_decompression_bomb_is_refused(tmp_path):
    from PIL import Image as PILImage

    path = tmp_path / "wide.png"
    PILImage.new("L", (5_000, 5_000)).save(path)  # 25 M pixels in a few kB
    with pytest.raises(OverreadError, match="max_pixels"):
        read(path, settings=ImagingSettings(max_pixels=10_000_000))


@FUZZ
@given(data=st.binary(min_size=0, max_size=4096), preamble=st.booleans())
def test_random_bytes(tmp_path_factory, data, preamble):
    path = tmp_path_factory.mktemp("rand") / "r.dcm"
    path.write_bytes((b"\x00" * 128 + b"DICM" if preamble else b"") + data)
    _read_or_refuse(path)
