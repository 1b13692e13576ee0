"""STOW-RS as an export destination: its settings, its payload, and its exporter
against a real STOW-RS receiver (a second gateway that wants a bearer token)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from overread.audit.schema import AuditEvent
from overread.config import Settings
from overread.errors import ConfigError
from overread.gateway import Gateway
from overread.service.config import StowEndpoint, service_config
from overread.service.db import Database, Instance, Job, JobKind, Result
from overread.service.exporters import Exporters
from overread.service.handling import JobServices, PermanentExportError
from overread.service.jobs import JobQueue
from overread.service.outputs import DeliveryError
from overread.service.payloads import StowExportPayload, export_payload
from overread.service.store import ObjectStore

from .conftest import api_token, free_port


def test_stow_endpoints_from_the_command_line_and_the_configuration_file(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    config = service_config(
        settings, stow_endpoints=["http://127.0.0.1:8042/dicom-web", "vna=https://vna.example/dw"]
    )
    assert [(e.name, e.url) for e in config.stow_endpoints] == [
        ("stow", "http://127.0.0.1:8042/dicom-web"),
        ("vna", "https://vna.example/dw"),
    ]
    table = Settings(
        data_dir=tmp_path,
        service={
            "stow_endpoints": [
                {"name": "vna", "url": "https://vna.example/dw", "username": "u", "password": "p"}
            ]
        },
    )
    [endpoint] = service_config(table).stow_endpoints
    assert endpoint.password is not None and endpoint.password.get_secret_value() == "p"
    assert "p" not in repr(endpoint.password) and str(endpoint) == "vna=https://vna.example/dw"
    with pytest.raises(ConfigError, match="STOW-RS endpoint"):
        service_config(settings, stow_endpoints=["ftp://nowhere"])
    with pytest.raises(ConfigError, match="unique"):
        service_config(settings, stow_endpoints=["a=http://x/dw", "a=http://y/dw"])
    with pytest.raises(ValueError, match="not both"):
        StowEndpoint(url="http://x/dw", username="u", password="p", bearer_token="t")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="both username and password"):
        StowEndpoint(url="http://x/dw", username="u")


def test_the_payload_names_the_endpoint_not_its_secrets() -> None:
    payload = StowExportPayload("vna", 7)
    assert payload.to_dict() == {"stow_endpoint": "vna", "result_id": 7}
    assert export_payload(payload.to_dict()) == payload


def _services(tmp_path: Path, endpoints: list[Any]) -> JobServices:
    database = Database(f"sqlite:///{tmp_path / 'sender.db'}")
    config = service_config(Settings(data_dir=tmp_path / "sender"), stow_endpoints=endpoints)
    store = ObjectStore(tmp_path / "store", fsync=False)
    return JobServices(config, database, store, JobQueue(database), "w1")


def _job_for(services: JobServices, path: Path, endpoint: str) -> tuple[Job, StowExportPayload]:
    stored = services.store.put(path.read_bytes())
    with services.database.session() as session:
        result = Result(
            job_id=1,
            study_instance_uid="1.2.3",
            model_name="cxr-default",
            model_version=endpoint,  # one result per job
            summary={},
            artifacts=[{"key": stored.key, "sop_instance_uid": "1.2.3.4"}],
        )
        session.add(result)
        session.flush()
        result_id = result.id
    services.queue.enqueue(
        study_instance_uid="1.2.3",
        model_name="cxr-default",
        model_version=endpoint,
        kind=JobKind.EXPORT,
        destination=f"stow:{endpoint}",
    )
    job = services.queue.claim("w1", lease_seconds=60)
    assert job is not None
    return job, StowExportPayload(endpoint, result_id)


def _attempts(services: JobServices) -> list[dict[str, Any]]:
    with services.database.session() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "export").order_by(AuditEvent.seq)
        ).all()
        return [dict(r.details) for r in rows]


@pytest.mark.service
def test_a_result_is_stored_on_a_stow_rs_receiver_with_a_bearer_token(
    tmp_path: Path, make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    receiver = make_service(workers=0)
    token = api_token(receiver, "service")
    url = f"http://127.0.0.1:{receiver.http_port}/dicom-web"
    services = _services(
        tmp_path,
        [
            {"name": "good", "url": url, "bearer_token": token},
            {"name": "stale", "url": url, "bearer_token": "ovr_not-a-token"},
            {"name": "down", "url": f"http://127.0.0.1:{free_port()}/dicom-web"},
        ],
    )
    exporters = Exporters(services)
    path = dx_factory(size=64)
    job, payload = _job_for(services, path, "good")
    exporters.export(job, payload)
    with receiver.database.session() as session:
        received = session.scalars(select(Instance.calling_ae)).all()
    assert received == ["STOW-RS"]
    with services.database.session() as session:
        assert session.get(Job, job.id).state == "succeeded"  # type: ignore[union-attr]
    sending, stored = _attempts(services)
    assert (sending["outcome"], stored["outcome"]) == ("sending", "stored")
    assert stored["destination_kind"] == "stow-rs" and stored["status_code"] == 200
    assert token not in str(stored)

    job, payload = _job_for(services, path, "stale")
    with pytest.raises(PermanentExportError, match="401"):  # refused for good: dead-lettered
        exporters.export(job, payload)
    assert _attempts(services)[-1]["status_code"] == 401

    job, payload = _job_for(services, path, "down")
    with pytest.raises(DeliveryError, match="could not be reached") as raised:
        exporters.export(job, payload)
    assert raised.value.retryable and not isinstance(raised.value, PermanentExportError)

    job, payload = _job_for(services, path, "gone")
    with pytest.raises(PermanentExportError, match="no longer configured"):
        exporters.export(job, payload)
