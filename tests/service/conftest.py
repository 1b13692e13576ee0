"""Fixtures for the gateway tests: test DICOMs, free ports, databases, DCMTK peers."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

if TYPE_CHECKING:
    from overread.service.server import Service

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/"

needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK (storescu/storescp/echoscu) not installed"
)


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 15.0) -> None:
    """Wait until something listens on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port}")


def make_dx(
    path: Path,
    *,
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    modality: str = "DX",
    body_part: str = "CHEST",
    size: int = 128,
    seed: int = 0,
) -> Path:
    """Write a small but complete chest DX (16-bit, MONOCHROME2) to ``path``."""
    rng = np.random.default_rng(seed)
    rows = np.linspace(0, 1, size, dtype=np.float32)[:, None]
    cols = np.linspace(-1, 1, size, dtype=np.float32)[None, :]
    lungs = np.exp(-((np.abs(cols) - 0.45) ** 2) / 0.05 - (rows - 0.5) ** 2 / 0.1)
    pixels = (2000 + 1500 * (1 - lungs) + rng.normal(0, 30, (size, size))).clip(0, 4095)
    sop_uid = sop_uid or generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DigitalXRayImageStorageForPresentation
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = DigitalXRayImageStorageForPresentation
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientID = "SVC001"
    ds.PatientName = "Service^Test"
    ds.PatientSex = "O"
    ds.PatientBirthDate = "19700101"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC1"
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferringPhysicianName = ""
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
    ds.PixelSpacing = [0.5, 0.5]
    ds.ImagerPixelSpacing = [0.5, 0.5]
    ds.WindowCenter = 2500
    ds.WindowWidth = 3000
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def dx_factory(tmp_path: Path) -> Callable[..., Path]:
    """Make test DX files under ``tmp_path/dicom``."""
    counter = iter(range(1_000_000))

    def _make(**kwargs: object) -> Path:
        n = next(counter)
        return make_dx(tmp_path / "dicom" / f"dx{n:04d}.dcm", seed=n, **kwargs)  # type: ignore[arg-type]

    return _make


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"overread_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield POSTGRES_URL + name
    finally:
        with psycopg.connect(
            "host=127.0.0.1 port=5432 user=postgres dbname=postgres", autocommit=True
        ) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database URL: SQLite in a temp dir, or a clean schema on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'overread.db'}"
        return
    url: str = request.getfixturevalue("postgres_url")
    from overread.service.db import Base, Database

    db = Database(url, create=False)
    Base.metadata.drop_all(db.engine)
    db.dispose()
    yield url


class Storescp:
    """A DCMTK storescp acting as the PACS; files land in ``out``."""

    def __init__(self, out: Path, ae_title: str = "PACSAE", port: int | None = None) -> None:
        self.out = out
        self.ae_title = ae_title
        self.port = port or free_port()
        out.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            ["storescp", "-aet", ae_title, "-od", str(out), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        wait_for_port(self.port)

    def files(self) -> list[Path]:
        return sorted(p for p in self.out.iterdir() if p.is_file())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Storescp]:
    """A running DCMTK storescp."""
    if shutil.which("storescp") is None:
        pytest.skip("DCMTK storescp not installed")
    pacs = Storescp(tmp_path / "pacs")
    yield pacs
    pacs.stop()


def api_token(service: Service, role: str = "admin", username: str | None = None) -> str:
    """Create a user with ``role`` on ``service``'s database and return an API token for it."""
    from overread.security import add_user, issue_token

    name = username or f"{role}-{uuid.uuid4().hex[:8]}"
    with service.database.session() as session:
        add_user(session, name, role, actor="tests")
        token, _ = issue_token(session, name, actor="tests")
    return token


def bearer(token: str) -> dict[str, str]:
    """The ``Authorization`` header carrying ``token``."""
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def service_headers() -> Callable[..., dict[str, str]]:
    """``service_headers(service, role)``: bearer headers of a new user with ``role``."""

    def _headers(service: Service, role: str = "admin") -> dict[str, str]:
        return bearer(api_token(service, role))

    return _headers


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start gateways in-process on free ports (stopped after the test)."""
    from overread.config import Settings
    from overread.service.config import service_config
    from overread.service.server import Service

    services: list[Service] = []

    def _make(**overrides: object) -> Service:
        settings = Settings(data_dir=tmp_path / "data")
        values: dict[str, object] = {
            "dicom_port": 0,
            "dicom_host": "127.0.0.1",
            "http_port": 0,
            "workers": 1,
            "stable_seconds": 60,
            "poll_seconds": 0.2,
            "retry_base_seconds": 0.2,
        }
        values.update(overrides)
        service = Service(service_config(settings, **values))
        service.start()
        services.append(service)
        return service

    yield _make
    for service in services:
        service.stop(timeout=10)
