"""Fixtures: small real DICOM chest radiographs written with pydicom."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from overread.models.calibration import synthetic_chest

CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"


def write_cxr(
    path: Path,
    *,
    rows: int = 320,
    cols: int = 256,
    modality: str = "CR",
    view: str = "PA",
    photometric: str = "MONOCHROME2",
    seed: int = 0,
) -> Path:
    """Write a 12-bit chest-like radiograph as a DICOM Part 10 file."""
    rng = np.random.default_rng(seed)
    square = synthetic_chest(max(rows, cols), rng)[:rows, :cols]
    pixels = (square * 4000).astype(np.uint16)
    if photometric == "MONOCHROME1":
        pixels = (4095 - pixels).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CR_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CR_STORAGE
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = f"P{seed:04d}"
    ds.PatientName = "Phantom^Chest"
    ds.Modality = modality
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = view
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def cxr_dicom(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing chest radiograph DICOMs into the test's tmp directory."""
    counter = iter(range(10_000))

    def make(name: str | None = None, **kwargs: object) -> Path:
        index = next(counter)
        kwargs.setdefault("seed", index)
        return write_cxr(tmp_path / (name or f"cxr{index}.dcm"), **kwargs)  # type: ignore[arg-type]

    return make
