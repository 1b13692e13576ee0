"""A small synthetic chest CT series written with pydicom, with known nodules."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


@dataclass(frozen=True)
class Nodule:
    centre_mm: tuple[float, float, float]  # (x, y, z) LPS
    radius_mm: float
    hu: float


def chest_volume(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], nodules: list[Nodule]
) -> np.ndarray:
    """HU ``(slices, rows, cols)``: air, a body ellipse, two lungs, spherical nodules.

    Voxel (slice k, row j, col i) sits at x = i * col spacing, y = j * row spacing,
    z = k * slice step (the series' origin is 0).
    """
    d, h, w = shape
    sz, sy, sx = spacing
    z, y, x = np.meshgrid(np.arange(d) * sz, np.arange(h) * sy, np.arange(w) * sx, indexing="ij")
    cx, cy, cz = (w - 1) * sx / 2, (h - 1) * sy / 2, (d - 1) * sz / 2
    volume = np.full(shape, -1000.0, dtype=np.float32)
    body = ((x - cx) / (0.45 * w * sx)) ** 2 + ((y - cy) / (0.38 * h * sy)) ** 2 <= 1
    volume[body] = 40.0
    for side in (-1, 1):
        lx = cx + side * 0.2 * w * sx
        lung = (
            ((x - lx) / (0.15 * w * sx)) ** 2
            + ((y - cy) / (0.28 * h * sy)) ** 2
            + ((z - cz) / (0.45 * d * sz)) ** 2
        ) <= 1
        volume[lung] = -850.0
    for nodule in nodules:
        nx, ny, nz = nodule.centre_mm
        inside = (x - nx) ** 2 + (y - ny) ** 2 + (z - nz) ** 2 <= nodule.radius_mm**2
        volume[inside] = nodule.hu
    return volume


def write_series(
    out: Path,
    volume: np.ndarray,
    spacing: tuple[float, float, float],
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "CT-PHANTOM-1",
) -> list[Path]:
    """One CT Image Storage file per slice, HU stored through Rescale Slope/Intercept."""
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    frame_uid = generate_uid()
    paths = []
    for k, plane in enumerate(volume):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(out / f"{k:04d}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = "Phantom^CT"
        ds.PatientID = patient_id
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.StudyDate = "20260101"
        ds.StudyTime = "120000"
        ds.SeriesDate = "20260101"
        ds.SeriesTime = "120000"
        ds.ContentDate = "20260101"
        ds.ContentTime = "120000"
        ds.AccessionNumber = "CT0001"
        ds.ReferringPhysicianName = ""
        ds.StudyID = "1"
        ds.SeriesNumber = 2
        ds.InstanceNumber = k + 1
        ds.Modality = "CT"
        ds.BodyPartExamined = "CHEST"
        ds.Manufacturer = "phantom"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PositionReferenceIndicator = ""
        ds.PatientPosition = "HFS"
        ds.ImagePositionPatient = [0.0, 0.0, float(k * spacing[0])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.SliceLocation = float(k * spacing[0])
        ds.PixelSpacing = [float(spacing[1]), float(spacing[2])]
        ds.SliceThickness = float(spacing[0])
        ds.KVP = 120
        ds.AcquisitionNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(plane.shape[0]), int(plane.shape[1])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = -600
        ds.WindowWidth = 1500
        stored = np.clip(np.round(plane + 1024), 0, 65535).astype(np.uint16)
        ds.PixelData = stored.tobytes()
        path = out / f"{k:04d}.dcm"
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        paths.append(path)
    return paths


#: The default fixture: 40 slices of 96 x 96 at 0.8 mm in-plane, 2.5 mm slices.
SHAPE = (40, 96, 96)
SPACING = (2.5, 0.8, 0.8)
NODULES = [
    Nodule((24.0, 38.0, 50.0), 5.0, 30.0),  # solid, 10 mm: 4A
    Nodule((52.0, 36.0, 45.0), 4.0, -550.0),  # ground-glass, 8 mm
]
