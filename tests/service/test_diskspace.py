"""Disk-space watermarks: new data is refused before the disk is full (C-STORE 0xA700,
STOW-RS 507), audited, shown on /metrics, and accepted again once there is room."""

from __future__ import annotations

import logging
import os
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from pynetdicom import AE
from sqlalchemy import select

from overread.audit import AuditAction, verify_chain
from overread.audit.schema import AuditEvent
from overread.gateway import Gateway
from overread.service import diskspace
from overread.service.db import Instance
from overread.service.diskspace import DiskGuard, DiskSpace, InsufficientStorageError, disk_space

from .conftest import api_token, bearer, needs_dcmtk

GIB = 1024**3
#: A watermark above any real disk's free space.
ABOVE_ANY_DISK = 10**18


def _guard(free: int, total: int = 100 * GIB, **watermarks: float) -> DiskGuard:
    return DiskGuard(Path("."), measure=lambda _path: DiskSpace(free, total), **watermarks)  # type: ignore[arg-type]


def test_refuses_under_either_watermark_and_zero_switches_one_off() -> None:
    assert _guard(2 * GIB, refuse_below_bytes=GIB, refuse_below_percent=1).refusal() is None
    by_bytes = _guard(GIB // 2, refuse_below_bytes=GIB).refusal()
    assert by_bytes is not None and "disk nearly full: 0.5 GiB free (0.5 %)" in by_bytes
    by_percent = _guard(2 * GIB, refuse_below_percent=5).refusal()
    assert by_percent is not None and "5 %" in by_percent
    assert _guard(0, refuse_below_bytes=0, refuse_below_percent=0).refusal() is None
    with pytest.raises(InsufficientStorageError, match="refuse watermark"):
        _guard(GIB // 2, refuse_below_bytes=GIB).check()


def test_the_warning_watermark_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    guard = _guard(3 * GIB, warn_below_bytes=5 * GIB, refuse_below_bytes=GIB)
    with caplog.at_level(logging.WARNING, logger="overread.service.diskspace"):
        assert guard.refusal() is None and guard.refusal() is None
    warnings = [r for r in caplog.records if "getting full" in r.getMessage()]
    assert len(warnings) == 1 and "3.0 GiB free" in warnings[0].getMessage()


def test_the_reading_is_reused_for_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    clock = [1000.0]
    monkeypatch.setattr(diskspace.time, "monotonic", lambda: clock[0])

    def measure(path: Path) -> DiskSpace:
        calls.append(path)
        return DiskSpace(GIB, 10 * GIB)

    guard = DiskGuard(Path("."), refuse_below_bytes=1, measure=measure)
    for _ in range(100):
        guard.refusal()
    assert len(calls) == 1
    clock[0] += diskspace.CACHE_SECONDS
    guard.refusal()
    assert len(calls) == 2


def test_disk_space_is_the_file_systems() -> None:
    space = disk_space(Path("."))
    stats = os.statvfs(".")
    assert space.total_bytes == stats.f_blocks * stats.f_frsize
    assert 0 < space.free_bytes <= space.total_bytes


def _refusals(service: Gateway) -> list[AuditEvent]:
    with service.database.session() as session:
        events = list(
            session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action == AuditAction.RECEIVE_REFUSED.value)
                .order_by(AuditEvent.seq)
            ).all()
        )
        session.expunge_all()
    return events


def _instances(service: Gateway) -> int:
    with service.database.session() as session:
        return len(session.scalars(select(Instance)).all())


def _c_store(port: int, path: Path) -> int:
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="OVERREAD")
    assert assoc.is_established
    status = int(assoc.send_c_store(path).Status)
    assoc.release()
    return status


def _storescu(port: int, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "storescu",
            "-v",
            "-aet",
            "MODALITY",
            "-aec",
            "OVERREAD",
            "127.0.0.1",
            str(port),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.service
@needs_dcmtk
def test_c_store_is_refused_under_the_watermark_then_accepted(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    service = make_service(
        workers=0, public_metrics=True, retention={"disk_refuse_below_bytes": ABOVE_ANY_DISK}
    )
    port = service.dicom_port
    assert port is not None
    objects_before = sorted(p for p in service.store.root.rglob("*") if p.is_file())

    assert _c_store(port, dx_factory()) == 0xA700
    dcmtk = _storescu(port, dx_factory())
    # DCMTK names the 0xA7xx class: "Received Store Response (Refused: OutOfResources)".
    assert "refused: outofresources" in (dcmtk.stdout + dcmtk.stderr).lower()
    assert _instances(service) == 0
    assert sorted(p for p in service.store.root.rglob("*") if p.is_file()) == objects_before
    refused = _refusals(service)
    assert len(refused) == 2
    for event in refused:
        assert event.actor == "ae:MODALITY" and event.details["status"] == "0xA700"
        assert "disk nearly full" in event.details["reason"]
    metrics = {
        s.name: s.value
        for family in text_string_to_metric_families(
            httpx.get(f"http://127.0.0.1:{service.http_port}/metrics", timeout=10).text
        )
        for s in family.samples
    }
    assert metrics["overread_disk_refusing"] == 1.0
    assert 0 < metrics["overread_disk_free_bytes"] <= metrics["overread_disk_size_bytes"]

    service.disk.refuse_below_bytes = 0
    service.disk.refuse_below_percent = 0.0
    assert _c_store(port, dx_factory()) == 0x0000
    assert _storescu(port, dx_factory()).returncode == 0
    assert _instances(service) == 2 and len(_refusals(service)) == 2
    assert verify_chain(service.database.engine).ok


def _multipart(data: bytes) -> tuple[str, bytes]:
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return f'multipart/related; type="application/dicom"; boundary={boundary}', body


@pytest.mark.service
def test_stow_rs_answers_507_under_the_watermark_then_stores(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    service = make_service(workers=0, retention={"disk_refuse_below_percent": 100.0})
    content_type, body = _multipart(dx_factory().read_bytes())
    headers = {"Content-Type": content_type, **bearer(api_token(service, "technologist"))}
    url = f"http://127.0.0.1:{service.http_port}/dicom-web/studies"

    refused = httpx.post(url, content=body, headers=headers, timeout=30)

    assert refused.status_code == 507 and "disk nearly full" in refused.json()["detail"]
    assert _instances(service) == 0
    assert not list((Path(service.config.data_dir) / "tmp").glob("stow-*"))
    (event,) = _refusals(service)
    assert event.details["status"] == 507 and event.details["via_http"] == "stow-rs"
    assert "disk nearly full" in event.details["reason"]

    service.disk.refuse_below_percent = 0.0
    service.disk.refuse_below_bytes = 0
    stored = httpx.post(url, content=body, headers=headers, timeout=30)
    assert stored.status_code == 200 and _instances(service) == 1
    assert verify_chain(service.database.engine).ok
