"""FHIR out of the gateway: each result is posted to a FHIR server as an export job.

The FHIR server is a real HTTP server on a free loopback port that records every body
and answers with scripted statuses; bodies are validated with fhir.resources.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from sqlalchemy import select

from overread.audit.schema import AuditEvent
from overread.config import Settings
from overread.service.config import service_config
from overread.service.db import Job, Result
from overread.service.outputs import ResultNotFoundError, fhir_report_for_study

from .conftest import make_dx, needs_dcmtk, wait_until

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")


class FhirSink:
    """A FHIR "server" that stores bundles once it stops failing."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = list(statuses)  # answers before the first 200
        self.requests: list[dict[str, Any]] = []
        self.stored: list[dict[str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                sink.requests.append({"path": self.path, "headers": dict(self.headers)})
                status = sink.statuses.pop(0) if sink.statuses else 200
                if status == 200:
                    sink.stored.append(body)
                    answer = {"resourceType": "Bundle", "type": "transaction-response"}
                else:
                    answer = {"resourceType": "OperationOutcome", "issue": []}
                payload = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/fhir+json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir/r4"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    from overread.gateway import Gateway

    services: list[Gateway] = []

    def start(**overrides: object) -> Gateway:
        values: dict[str, object] = {
            "dicom_port": 0,
            "dicom_host": "127.0.0.1",
            "http_port": 0,
            "workers": 1,
            "poll_seconds": 0.1,
            "retry_base_seconds": 0.1,
        }
        values.update(overrides)
        service = Gateway(service_config(Settings(data_dir=tmp_path / "data"), **values))
        service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        service.stop(timeout=10)


def _send(port: int, *files: Path) -> None:
    done = subprocess.run(
        ["storescu", "-aet", "MODALITY", "-aec", "OVERREAD", "127.0.0.1", str(port)]
        + [str(f) for f in files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr


def _fhir_job(service: Any) -> Job | None:
    with service.database.session() as session:
        return session.scalar(select(Job).where(Job.destination.like("fhir:%")))


def _fhir_audits(service: Any) -> list[dict[str, Any]]:
    with service.database.session() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "export").order_by(AuditEvent.seq)
        ).all()
        fhir = [r.details for r in rows if r.details.get("destination_kind") == "fhir"]
        # Every attempt is announced before the POST; the outcomes follow.
        assert all(
            a["outcome"] == "sending" and b["outcome"] != "sending"
            for a, b in zip(fhir[::2], fhir[1::2], strict=True)
        )
        return [d for d in fhir if d["outcome"] != "sending"]


def test_report_is_posted_once_after_two_failures_and_validates(
    gateway: Callable[..., Any], tmp_path: Path
) -> None:
    sink = FhirSink([503, 500])
    try:
        endpoint = {
            "name": "ehr",
            "url": sink.url,
            "bearer_token": "s3cret",
            "headers": {"X-Site": "north"},
        }
        service = gateway(fhir_endpoints=[endpoint])
        image = make_dx(tmp_path / "dx.dcm", size=256)
        _send(service.dicom_port, image)
        wait_until(lambda: (j := _fhir_job(service)) is not None and j.state == "succeeded")
        job = _fhir_job(service)
        assert job is not None and job.attempts == 3 and job.destination == "fhir:ehr"
        assert "s3cret" not in json.dumps(job.payload)  # the token stays in the config

        assert len(sink.requests) == 3 and len(sink.stored) == 1
        assert sink.requests[0]["path"] == "/fhir/r4"
        assert sink.requests[0]["headers"]["Authorization"] == "Bearer s3cret"
        assert sink.requests[0]["headers"]["X-Site"] == "north"
        bundle = Bundle.model_validate(sink.stored[0])
        assert bundle.type == "transaction"
        resources = [e.resource for e in bundle.entry]
        kinds = [r.__resource_type__ for r in resources]
        assert kinds.count("DiagnosticReport") == 1 and kinds.count("Device") == 1
        assert kinds.count("Observation") == 14
        report = next(r for r in resources if r.__resource_type__ == "DiagnosticReport")
        study_uid = str(make_dx_header(image).StudyInstanceUID)
        assert report.imagingStudy[0].identifier.value == f"urn:oid:{study_uid}"
        assert report.subject.identifier.value == "SVC001"

        audits = _fhir_audits(service)
        assert [(a["outcome"], a["status_code"]) for a in audits] == [
            ("failed", 503),
            ("failed", 500),
            ("stored", 200),
        ]
        assert all(a["seconds"] >= 0 for a in audits)

        # The same report, rebuilt from the stored result for the REST API.
        with service.database.session() as session:
            again = fhir_report_for_study(session, study_uid)
            with pytest.raises(ResultNotFoundError, match="no stored result"):
                fhir_report_for_study(session, "1.2.3.4")
            [result] = session.scalars(select(Result)).all()
        Bundle.model_validate(again)
        rebuilt = next(
            e["resource"] for e in again["entry"] if e["resource"]["resourceType"] == "Observation"
        )
        posted = next(
            e["resource"]
            for e in sink.stored[0]["entry"]
            if e["resource"]["resourceType"] == "Observation"
        )
        assert rebuilt["valueQuantity"] == posted["valueQuantity"]
        sr_uid = next(a["sop_instance_uid"] for a in result.artifacts)
        report_json = next(
            e["resource"]
            for e in again["entry"]
            if e["resource"]["resourceType"] == "DiagnosticReport"
        )
        assert report_json["identifier"][0]["value"] == f"urn:oid:{sr_uid}"
    finally:
        sink.close()


def test_a_permanent_refusal_is_dead_lettered_at_once(
    gateway: Callable[..., Any], tmp_path: Path
) -> None:
    sink = FhirSink([400, 400, 400])
    try:
        service = gateway(fhir_endpoints=[sink.url], max_attempts=5)
        _send(service.dicom_port, make_dx(tmp_path / "dx.dcm", size=256))
        wait_until(lambda: (j := _fhir_job(service)) is not None and j.state == "dead_lettered")
        job = _fhir_job(service)
        assert job is not None and job.attempts == 1 and "HTTP 400" in (job.error or "")
        assert job.destination == "fhir:fhir"
        assert sink.stored == [] and len(sink.requests) == 1
        assert [(a["outcome"], a["status_code"]) for a in _fhir_audits(service)] == [
            ("failed", 400)
        ]
    finally:
        sink.close()


def make_dx_header(path: Path) -> Any:
    import pydicom

    return pydicom.dcmread(path, stop_before_pixels=True)
