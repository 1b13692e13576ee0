"""Round trips through every encoder installed here, and codec reporting."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom import uid
from pydicom.pixels.encoders.base import get_encoder

from overread.errors import UnsupportedTransferSyntaxError
from overread.imaging import codec_availability, read

LOSSLESS = [uid.RLELossless, uid.JPEGLSLossless, uid.JPEG2000Lossless]
# (Explicit VR Big Endian is covered by pydicom's MR_small_bigendian.dcm in test_corpus.)
NATIVE = [uid.ImplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian]


def _ct_like(signed: bool) -> np.ndarray:
    rng = np.random.default_rng(5)
    base = rng.integers(0, 4096, (64, 48))
    return (base - 2048).astype(np.int16) if signed else base.astype(np.uint16)


@pytest.mark.parametrize("syntax", LOSSLESS, ids=lambda u: u.name)
@pytest.mark.parametrize("signed", [False, True])
def test_lossless_round_trip(syntax, signed, write_dicom, tmp_path):
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no encoder for {syntax.name}")
    stored = _ct_like(signed)
    source = write_dicom(stored, BitsStored=12, HighBit=11)
    ds = pydicom.dcmread(source)
    ds.compress(syntax, stored, bits_stored=12)
    path = tmp_path / "compressed.dcm"
    ds.save_as(path)
    image = read(path)
    assert image.metadata.transfer_syntax == syntax
    np.testing.assert_array_equal(image.pixels, stored.astype(np.float32))


@pytest.mark.parametrize("syntax", NATIVE, ids=lambda u: u.name)
def test_native_encodings(syntax, write_dicom, tmp_path):
    stored = _ct_like(True)
    ds = pydicom.dcmread(write_dicom(stored, RescaleSlope=2, RescaleIntercept=-10))
    ds.file_meta.TransferSyntaxUID = syntax
    path = tmp_path / "native.dcm"
    ds.save_as(path, enforce_file_format=True)
    np.testing.assert_array_equal(read(path).pixels, stored.astype(np.float32) * 2 - 10)


def test_jpeg_ls_near_lossless_is_within_its_bound(write_dicom, tmp_path):
    stored = _ct_like(False)
    ds = pydicom.dcmread(write_dicom(stored, BitsStored=12, HighBit=11))
    ds.compress(uid.JPEGLSNearLossless, stored, bits_stored=12, jls_error=3)
    path = tmp_path / "nl.dcm"
    ds.save_as(path)
    assert np.abs(read(path).pixels - stored).max() <= 3


def test_unknown_transfer_syntax_is_refused_with_its_name(write_dicom, tmp_path):
    ds = pydicom.dcmread(write_dicom(_ct_like(False)))
    ds.file_meta.TransferSyntaxUID = uid.MPEG2MPML  # video: no image decoder
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 100])
    ds["PixelData"].VR = "OB"
    path = tmp_path / "video.dcm"
    ds.save_as(path)
    with pytest.raises(UnsupportedTransferSyntaxError, match="MPEG2"):
        read(path)


def test_codec_availability_reports_every_compressed_syntax():
    report = codec_availability()
    for name in ("JPEG Baseline (Process 1)", "JPEG-LS Lossless Image Compression", "RLE Lossless"):
        assert report[name].startswith("available")
    assert all(v.startswith(("available", "unavailable")) for v in report.values())
