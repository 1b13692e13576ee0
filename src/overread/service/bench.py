"""Gateway benchmarks: SCP ingest throughput against DCMTK, and C-STORE to SR latency.

Both use real peers (DCMTK ``storescu`` sends, ``storescp`` is the PACS) on loopback
and synthetic chest radiographs written here, so they run anywhere DCMTK does. They
are measurements for ``overread bench gateway``, never assertions in tests.
"""

from __future__ import annotations

import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from overread.config import Settings
from overread.errors import ServiceError


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceError(f"nothing listening on port {port}")


def write_test_radiograph(path: Path, *, size: int, study_uid: str, seed: int) -> Path:
    """A synthetic 12-bit chest DX (noise on a smooth background) of ``size``²."""
    rng = np.random.default_rng(seed)
    pixels = (2000 + rng.normal(0, 300, (size, size))).clip(0, 4095).astype(np.uint16)
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = DigitalXRayImageStorageForPresentation, uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, generate_uid()
    ds.PatientID, ds.PatientName, ds.PatientSex, ds.PatientBirthDate = (
        "BENCH",
        "Bench^Mark",
        "O",
        "",
    )
    ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.StudyID = "20260101", "120000", "", "1"
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "DX", "CHEST", "PA"
    ds.PatientOrientation = ["L", "F"]
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelSpacing = ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def _send(port: int, files: list[Path], associations: int, called: str) -> float:
    chunks = [files[i::associations] for i in range(associations)]
    failures: list[str] = []

    def run(chunk: list[Path]) -> None:
        done = subprocess.run(
            ["storescu", "-aet", "BENCH", "-aec", called, "127.0.0.1", str(port), *map(str, chunk)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            failures.append(done.stderr.strip()[:200])

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks if c]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise ServiceError(f"storescu failed: {failures[0]}")
    return elapsed


def benchmark_ingest(
    *, files: int = 40, size: int = 1600, associations: int = 1, repeats: int = 2
) -> dict[str, Any]:
    """MB/s and files/s of DCMTK ``storescp`` versus overread's SCP (fsync'd) on the same files.

    ``storescp`` writes without fsync (its default); overread fsyncs every file and
    commits its row before answering. The best of ``repeats`` runs is kept for each.
    """
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise ServiceError(f"{tool} (DCMTK) is needed for this benchmark")
    from overread.service.config import service_config
    from overread.service.db import Database
    from overread.service.ingest import Ingestor
    from overread.service.scp import StorageSCP
    from overread.service.store import ObjectStore

    with tempfile.TemporaryDirectory(prefix="overread-bench-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        study = generate_uid()
        paths = [
            write_test_radiograph(root / "in" / f"{i:04d}.dcm", size=size, study_uid=study, seed=i)
            for i in range(files)
        ]
        total = sum(p.stat().st_size for p in paths)
        results: dict[str, Any] = {
            "files": files,
            "mb_per_file": total / files / 1e6,
            "associations": associations,
        }
        best = float("inf")
        for run in range(repeats):
            out = root / f"pacs{run}"
            out.mkdir()
            port = _free_port()
            args = [
                "storescp",
                *(["--fork"] if associations > 1 else []),
                "-od",
                str(out),
                str(port),
            ]
            process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            try:
                _wait_port(port)
                best = min(best, _send(port, paths, associations, "ANY-SCP"))
            finally:
                process.terminate()
                process.wait(10)
        results["storescp"] = {"mb_s": total / best / 1e6, "files_s": files / best}
        best = float("inf")
        for run in range(repeats):
            config = service_config(
                Settings(data_dir=root / f"gateway{run}"), dicom_port=0, dicom_host="127.0.0.1"
            )
            database = Database(config.database_url)
            scp = StorageSCP(
                config, Ingestor(database, ObjectStore(root / f"gateway{run}" / "objects"))
            )
            port = scp.start()
            try:
                best = min(best, _send(port, paths, associations, config.ae_title))
            finally:
                scp.stop()
                database.dispose()
        results["overread_fsync"] = {"mb_s": total / best / 1e6, "files_s": files / best}
        results["ratio"] = results["overread_fsync"]["mb_s"] / results["storescp"]["mb_s"]
        return results


def benchmark_latency(*, studies: int = 12, size: int = 2048, warmup: int = 2) -> dict[str, Any]:
    """Seconds from the start of a C-STORE of one chest DX to its SR stored at the PACS.

    One in-process gateway with one worker, the default chest route (completed on
    association release), the bundled model, DCMTK ``storescp`` as the PACS.
    """
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise ServiceError(f"{tool} (DCMTK) is needed for this benchmark")
    from overread.service.config import service_config
    from overread.service.server import Service

    with tempfile.TemporaryDirectory(prefix="overread-bench-") as tmp:
        root = Path(tmp)
        pacs_dir = root / "pacs"
        pacs_dir.mkdir()
        pacs_port = _free_port()
        pacs = subprocess.Popen(
            ["storescp", "-aet", "PACSAE", "-od", str(pacs_dir), str(pacs_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        config = service_config(
            Settings(data_dir=root / "gateway"),
            dicom_port=0,
            dicom_host="127.0.0.1",
            http_port=None,
            workers=1,
            destinations=[f"PACS=PACSAE@127.0.0.1:{pacs_port}"],
        )
        service = Service(config)
        latencies: list[float] = []
        try:
            _wait_port(pacs_port)
            service.start()
            for i in range(studies + warmup):
                image = write_test_radiograph(
                    root / f"cxr{i}.dcm", size=size, study_uid=generate_uid(), seed=i
                )
                before = len(list(pacs_dir.iterdir()))
                elapsed = _send(service.dicom_port or 0, [image], 1, config.ae_title)
                start = time.perf_counter() - elapsed
                deadline = time.perf_counter() + 120
                while len(list(pacs_dir.iterdir())) == before:
                    if time.perf_counter() > deadline:
                        raise ServiceError("no SR reached the PACS within 120 s")
                    time.sleep(0.002)
                if i >= warmup:
                    latencies.append(time.perf_counter() - start)
        finally:
            service.stop()
            pacs.terminate()
            pacs.wait(10)
        ordered = sorted(latencies)
        return {
            "studies": len(latencies),
            "mb_per_image": size * size * 2 / 1e6,
            "p50_s": statistics.median(ordered),
            "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "max_s": ordered[-1],
        }


__all__ = ["benchmark_ingest", "benchmark_latency", "write_test_radiograph"]
