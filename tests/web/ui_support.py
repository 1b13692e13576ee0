"""Helpers for the web UI tests: a running gateway with the UI, users, studies, Chromium."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

PASSWORD = "correct horse battery"
#: user name -> role of the accounts every test gateway has.
USERS = {
    "dr.grey": "radiologist",
    "tech.tom": "technologist",
    "ada.admin": "admin",
    "audrey.audit": "auditor",
    "lee.lockout": "technologist",
}
#: A patient name that appears nowhere else in the pages.
PATIENT_NAME = "Quillfeather^Zebediah"
PATIENT_FAMILY = "Quillfeather"
PATIENT_ID = "PID-77341"

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def write_dx(
    path: Path,
    *,
    study_uid: str,
    patient_name: str = PATIENT_NAME,
    patient_id: str = PATIENT_ID,
    department: str = "Emergency Department",
    accession: str = "ACC-UI-1",
    birth_date: str = "19500101",
    age: str = "076Y",
    size: int = 256,
    seed: int = 0,
) -> Path:
    """A small chest DX (16-bit MONOCHROME2) with the given study and patient."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None]
    cols = np.linspace(-1, 1, size, dtype=np.float32)[None, :]
    lungs = np.exp(-((np.abs(cols) - 0.45) ** 2) / 0.05 - (rows - 0.5) ** 2 / 0.1)
    pixels = (2000 + 1500 * (1 - lungs) + rng.normal(0, 30, (size, size))).clip(0, 4095)
    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = generate_uid()
    ds.PatientID = patient_id
    ds.PatientName = patient_name
    ds.PatientSex = "O"
    ds.PatientBirthDate = birth_date
    ds.PatientAge = age
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = accession
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferringPhysicianName = ""
    ds.InstitutionalDepartmentName = department
    ds.Manufacturer = "overread-tests"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
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
    ds.PixelSpacing = [0.5, 0.5]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.WindowCenter = 2500
    ds.WindowWidth = 3000
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def wait_until(
    predicate: Callable[[], bool], timeout: float = 90.0, what: str = "condition"
) -> None:
    """Poll ``predicate`` until true or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"{what} not reached within {timeout} s")


@dataclass
class UiGateway:
    """A running gateway serving only the web UI, and where to reach it."""

    service: Any
    server: Any
    app: Any
    base_url: str
    data_dir: Path

    def session(self) -> Any:
        """A transactional database session (``with gw.session() as s``)."""
        return self.service.database.session()


def add_users(service: Any) -> None:
    """Create the accounts of :data:`USERS`, all with :data:`PASSWORD`."""
    from overread.security import add_user

    with service.database.session() as session:
        for name, role in USERS.items():
            add_user(session, name, role, password=PASSWORD, actor="os:test")


@contextmanager
def ui_gateway(data_dir: Path, *, artifacts: Any = True, **overrides: Any) -> Iterator[UiGateway]:
    """A gateway (DICOM listener, one worker, SQLite) with its web app on a free port."""
    from overread.config import Settings
    from overread.service.config import service_config
    from overread.service.http import HttpServer
    from overread.service.server import Service
    from overread.web.app import create_app

    values: dict[str, Any] = {
        "dicom_port": 0,
        "dicom_host": "127.0.0.1",
        "http_port": None,
        "workers": 1,
        "stable_seconds": 60,
        "poll_seconds": 0.2,
        "retry_base_seconds": 0.2,
    }
    values.update(overrides)
    service = Service(
        service_config(Settings(data_dir=data_dir), **values), artifacts=artifacts, with_http=False
    )
    service.start()
    server = None
    try:
        add_users(service)
        app = create_app(service)  # the REST API and the UI, as ``overread serve`` runs them
        server = HttpServer(app, "127.0.0.1", 0)
        port = server.start()
        yield UiGateway(service, server, app, f"http://127.0.0.1:{port}", data_dir)
    finally:
        if server is not None:
            server.stop()
        service.stop(timeout=10)


def seed_study(
    gateway: UiGateway,
    findings: dict[str, float],
    *,
    department: str = "",
    age: float | None = 50,
    waited: timedelta = timedelta(minutes=10),
    uid: str | None = None,
    sop_instance_uid: str = "",
) -> str:
    """Put a study on the worklist (scored, alerts raised) without running a model.

    ``sop_instance_uid`` names its reference image, if one was stored.
    """
    from overread.service.db import utcnow
    from overread.triage import StoredFinding, StudyContext, raise_alerts, upsert_study

    uid = uid or generate_uid()
    now = utcnow()
    stored = [
        StoredFinding(label, p, p >= 0.5, 1 - abs(p - 0.5) * 2, 0.5)
        for label, p in findings.items()
    ]
    config = _triage_config(gateway)
    with gateway.session() as session:
        item = upsert_study(
            session,
            uid,
            stored,
            StudyContext(department, age, now - waited),
            config,
            now=now,
            model_name="seeded",
            model_version="0",
            sop_instance_uid=sop_instance_uid,
        )
        raise_alerts(session, item, config, now=now)
    return uid


def _triage_config(gateway: UiGateway) -> Any:
    from overread.triage import TriageConfig

    return TriageConfig.model_validate(gateway.service.config.triage)


def storescu(port: int, *files: Path) -> None:
    """Send ``files`` with DCMTK's storescu."""
    done = subprocess.run(
        [
            "storescu",
            "-aet",
            "MODALITY",
            "-aec",
            "OVERREAD",
            "127.0.0.1",
            str(port),
            *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def worklist_has(gateway: UiGateway, uid: str) -> bool:
    """Whether ``uid`` is on the worklist."""
    from overread.triage import get_item

    with gateway.session() as session:
        try:
            get_item(session, uid)
        except KeyError:
            return False
    return True


def chromium_path() -> str | None:
    """The system Chromium, if installed."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def recent(moment: datetime, within: timedelta = timedelta(minutes=5)) -> bool:
    """Whether ``moment`` is within ``within`` of now."""
    from overread.service.db import utcnow

    return abs(utcnow() - moment) <= within


def _median_ms(call: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000)
    times.sort()
    return times[len(times) // 2]


def measure(rows: int = 2000, repeats: int = 20) -> dict[str, float]:
    """Median server time (ms) of the main pages, in-process, on a worklist of ``rows``.

    Run: ``python tests/web/ui_support.py --measure`` (see docs/ui.md).
    """
    import re
    import tempfile

    from fastapi.testclient import TestClient

    from overread.service.db import utcnow
    from overread.triage import StoredFinding, StudyContext, upsert_study

    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp, ui_gateway(Path(tmp) / "data", explain=True) as gw:
        config = _triage_config(gw)
        now = utcnow()
        rng = np.random.default_rng(0)
        with gw.session() as session:
            for _ in range(rows):
                p = rng.random(3)
                found = [
                    StoredFinding(label, float(v), bool(v > 0.5), float(1 - abs(v - 0.5) * 2), 0.5)
                    for label, v in zip(("Pneumothorax", "Edema", "Cardiomegaly"), p, strict=True)
                ]
                upsert_study(
                    session,
                    generate_uid(),
                    found,
                    StudyContext("ED", 60, now - timedelta(minutes=int(rng.integers(0, 600)))),
                    config,
                    now=now,
                )
        uid = generate_uid()
        dx = write_dx(Path(tmp) / "one.dcm", study_uid=uid)
        gw.service.ingestor.ingest_file(dx)
        gw.service.complete_study(uid)
        wait_until(lambda: worklist_has(gw, uid), 120, "the model's result")
        client = TestClient(gw.app, follow_redirects=False)
        form = client.get("/login").text
        token = re.search(r'name="csrf_token" value="([^"]+)"', form)
        assert token is not None
        client.post(
            "/login",
            data={"csrf_token": token.group(1), "username": "dr.grey", "password": PASSWORD},
        )
        results["worklist page (50 rows, with patient names)"] = _median_ms(
            lambda: client.get("/"), repeats
        )
        results["worklist refresh fragment"] = _median_ms(
            lambda: client.get("/worklist/rows"), repeats
        )
        results["study page"] = _median_ms(lambda: client.get(f"/studies/{uid}"), repeats)
        images = gw.app.state.ui.images
        overlays = images.stored_overlays(uid)
        label = next(iter(overlays))
        results["stored overlay PNG, first"] = _median_ms(
            lambda: client.get(f"/studies/{uid}/image.png?finding={label}"), 1
        )
        results["stored overlay PNG, cached"] = _median_ms(
            lambda: client.get(f"/studies/{uid}/image.png?finding={label}"), repeats
        )
        other = next(f for f in ("No Finding", "Fracture", "Pneumothorax") if f not in overlays)
        results["on-demand heatmap PNG, first"] = _median_ms(
            lambda: client.get(f"/studies/{uid}/image.png?finding={other}"), 1
        )
        with gw.session() as session:
            from sqlalchemy import func, select

            from overread.audit import AuditEvent

            events = session.scalar(select(func.count()).select_from(AuditEvent))
        results[f"audit page with verification ({events} records)"] = _median_ms(
            lambda: client.get("/audit"), 5
        )
    return results


if __name__ == "__main__":
    import sys

    if "--measure" in sys.argv:
        for name, ms in measure().items():
            print(f"{name}: {ms:.1f} ms")
