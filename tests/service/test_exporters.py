"""Exporters audit every attempt, also those that fail before anything is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from overread.audit.schema import AuditEvent
from overread.config import Settings
from overread.errors import InferenceError
from overread.service.config import Destination, service_config
from overread.service.db import Database, Job, JobKind, Result
from overread.service.exporters import Exporters
from overread.service.handling import JobServices, PermanentExportError
from overread.service.jobs import JobQueue
from overread.service.payloads import DicomExportPayload, FhirExportPayload
from overread.service.store import ObjectStore

PACS = Destination(name="PACS", ae_title="PACSAE", host="127.0.0.1", port=11112)


@pytest.fixture
def services(tmp_path: Path) -> JobServices:
    database = Database(f"sqlite:///{tmp_path / 'overread.db'}")
    config = service_config(
        Settings(data_dir=tmp_path / "data"), fhir_endpoints=["http://127.0.0.1:9/fhir"]
    )
    store = ObjectStore(tmp_path / "store", fsync=False)
    return JobServices(config, database, store, JobQueue(database), "w1")


def _job(services: JobServices, destination: str) -> Job:
    services.queue.enqueue(
        study_instance_uid="1.2.3",
        model_name="cxr-default",
        model_version="1.0.0",
        kind=JobKind.EXPORT,
        destination=destination,
    )
    job = services.queue.claim("w1", lease_seconds=60)
    assert job is not None
    return job


def _result(services: JobServices, artifacts: list[dict[str, Any]], summary: Any = None) -> int:
    with services.database.session() as session:
        result = Result(
            job_id=1,
            study_instance_uid="1.2.3",
            model_name="cxr-default",
            model_version="1.0.0",
            summary=summary or {},
            artifacts=artifacts,
        )
        session.add(result)
        session.flush()
        return result.id


def _exports(services: JobServices) -> list[tuple[list[str], dict[str, Any]]]:
    with services.database.session() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "export").order_by(AuditEvent.seq)
        ).all()
        return [(list(r.object_uids), dict(r.details)) for r in rows]


def _failed(kind: str, destination: str, error: str, **counts: object) -> dict[str, Any]:
    return {
        "job_id": 1,
        "attempt": 1,
        "destination_kind": kind,
        "destination": destination,
        **counts,
        "outcome": "failed",
        "seconds": 0.0,
        "error": error,
    }


def test_a_dicom_export_of_a_vanished_result_is_audited(services: JobServices) -> None:
    job = _job(services, "PACS")
    with pytest.raises(InferenceError, match="result 42 no longer exists"):
        Exporters(services).export(job, DicomExportPayload(PACS, 42))
    error = "result 42 no longer exists"
    assert _exports(services) == [
        (["1.2.3"], _failed("dicom", str(PACS), error, objects=0, statuses=[]))
    ]


def test_a_dicom_export_with_missing_stored_objects_is_audited(services: JobServices) -> None:
    result_id = _result(services, [{"key": "ab/" + "c" * 62, "sop_instance_uid": "1.2.3.9"}])
    job = _job(services, "PACS")
    with pytest.raises(InferenceError, match="stored result object"):
        Exporters(services).export(job, DicomExportPayload(PACS, result_id))
    [(uids, details)] = _exports(services)
    assert uids == ["1.2.3", "1.2.3.9"]
    assert details["outcome"] == "failed" and details["objects"] == 1
    assert details["error"].startswith("stored result object(s) missing: ")


def test_a_fhir_export_to_an_endpoint_no_longer_configured_is_audited(
    services: JobServices,
) -> None:
    job = _job(services, "fhir:gone")
    with pytest.raises(PermanentExportError, match="'gone' is no longer configured"):
        Exporters(services).export(job, FhirExportPayload("gone", 1))
    error = "FHIR endpoint 'gone' is no longer configured"
    assert _exports(services) == [
        (["1.2.3"], _failed("fhir", "gone", error, resources=0, status_code=None))
    ]


def test_a_fhir_export_whose_report_cannot_be_built_is_audited(services: JobServices) -> None:
    result_id = _result(services, [], summary={"instances": []})
    job = _job(services, "fhir:fhir")
    with pytest.raises(PermanentExportError, match=f"no FHIR report for result {result_id}"):
        Exporters(services).export(job, FhirExportPayload("fhir", result_id))
    [(uids, details)] = _exports(services)
    assert uids == ["1.2.3"]
    assert details["outcome"] == "failed" and details["status_code"] is None
    assert details["destination"] == "fhir=http://127.0.0.1:9/fhir"
    assert details["error"].startswith(f"no FHIR report for result {result_id}: ")


def test_a_payload_of_no_known_kind_is_refused_not_dropped(services: JobServices) -> None:
    job = _job(services, "PACS")
    with pytest.raises(AssertionError):
        Exporters(services).export(job, {"result_id": 1})  # type: ignore[arg-type]
    assert _exports(services) == []
