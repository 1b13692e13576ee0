"""Decoded pixels against an independent decoder: DCMTK decompresses, we compare.

pydicom's plugins and DCMTK share no code, so agreement here means the pixels
(not just the pipeline around them) are right.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom.data
import pytest

from overread.imaging import read

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"

CASES = [
    ("dcmdrle", "MR_small_RLE.dcm"),
    ("dcmdrle", "rtdose_rle.dcm"),
    ("dcmdrle", "SC_rgb_rle_16bit.dcm"),
    ("dcmdjpls", "MR_small_jpeg_ls_lossless.dcm"),
    ("dcmdjpls", "JPEGLSNearLossless_16.dcm"),
    ("dcmdjpeg", "SC_rgb_jpeg_gdcm.dcm"),
    ("dcmdjpeg", "JPGExtended.dcm"),
    ("dcmdjpeg", "SC_rgb_jpeg_dcmtk.dcm"),
    ("dcmdjpeg", "SC_rgb_dcmtk_+eb+cy+n1.dcm"),
    ("dcmdjpeg", "examples_ybr_color.dcm"),
]
LOSSY = {"JPGExtended.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm", "examples_ybr_color.dcm"}


@pytest.mark.parametrize(("tool", "name"), CASES)
def test_matches_dcmtk_decompression(tool, name, tmp_path):
    if shutil.which(tool) is None:
        pytest.skip(f"DCMTK {tool} not installed")
    source = PYDICOM_FILES / name
    target = tmp_path / "native.dcm"
    done = subprocess.run(
        [tool, str(source), str(target)], capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        pytest.skip(f"{tool} cannot decode {name}: {done.stderr.strip()[:200]}")
    ours = read(source).pixels
    theirs = read(target).pixels
    assert ours.shape == theirs.shape
    if name in LOSSY:  # lossy DCT and YBR->RGB: decoders may round differently
        assert np.abs(ours - theirs).max() <= 3
        assert np.abs(ours - theirs).mean() <= 0.5
    else:
        np.testing.assert_array_equal(ours, theirs)


def test_dcmtk_fallback_decodes_what_pydicom_plugins_cannot():
    if shutil.which("dcmdjpeg") is None:
        pytest.skip("DCMTK dcmdjpeg not installed")
    image = read(PYDICOM_FILES / "JPEG-lossy.dcm")
    assert any("decoded by DCMTK dcmdjpeg" in step for step in image.provenance)
    fixed = read(PYDICOM_FILES / "JPGExtended.dcm")  # the same image, stream repaired
    assert np.abs(image.pixels - fixed.pixels).max() <= 1
