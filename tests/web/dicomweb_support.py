"""Instances with known attributes for the DICOMweb tests, and a multipart reader."""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT = "1.2.840.10008.5.1.4.1.1.2"
DX = "1.2.840.10008.5.1.4.1.1.1.1"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"


def instance(
    *,
    study: str,
    series: str | None = None,
    patient_name: str = "Doe^Jane",
    patient_id: str = "PID-1",
    study_date: str = "20240105",
    accession: str = "ACC-1",
    modality: str = "CT",
    frames: int = 1,
    size: int = 16,
    number: int = 1,
    window: tuple[float, float] | None = (40.0, 400.0),
) -> bytes:
    """A small 16-bit MONOCHROME2 instance; frame ``k`` is filled with ``100 * (k + 1)``."""
    sop_class = ENHANCED_CT if frames > 1 else CT if modality == "CT" else DX
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "F"
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = accession
    ds.Modality = modality
    ds.StudyDescription = "CHEST"
    ds.SeriesNumber = 1
    ds.InstanceNumber = number
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = 1, -1024
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    pixels = np.stack(
        [np.full((size, size), 100 * (k + 1), dtype=np.uint16) for k in range(frames)]
    )
    pixels[:, 0, 0] = 4000  # one bright pixel per frame
    if frames > 1:
        ds.NumberOfFrames = frames
    ds.PixelData = pixels.tobytes()
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def parts_of(content_type: str, body: bytes) -> list[tuple[dict[str, str], bytes]]:
    """The (headers, bytes) of each part of a multipart/related body (strict reader)."""
    boundary = content_type.split("boundary=", 1)[1].split(";", 1)[0].strip().strip('"')
    delimiter = b"--" + boundary.encode()
    chunks = body.split(delimiter)
    assert chunks[0] == b"", "the body starts with the first delimiter"
    assert chunks[-1] in (b"--\r\n", b"--"), "the body ends with the close delimiter"
    parts = []
    for chunk in chunks[1:-1]:
        assert chunk.startswith(b"\r\n") and chunk.endswith(b"\r\n")
        head, _, data = chunk[2:-2].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("ascii").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts


def read_part(data: bytes) -> Dataset:
    """A part's DICOM data set."""
    return dcmread(BytesIO(data))


def write(path: Path, data: bytes) -> Path:
    """``data`` written to ``path``."""
    path.write_bytes(data)
    return path
