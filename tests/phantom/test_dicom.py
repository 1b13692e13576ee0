"""The phantom writes real, valid DICOM."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
)

from overread.phantom import generate_cohort


def _dciodvfy(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, check=False)
    return (result.stdout + result.stderr).splitlines()


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (dicom3tools) not installed")
def test_dciodvfy_reports_no_errors_for_dx_and_cr(cohort_dir: Path) -> None:
    files = sorted(cohort_dir.glob("images/*/*/*.dcm"))
    modalities = set()
    for path in files[:12]:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        modalities.add(ds.Modality)
        lines = _dciodvfy(path)
        errors = [line for line in lines if line.startswith("Error")]
        assert errors == [], f"{path}: {errors}"
        # The only warnings allowed are DICOMDIR hints, absent in a plain file here.
        warnings = [line for line in lines if line.startswith("Warning") and "DICOMDIR" not in line]
        assert warnings == [], f"{path}: {warnings}"
    assert modalities == {"DX", "CR"}


def test_reread_with_pydicom(cohort_dir: Path) -> None:
    files = sorted(cohort_dir.glob("images/*/*/*.dcm"))
    assert len(files) == 30
    photometric = set()
    for path in files:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.SOPClassUID in (
            DigitalXRayImageStorageForPresentation,
            ComputedRadiographyImageStorage,
        )
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.BitsAllocated == 16 and 12 <= ds.BitsStored <= 16
        assert ds.HighBit == ds.BitsStored - 1
        assert (ds.Rows, ds.Columns) == (256, 256)
        assert ds.BodyPartExamined == "CHEST"
        assert ds.ViewPosition in ("PA", "AP")
        assert ds.PatientSex in ("M", "F")
        assert ds.EthnicGroup in ("A", "B", "C", "D")
        assert ds.InstitutionName and ds.StationName and ds.Manufacturer
        assert ds.ManufacturerModelName and ds.AccessionNumber and ds.PatientBirthDate
        assert ds.InstitutionalDepartmentName
        assert len(ds.PixelSpacing) == 2 and len(ds.ImagerPixelSpacing) == 2
        pixels = ds.pixel_array
        assert pixels.dtype == np.uint16
        assert int(pixels.max()) <= (1 << ds.BitsStored) - 1
        assert float(pixels.std()) > 50  # an image, not a constant
        lo = float(ds.WindowCenter) - float(ds.WindowWidth) / 2
        hi = float(ds.WindowCenter) + float(ds.WindowWidth) / 2
        assert 0 <= lo < hi <= (1 << ds.BitsStored) + 1
        photometric.add(ds.PhotometricInterpretation)
        if ds.Modality == "DX":
            assert ds.PresentationIntentType == "FOR PRESENTATION"
            shape = "INVERSE" if ds.PhotometricInterpretation == "MONOCHROME1" else "IDENTITY"
            assert ds.PresentationLUTShape == shape
    assert photometric == {"MONOCHROME1", "MONOCHROME2"}


def test_monochrome1_is_inverted(tmp_path: Path) -> None:
    """Lungs are dark when displayed: low stored values in MONOCHROME2, high in MONOCHROME1."""
    mono2 = generate_cohort(
        tmp_path / "m2", n=1, seed=5, rows=128, cols=128, monochrome1_fraction=0.0
    )
    mono1 = generate_cohort(
        tmp_path / "m1", n=1, seed=5, rows=128, cols=128, monochrome1_fraction=1.0
    )
    a = pydicom.dcmread(next((mono2.out_dir / "images").rglob("*.dcm")))
    b = pydicom.dcmread(next((mono1.out_dir / "images").rglob("*.dcm")))
    assert a.PhotometricInterpretation == "MONOCHROME2"
    assert b.PhotometricInterpretation == "MONOCHROME1"
    # Same noise seed: the MONOCHROME1 image is the exact inversion.
    top = (1 << a.BitsStored) - 1
    assert np.array_equal(top - a.pixel_array.astype(np.int32), b.pixel_array.astype(np.int32))
