"""The modality: test chest radiographs, and DCMTK ``storescu`` sending them on loopback."""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    UID,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    generate_uid,
)

from overread.errors import ServiceError

MODALITY_AE_TITLE = "MODALITY"
#: The gateway's AE title unless configured otherwise.
GATEWAY_AE_TITLE = "OVERREAD"


def write_chest_dx(
    path: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "DX",
    body_part: str = "CHEST",
    size: int = 128,
    seed: int = 0,
    patient_id: str = "LOOPBACK1",
    patient_name: str = "Loopback^Test",
    birth_date: str = "19700101",
    age: str | None = None,
    accession: str = "ACC1",
    department: str | None = None,
    pixel_spacing: float = 0.5,
    window: tuple[float, float] | None = (2500, 3000),
) -> Path:
    """Write a complete chest DX (12 of 16 bits, MONOCHROME2) of ``size`` x ``size`` to ``path``.

    The pixels are two dark lung fields on a brighter background with noise drawn
    from ``seed``. UIDs not given are generated; ``age``, ``department`` and
    ``window`` (centre, width) are left out when ``None``.
    """
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None]
    cols = np.linspace(-1, 1, size, dtype=np.float32)[None, :]
    lungs = np.exp(-((np.abs(cols) - 0.45) ** 2) / 0.05 - (rows - 0.5) ** 2 / 0.1)
    pixels = (2000 + 1500 * (1 - lungs) + rng.normal(0, 30, (size, size))).clip(0, 4095)
    sop = UID(sop_uid) if sop_uid else generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientSex = "O"
    ds.PatientBirthDate = birth_date
    if age is not None:
        ds.PatientAge = age
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferringPhysicianName = ""
    if department is not None:
        ds.InstitutionalDepartmentName = department
    ds.Manufacturer = "overread-tests"
    ds.Modality = modality
    ds.BodyPartExamined = body_part
    ds.ViewPosition = "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [pixel_spacing, pixel_spacing]
    ds.ImagerPixelSpacing = [pixel_spacing, pixel_spacing]
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def storescu(
    port: int,
    files: list[Path],
    called: str = GATEWAY_AE_TITLE,
    calling: str = MODALITY_AE_TITLE,
    *,
    timeout: float = 600.0,
) -> None:
    """Send ``files`` to ``127.0.0.1:port`` in one association with DCMTK ``storescu``.

    Raises
    ------
    ServiceError
        When ``storescu`` exits with a failure; the message carries what it printed.
    """
    done = subprocess.run(
        ["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise ServiceError(f"storescu to port {port} failed: {done.stderr.strip()[:300]}")


def send_parallel(
    port: int,
    files: list[Path],
    associations: int,
    called: str,
    calling: str = MODALITY_AE_TITLE,
) -> float:
    """Seconds to send ``files`` over ``associations`` concurrent ``storescu`` runs."""
    chunks = [files[i::associations] for i in range(associations)]
    failures: list[BaseException] = []

    def run(chunk: list[Path]) -> None:
        try:
            storescu(port, chunk, called, calling)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks if c]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]
    return elapsed


__all__ = [
    "GATEWAY_AE_TITLE",
    "MODALITY_AE_TITLE",
    "send_parallel",
    "storescu",
    "write_chest_dx",
]
