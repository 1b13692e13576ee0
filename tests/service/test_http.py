"""The HTTP API: STOW-RS ingest into the same durable store as C-STORE, and health."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.audit import AuditAction
from overread.audit.schema import AuditEvent
from overread.gateway import Gateway
from overread.service.db import Instance, Study
from overread.service.stow import split_multipart

from .conftest import api_token, bearer

pytestmark = pytest.mark.service


def _multipart(parts: list[tuple[str, bytes]]) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        b"--"
        + boundary.encode()
        + b"\r\nContent-Type: "
        + ctype.encode()
        + b"\r\n\r\n"
        + data
        + b"\r\n"
        for ctype, data in parts
    )
    body += b"--" + boundary.encode() + b"--\r\n"
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


def test_split_multipart_keeps_binary_parts_intact() -> None:
    payload = bytes(range(256)) * 10 + b"\r\n\r\n--not-the-boundary\r\n"
    content_type, body = _multipart([("application/dicom", payload), ("text/plain", b"x")])
    assert split_multipart(content_type, body) == [
        ("application/dicom", payload),
        ("text/plain", b"x"),
    ]


def test_stow_rs_stores_good_parts_and_reports_bad_ones(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    service = make_service(workers=0)
    auth = bearer(api_token(service, "service"))
    study = generate_uid()
    good = [dx_factory(study_uid=study) for _ in range(2)]
    content_type, body = _multipart(
        [("application/dicom", p.read_bytes()) for p in good] + [("application/dicom", b"garbage")]
    )
    base = f"http://127.0.0.1:{service.http_port}/dicom-web"
    # STOW-RS needs credentials and the ingest permission: nothing is stored otherwise.
    for headers, status in [({}, 401), (bearer(api_token(service, "radiologist")), 403)]:
        reply = httpx.post(
            f"{base}/studies",
            content=body,
            headers={"Content-Type": content_type, **headers},
            timeout=30,
        )
        assert reply.status_code == status
    with service.database.session() as session:
        assert session.scalars(select(Instance)).all() == []
    reply = httpx.post(
        f"{base}/studies", content=body, headers={"Content-Type": content_type, **auth}, timeout=30
    )
    assert reply.status_code == 202  # some stored, some failed
    data = reply.json()
    stored = {item["00081155"]["Value"][0] for item in data["00081199"]["Value"]}
    assert stored == {str(pydicom.dcmread(p).SOPInstanceUID) for p in good}
    assert [item["00081197"]["Value"][0] for item in data["00081198"]["Value"]] == [0xC000]
    with service.database.session() as session:
        rows = session.scalars(select(Instance)).all()
        assert {r.calling_ae for r in rows} == {"STOW-RS"} and len(rows) == 2
        # The request's end counts as a release: the chest study completes at once.
        assert session.scalar(select(Study.complete_reason)) == "association-released"

    other = dx_factory()  # another study, posted to this study's URL
    content_type, body = _multipart([("application/dicom", other.read_bytes())])
    reply = httpx.post(
        f"{base}/studies/{study}",
        content=body,
        headers={"Content-Type": content_type, **auth},
        timeout=30,
    )
    assert reply.status_code == 409
    assert reply.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    # Each refused part is audited with what was wrong.
    with service.database.session() as session:
        refused = session.scalars(
            select(AuditEvent)
            .where(
                AuditEvent.action == AuditAction.RECEIVE_REFUSED.value,
                AuditEvent.actor == "ae:STOW-RS",
            )
            .order_by(AuditEvent.seq)
        ).all()
        assert [(e.actor, e.details["status"]) for e in refused] == [
            ("ae:STOW-RS", "0xC000"),
            ("ae:STOW-RS", "0xA900"),
        ]
        assert "another study" in refused[1].details["reason"]
        assert refused[1].object_uids == [str(pydicom.dcmread(other).SOPInstanceUID)]

    reply = httpx.post(
        f"{base}/studies",
        content=b"{}",
        headers={"Content-Type": "application/json", **auth},
        timeout=30,
    )
    assert reply.status_code == 415
    # An empty or garbage multipart body stores nothing: 400, never 200 {}.
    for content_type, body in [
        ('multipart/related; type="application/dicom"; boundary=abc', b""),
        ('multipart/related; type="application/dicom"; boundary=abc', b"garbage" * 100),
        ('multipart/related; type="application/dicom"', b"--abc\r\n\r\nx\r\n--abc--"),
    ]:
        reply = httpx.post(
            f"{base}/studies",
            content=body,
            headers={"Content-Type": content_type, **auth},
            timeout=30,
        )
        assert reply.status_code == 400, (body[:20], reply.text)
    with service.database.session() as session:
        requests = session.scalars(
            select(AuditEvent)
            .where(AuditEvent.details["via_http"].as_string() == "stow-rs")
            .order_by(AuditEvent.seq)
        ).all()
        # One event per request, named for what happened to it.
        assert [(e.action, e.details["status"]) for e in requests] == [
            ("receive", 202),
            ("receive-refused", 409),
            ("receive-refused", 415),
            ("receive-refused", 400),
            ("receive-refused", 400),
            ("receive-refused", 400),
        ]


def test_health_reports_an_unreachable_database(make_service: Callable[..., Gateway]) -> None:
    from overread.service.db import Database

    service = make_service(workers=0)
    url = f"http://127.0.0.1:{service.http_port}/health"
    assert httpx.get(url, timeout=10).status_code == 200
    service.queue.database = Database(
        "sqlite:////nonexistent-dir/for/sure/overread.db", create=False
    )
    reply = httpx.get(url, timeout=10)
    assert reply.status_code == 503 and "database unavailable" in reply.json()["detail"]


def test_health_needs_no_credentials_and_carries_no_patient_data(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    service = make_service(workers=0, destinations=["PACS=PACSAE@127.0.0.1:104"])
    image = dx_factory()
    content_type, body = _multipart([("application/dicom", image.read_bytes())])
    auth = bearer(api_token(service, "technologist"))
    base = f"http://127.0.0.1:{service.http_port}"
    stored = httpx.post(
        f"{base}/dicom-web/studies",
        content=body,
        headers={"Content-Type": content_type, **auth},
        timeout=30,
    )
    assert stored.status_code == 200
    health = httpx.get(f"{base}/health", timeout=10)
    assert health.status_code == 200 and set(health.json()) == {
        "status",
        "version",
        "ae_title",
        "dicom_port",
        "jobs",
    }
    for phi in ("SVC001", "Service", "ACC1", str(pydicom.dcmread(image).StudyInstanceUID)):
        assert phi not in health.text
    # A signed-in caller also sees each destination's health (no patient data either).
    signed_in = httpx.get(f"{base}/health", headers=auth, timeout=10)
    assert signed_in.status_code == 200
    (pacs,) = signed_in.json()["destinations"]
    assert (pacs["name"], pacs["state"], pacs["queued"]) == ("PACS", "up", 0)
    for phi in ("SVC001", "Service", "ACC1"):
        assert phi not in signed_in.text


def test_multipart_parts_are_found_in_a_memory_map_as_in_bytes(tmp_path: Path) -> None:
    import mmap

    from overread.service.stow import iter_multipart

    payload = bytes(range(256)) * 50 + b"\r\n--almost-the-boundary\r\n"
    content_type, body = _multipart([("application/dicom", payload), ("text/plain", b"x")])
    spooled = tmp_path / "body"
    spooled.write_bytes(body)
    with (
        spooled.open("rb") as handle,
        mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as view,
    ):
        assert list(iter_multipart(content_type, view)) == split_multipart(content_type, body)
    assert split_multipart(content_type, body) == [
        ("application/dicom", payload),
        ("text/plain", b"x"),
    ]


def test_stow_rs_on_a_failing_disk_is_refused_out_of_resources_never_500(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    service = make_service(workers=0)
    auth = bearer(api_token(service, "service"))
    image = dx_factory()
    content_type, body = _multipart([("application/dicom", image.read_bytes())])
    url = f"http://127.0.0.1:{service.http_port}/dicom-web/studies"
    data_dir = Path(service.config.data_dir)
    # The spool folder and the object store replaced by plain files: every write under
    # them fails with an OSError, as on a full disk (even for root).
    spool = data_dir / "tmp"
    if spool.exists():
        spool.rmdir()
    spool.write_bytes(b"")
    reply = httpx.post(
        url, content=body, headers={"Content-Type": content_type, **auth}, timeout=30
    )
    assert reply.status_code == 409  # not 500: the sender may try again later
    assert reply.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
    # The body spools, the instance cannot be written: refused per instance, 0xA700.
    spool.unlink()
    objects = service.store.root
    away = objects.with_name("objects-away")
    objects.rename(away)
    objects.write_bytes(b"")
    reply = httpx.post(
        url, content=body, headers={"Content-Type": content_type, **auth}, timeout=30
    )
    assert reply.status_code == 409
    assert reply.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA700]
    with service.database.session() as session:
        assert session.scalars(select(Instance)).all() == []
        refused = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.RECEIVE_REFUSED.value)
        ).all()
        assert len(refused) >= 2  # each refusal audited (the request, and the part)
    # The disk frees: the same request is stored, without a restart.
    objects.unlink()
    away.rename(objects)
    reply = httpx.post(
        url, content=body, headers={"Content-Type": content_type, **auth}, timeout=30
    )
    assert reply.status_code == 200
    with service.database.session() as session:
        assert [r.sop_instance_uid for r in session.scalars(select(Instance))] == [
            str(pydicom.dcmread(image).SOPInstanceUID)
        ]
