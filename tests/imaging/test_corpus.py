"""Every file of pydicom's test corpus is read with correct pixels or refused in one line."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels.processing import apply_color_lut

from overread.imaging import read
from overread.imaging.inspection import inspect

# The reference reads below use pydicom directly; its warnings are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"

ALL_FILES = sorted(p for p in PYDICOM_FILES.rglob("*") if p.is_file())

# Files with pixel data that no installed decoder can decode, or that are corrupt:
# each must be refused with a clear reason.
KNOWN_UNREADABLE = {
    "JPEG2000-embedded-sequence-delimiter.dcm": "cannot be decoded",
    "MR_truncated.dcm": "Pixel Data holds 8130 bytes",
    "badVR.dcm": "Number of Frames",
    "meta_missing_tsyntax.dcm": "Rows is missing",
    "nested_priv_SQ.dcm": "Rows is missing",
}
HAVE_DCMTK = shutil.which("dcmdjpeg") is not None
if not HAVE_DCMTK:  # 12-bit lossy JPEG with a scan libjpeg rejects: DCMTK or GDCM only
    KNOWN_UNREADABLE["JPEG-lossy.dcm"] = "cannot be decoded"


def _has_pixels(path: Path) -> bool:
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=False, force=True)
    except Exception:
        return False
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _reference(path: Path) -> np.ndarray:
    """pydicom's own decode, with the same Modality LUT/colour handling as read()."""
    ds = pydicom.dcmread(path, force=True)
    arr = ds.pixel_array
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        return apply_color_lut(arr, ds).astype(np.float32)
    if int(ds.get("SamplesPerPixel", 1)) == 3:
        return arr.astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (arr.astype(np.float64) * slope + intercept).astype(np.float32)


@pytest.mark.parametrize("path", ALL_FILES, ids=lambda p: str(p.relative_to(PYDICOM_FILES)))
def test_every_file_read_or_refused_in_one_line(path: Path):
    result = inspect(path)
    name = path.name
    if result.ok:
        assert result.error is None
        assert name not in KNOWN_UNREADABLE
        image = read(path)
        if image.metadata.source_format == "dicom":
            try:
                reference = _reference(path)
            except Exception:  # pydicom cannot decode it; DCMTK did (test_dcmtk_reference)
                assert any("DCMTK" in w for w in image.warnings)
            else:
                np.testing.assert_allclose(image.pixels, reference, rtol=1e-6, atol=1e-3)
        assert result.pixel_min == pytest.approx(float(np.nanmin(image.pixels)))
        return
    error = result.error or ""
    assert "\n" not in error and "Traceback" not in error
    assert error.startswith(str(path) + ": ")
    assert len(error) > len(str(path)) + 5
    if name in KNOWN_UNREADABLE:
        assert KNOWN_UNREADABLE[name] in error
    elif _has_pixels(path) and path.suffix not in (".json", ".gz", ".txt"):
        pytest.fail(f"a file with pixel data was refused: {error}")


# (compressed or re-encoded, reference) pairs of the same pixels
LOSSLESS_PAIRS = [
    ("MR_small_RLE.dcm", "MR_small.dcm"),
    ("MR_small_bigendian.dcm", "MR_small.dcm"),
    ("MR_small_expb.dcm", "MR_small.dcm"),
    ("MR_small_implicit.dcm", "MR_small.dcm"),
    ("MR_small_jp2klossless.dcm", "MR_small.dcm"),
    ("MR_small_jpeg_ls_lossless.dcm", "MR_small.dcm"),
    ("MR_small_padded.dcm", "MR_small.dcm"),
    ("rtdose_rle.dcm", "rtdose.dcm"),
    ("rtdose_expb.dcm", "rtdose.dcm"),
    ("rtdose_rle_1frame.dcm", "rtdose_1frame.dcm"),
    ("rtdose_expb_1frame.dcm", "rtdose_1frame.dcm"),
    ("liver_expb_1frame.dcm", "liver_1frame.dcm"),
    ("SC_rgb_small_odd_big_endian.dcm", "SC_rgb_small_odd.dcm"),
]
LOSSY_PAIRS = [
    ("JPEG-lossy.dcm", "JPGExtended.dcm", 0.05),  # the corpus's fixed copy of the same image
    ("SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_rle.dcm", 3.0),
    ("SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_rle.dcm", 3.0),
    ("SC_rgb_jpeg_dcmtk.dcm", "SC_rgb_rle.dcm", 3.0),
    ("SC_rgb_jpeg_gdcm.dcm", "SC_rgb_rle.dcm", 3.0),
    ("SC_rgb_jls_lossy_line.dcm", "SC_rgb_rle.dcm", 3.0),
    ("SC_rgb_small_odd_jpeg.dcm", "SC_rgb_small_odd.dcm", 20.0),
    ("JPEGLSNearLossless_16.dcm", None, 0.0),
]


@pytest.mark.parametrize(("encoded", "reference"), LOSSLESS_PAIRS)
def test_lossless_pairs_decode_identically(encoded, reference, corpus):
    a, b = read(corpus(encoded)), read(corpus(reference))
    np.testing.assert_array_equal(a.pixels, b.pixels)


@pytest.mark.parametrize(("encoded", "reference", "mean_error"), LOSSY_PAIRS)
def test_lossy_pairs_are_close(encoded, reference, mean_error, corpus):
    if encoded == "JPEG-lossy.dcm" and not HAVE_DCMTK:
        pytest.skip("JPEG-lossy.dcm decodes only through DCMTK")
    a = read(corpus(encoded))
    if reference is None:
        assert np.isfinite(a.pixels).all()
        return
    b = read(corpus(reference))
    assert a.pixels.shape == b.pixels.shape
    assert float(np.abs(a.pixels - b.pixels).mean()) <= mean_error


def test_docs_transfer_syntax_table_matches_what_decodes():
    """docs/imaging.md lists a syntax as decoded from the corpus only if a file of it reads."""
    docs = Path(__file__).resolve().parents[2] / "docs" / "imaging.md"
    claimed = set()
    for line in docs.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[1].startswith("1.2.840.10008.1.2") and "corpus" in cells[3]:
            claimed.add(cells[1])
    assert len(claimed) >= 10
    decoded = set()
    for path in ALL_FILES:
        result = inspect(path)
        if result.ok and result.metadata and result.metadata.transfer_syntax:
            decoded.add(result.metadata.transfer_syntax)
    assert claimed <= decoded, claimed - decoded
