"""Fixtures for the gateway tests: test DICOMs, databases, DCMTK peers (on the loopback harness)."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest
from sqlalchemy import select

from overread.harness import StorescpPacs, storescu, wait_port, write_chest_dx
from overread.harness.gateway import Gateway
from overread.netutil import free_port as free_port
from overread.service.db import Job

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/"

needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK (storescu/storescp/echoscu) not installed"
)


#: Waits until something listens on a loopback port (raises ``ServiceError`` if not).
wait_for_port = wait_port

#: A small but complete chest DX (16-bit, MONOCHROME2) of the service tests' patient.
make_dx = partial(
    write_chest_dx,
    patient_id="SVC001",
    patient_name="Service^Test",
    birth_date="19700101",
    accession="ACC1",
)


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
    request.getfixturevalue("drop_every_table")(url)
    yield url


class Storescp(StorescpPacs):
    """A DCMTK storescp acting as the PACS, listening once made; files land in ``out``."""

    def __init__(self, out: Path, ae_title: str = "PACSAE", port: int | None = None) -> None:
        super().__init__(out, ae_title=ae_title)
        self.start(port=port)


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[Storescp]:
    """A running DCMTK storescp."""
    if shutil.which("storescp") is None:
        pytest.skip("DCMTK storescp not installed")
    pacs = Storescp(tmp_path / "pacs")
    yield pacs
    pacs.stop()


def api_token(service: Gateway, role: str = "admin", username: str | None = None) -> str:
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

    def _headers(service: Gateway, role: str = "admin") -> dict[str, str]:
        return bearer(api_token(service, role))

    return _headers


@pytest.fixture
def make_service(start_gateway: Callable[..., Gateway]) -> Callable[..., Gateway]:
    """Start gateways in-process on free ports (stopped after the test)."""
    return start_gateway


def wait_until(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"condition not reached in {timeout:g} s")


def job_states(service: Gateway) -> list[str]:
    """The states of the gateway's jobs, in the order they were queued."""
    with service.database.session() as session:
        return list(session.scalars(select(Job.state).order_by(Job.id)).all())


def send_and_run(service: Gateway, files: list[Path], jobs: int = 2) -> None:
    """Send ``files`` to the gateway with DCMTK's storescu (one association) and wait
    until ``jobs`` jobs (the study's infer job and its exports) have all succeeded."""
    storescu(service.dicom_port, files, called="OVERREAD", calling="MODALITY", timeout=60)
    wait_until(lambda: job_states(service) == ["succeeded"] * jobs)
