"""Fixtures for the REST API tests: a gateway's app with users of every role and data."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from overread.config import Settings
from overread.gateway import Gateway
from overread.models.registry import Registry
from overread.results import FindingResult
from overread.security import Role, add_user, issue_token
from overread.service.config import service_config
from overread.service.db import Result, Study, StudyState, utcnow
from overread.triage import StudyContext, TriageConfig, raise_alerts, upsert_study
from overread.web.app import create_app

#: Identifiers that must never reach a caller without ``view_phi`` (or any credentials).
PATIENT_ID = "PHI-0042-QX"
PATIENT_NAME = "Quillwhistle^Ottoline"
PASSWORD = "correct horse battery"


@dataclass
class ApiGateway:
    """A gateway (not listening: called in-process) with one user and token per role."""

    service: Gateway
    app: FastAPI
    client: TestClient
    tokens: dict[Role, str]
    study_uid: str = ""
    alert_id: int = 0
    result_id: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def headers(self, role: Role | None) -> dict[str, str]:
        """Bearer headers of ``role``'s user (none for ``None``)."""
        return {} if role is None else {"Authorization": f"Bearer {self.tokens[role]}"}


def seed_study(service: Gateway, *, critical: bool = True) -> tuple[str, int, int]:
    """A routed study with a result, a worklist row (patient ID set) and an alert.

    Returns the Study Instance UID, the alert id (0 without ``critical``) and the result id.
    """
    uid = f"1.2.826.0.1.3680043.10.{uuid.uuid4().int % 10**12}"
    now = utcnow()
    findings = [
        FindingResult("Pneumothorax", 0.93 if critical else 0.1, critical, 0.05, 0.5),
        FindingResult("Cardiomegaly", 0.2, False, 0.1, 0.5),
    ]
    summary = {
        "alias": "cxr-default",
        "instances": [
            {
                "path": "/data/x.dcm",
                "ok": True,
                "error": None,
                "model": {"name": "cxr-default", "version": "1.0.0", "sha256": "ab" * 32},
                "findings": [f.to_dict() for f in findings],
            }
        ],
        "sop_instance_uids": [uid + ".1"],
    }
    with service.database.session() as session:
        session.add(
            Study(
                study_instance_uid=uid,
                state=StudyState.ROUTED.value,
                instance_count=1,
                first_instance_at=now,
                last_instance_at=now,
                completed_at=now,
                complete_reason="explicit",
            )
        )
        result = Result(
            job_id=1,
            study_instance_uid=uid,
            model_name="cxr-default",
            model_version="1.0.0",
            summary=summary,
            artifacts=[],
            created_at=now,
        )
        session.add(result)
        session.flush()
        item = upsert_study(
            session,
            uid,
            findings,
            StudyContext(department="ED", patient_age=81.0, received_at=now - timedelta(hours=1)),
            service.triage,
            now=now,
            sop_instance_uid=uid + ".1",
            path="/data/x.dcm",
            patient_id=PATIENT_ID,
            model_name="cxr-default",
            model_version="1.0.0",
        )
        alerts = raise_alerts(session, item, service.triage, now=now)
        return uid, alerts[0].id if alerts else 0, result.id


def write_chest_dx(path: Path, *, study_uid: str, size: int = 256, seed: int = 0) -> Path:
    """A small complete chest DX (16-bit, MONOCHROME2) of the PHI test patient."""
    from .ui_support import write_dx

    return write_dx(
        path,
        study_uid=study_uid,
        patient_name=PATIENT_NAME,
        patient_id=PATIENT_ID,
        accession="ACC-PHI-7",
        birth_date="19450101",
        age="081Y",
        size=size,
        seed=seed,
    )


def make_gateway(data_dir: Path, database_url: str, **overrides: object) -> Gateway:
    """A :class:`Gateway` on ``database_url`` that listens on nothing and runs no workers."""
    settings = Settings(data_dir=data_dir, database_url=database_url)
    values: dict[str, object] = {
        "dicom_port": 0,
        "dicom_host": "127.0.0.1",
        "http_port": None,
        "workers": 0,
    }
    values.update(overrides)
    return Gateway(
        service_config(settings, **values),
        with_scp=False,
        with_http=False,
        registry=Registry(data_dir / "models"),
        triage_interval=None,
    )


#: The roles whose test users also have a password (Argon2 hashing is slow on purpose).
PASSWORD_ROLES = (Role.RADIOLOGIST, Role.ADMIN)


def tokens_for_every_role(service: Gateway) -> dict[Role, str]:
    """One user and one API token per role; radiologist and admin have a password too."""
    tokens: dict[Role, str] = {}
    with service.database.session() as session:
        for role in Role:
            name = f"{role.value}-user"
            password = PASSWORD if role in PASSWORD_ROLES else None
            add_user(session, name, role, password=password, actor="tests")
            tokens[role], _ = issue_token(session, name, actor="tests")
    return tokens


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def api_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """SQLite in a temp dir, or emptied tables in this module's PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'overread.db'}"
    url: str = request.getfixturevalue("postgres_module_url")
    request.getfixturevalue("drop_every_table")(url)
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLite in a temp dir."""
    return f"sqlite:///{tmp_path / 'overread.db'}"


def _gateway(tmp_path: Path, url: str) -> Iterator[ApiGateway]:
    service = make_gateway(tmp_path / "data", url)
    app = create_app(service)
    tokens = tokens_for_every_role(service)
    uid, alert_id, result_id = seed_study(service)
    try:
        with TestClient(app) as client:
            yield ApiGateway(service, app, client, tokens, uid, alert_id, result_id)
    finally:
        service.database.dispose()


@pytest.fixture
def gateway(tmp_path: Path, sqlite_url: str) -> Iterator[ApiGateway]:
    """The API of a gateway on SQLite, with users of every role and one seeded study."""
    yield from _gateway(tmp_path, sqlite_url)


@pytest.fixture
def gateway_any_db(tmp_path: Path, api_database_url: str) -> Iterator[ApiGateway]:
    """:func:`gateway` on SQLite and on PostgreSQL."""
    yield from _gateway(tmp_path, api_database_url)


@pytest.fixture
def make_gateway_service(
    start_gateway: Callable[..., Gateway], tmp_path: Path
) -> Callable[..., Gateway]:
    """Start full gateways (SCP and HTTP on free ports, workers) in-process."""

    def _make(artifacts: bool = False, **overrides: object) -> Gateway:
        options = {
            "registry": Registry(tmp_path / "models"),
            "artifacts": artifacts,
            "triage_interval": None,
        }
        return start_gateway(service_options=options, **overrides)

    return _make


def stow_body(data: bytes) -> tuple[str, bytes]:
    """A STOW-RS request of one instance: its Content-Type and body."""
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


def wait_for(fetch: Callable[[], Any], timeout: float = 120.0) -> Any:
    """Poll ``fetch`` until it returns something truthy; return that (fail on timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError("timed out")


__all__ = [
    "PASSWORD",
    "PATIENT_ID",
    "PATIENT_NAME",
    "ApiGateway",
    "TriageConfig",
    "make_gateway",
    "seed_study",
    "stow_body",
    "tokens_for_every_role",
    "wait_for",
    "write_chest_dx",
]
