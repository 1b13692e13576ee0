"""Fixtures for the imaging tests: pydicom's own test corpus and synthetic files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom.data
import pytest

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"


@pytest.fixture
def corpus() -> Callable[[str], Path]:
    """Path of one named file of pydicom's local test corpus (never downloads)."""

    def _path(name: str) -> Path:
        path = PYDICOM_FILES / name
        if not path.is_file():
            pytest.skip(f"{name} not in this pydicom's test files")
        return path

    return _path


def build_dataset(pixels, **attrs):  # type: ignore[no-untyped-def]
    """A minimal valid grey-scale Part 10 dataset around ``pixels`` (uint16/int16/uint8)."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    arr = np.asarray(pixels)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = attrs.get("SOPClassUID", SecondaryCaptureImageStorage)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = "TEST001"
    ds.PatientName = "Test^Patient"
    ds.Modality = "OT"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    if arr.ndim == 3:
        ds.NumberOfFrames = arr.shape[0]
    ds.Rows, ds.Columns = arr.shape[-2], arr.shape[-1]
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if arr.dtype.kind == "i" else 0
    ds.PixelData = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    for key, value in attrs.items():
        if key != "SOPClassUID":
            setattr(ds, key, value)
    return ds


@pytest.fixture
def write_dicom(tmp_path: Path):  # type: ignore[no-untyped-def]
    """Write a synthetic DICOM (see :func:`build_dataset`) and return its path."""
    counter = {"n": 0}

    def _write(pixels, name: str | None = None, **attrs):  # type: ignore[no-untyped-def]
        counter["n"] += 1
        ds = build_dataset(pixels, **attrs)
        path = tmp_path / (name or f"synthetic{counter['n']}.dcm")
        ds.save_as(path, enforce_file_format=True)
        return path

    return _write
