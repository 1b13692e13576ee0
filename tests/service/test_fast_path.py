"""The short path from the last image to the SR at the PACS, and studies that grow.

* the worker claims a completed study's job on the wake-up and sends the SR itself
  right after storing the result (no poll between them: the poll here is 60 s);
* a first send that fails becomes an ordinary export job that retries;
* the association to a destination is kept between sends (checked by C-ECHO, closed
  when idle or when the peer went away);
* images of a study that arrive after its result went out make the study be read
  again, and the new SR supersedes the one sent (Predecessor Documents Sequence).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.harness import storescu
from overread.service.db import Instance, Job, JobKind, Result
from overread.service.scu import AssociationPool

from .conftest import Storescp, job_states, make_dx, needs_dcmtk, wait_until

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")

#: A poll so long that any step waiting for it would exceed the waits below.
NO_POLL = {"poll_seconds": 60.0}


def _send(service: Any, *files: Path) -> None:
    storescu(service.dicom_port, list(files), called="OVERREAD", calling="MODALITY", timeout=60)


def _srs(storescp: Storescp) -> list[pydicom.Dataset]:
    found = []
    for path in storescp.files():
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # a file still being written
            continue
        if ds.get("Modality") == "SR":
            found.append(ds)
    return found


def _exporters(service: Any) -> Any:
    [worker] = service.pool.workers
    return worker.exporters


def test_the_sr_is_sent_by_the_worker_that_stored_it_without_a_poll(
    make_service: Callable[..., Any],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"], **NO_POLL)
    with caplog.at_level(logging.INFO, logger="overread.service.jobs"):
        _send(service, dx_factory(size=256))
        # Both the infer job (claimed on the wake-up) and the export (sent at once)
        # are done long before a 60 s poll could have run either.
        wait_until(lambda: job_states(service) == ["succeeded", "succeeded"], timeout=30)
    assert len(_srs(storescp)) == 1
    with service.database.session() as session:
        infer, export = session.scalars(select(Job).order_by(Job.id)).all()
    assert (infer.kind, export.kind) == (JobKind.INFER.value, JobKind.EXPORT.value)
    assert export.attempts == 1
    assert any(f"claimed export job {export.id} at once" in r.message for r in caplog.records)


def test_a_failed_first_send_is_retried_from_the_queue(
    make_service: Callable[..., Any], tmp_path: Path, dx_factory: Callable[..., Path]
) -> None:
    from overread.netutil import free_port

    port = free_port()
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{port}"], poll_seconds=0.2)
    _send(service, dx_factory(size=256))

    def export_failed() -> bool:
        with service.database.session() as session:
            job = session.scalar(select(Job).where(Job.kind == JobKind.EXPORT.value))
            # An attempt that failed records its error; "running" alone may be a first
            # attempt that has not connected yet, and would find the late PACS up.
            return job is not None and job.attempts >= 1 and job.error is not None

    wait_until(export_failed, timeout=60)
    pacs = Storescp(tmp_path / "late-pacs", port=port)
    try:
        wait_until(lambda: job_states(service) == ["succeeded", "succeeded"], timeout=60)
        assert len(_srs(pacs)) == 1
        with service.database.session() as session:
            export = session.scalar(select(Job).where(Job.kind == JobKind.EXPORT.value))
            assert export is not None and export.attempts >= 2
    finally:
        pacs.stop()


def test_two_studies_share_one_association_to_the_pacs(
    make_service: Callable[..., Any], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"], **NO_POLL)
    _send(service, dx_factory(size=256))
    wait_until(lambda: job_states(service) == ["succeeded"] * 2, timeout=30)
    _send(service, dx_factory(size=256))
    wait_until(lambda: job_states(service) == ["succeeded"] * 4, timeout=30)
    assert len(_srs(storescp)) == 2
    pool = _exporters(service).dicom_exporter.associations
    assert (pool.opened, pool.reused, pool.open_count) == (1, 1, 1)


def test_one_association_per_send_when_none_is_kept(
    make_service: Callable[..., Any], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
        association_idle_seconds=0,
        **NO_POLL,
    )
    _send(service, dx_factory(size=256))
    wait_until(lambda: job_states(service) == ["succeeded"] * 2, timeout=30)
    pool = _exporters(service).dicom_exporter.associations
    assert (pool.opened, pool.reused, pool.open_count) == (0, 0, 0)
    assert len(_srs(storescp)) == 1


def _sr_file(tmp_path: Path, name: str) -> Path:
    """A stored-format SR built from a DX's header (any DICOM file will do to send)."""
    path = make_dx(tmp_path / f"{name}.dcm", size=16)
    ds = pydicom.dcmread(path)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)
    return path


def test_the_pool_reuses_checks_and_closes_associations(tmp_path: Path) -> None:
    pacs = Storescp(tmp_path / "pacs")
    now = [0.0]
    pool = AssociationPool(idle_seconds=30, clock=lambda: now[0])
    target = {"ae_title": "PACSAE", "host": "127.0.0.1", "port": pacs.port}
    try:
        [first] = pool.send([_sr_file(tmp_path, "a")], **target)
        now[0] = 10.0
        [second] = pool.send([_sr_file(tmp_path, "b")], **target)
        assert first.ok and second.ok
        assert (pool.opened, pool.reused) == (1, 1)
        # Idle past the bound: released by the sweep, the next send opens another.
        now[0] = 45.0
        assert pool.close_idle() == 1 and pool.open_count == 0
        [third] = pool.send([_sr_file(tmp_path, "c")], **target)
        assert third.ok and pool.opened == 2
        # The peer went away (restarted): its C-ECHO fails and a new one is opened.
        port = pacs.port
        pacs.stop()
        pacs = Storescp(tmp_path / "pacs2", port=port)
        [fourth] = pool.send([_sr_file(tmp_path, "d")], **target)
        assert fourth.ok, fourth.error
        assert pool.opened == 3
        assert len(pacs.files()) == 1
    finally:
        pool.close()
        pacs.stop()


def test_images_after_the_result_supersede_it(
    make_service: Callable[..., Any],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    database_url: str,
) -> None:
    service = make_service(
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
        database_url=database_url,
        **NO_POLL,
    )
    study = generate_uid()
    first_image = dx_factory(study_uid=study, size=256)
    _send(service, first_image)  # completed on release: read and sent
    wait_until(lambda: len(_srs(storescp)) == 1, timeout=30)
    [old] = _srs(storescp)
    second_image = dx_factory(study_uid=study, size=256)
    _send(service, second_image)  # a second association of the same study
    wait_until(lambda: len(_srs(storescp)) == 2, timeout=60)
    # The same two jobs ran again; nothing was dropped or left queued.
    wait_until(lambda: job_states(service) == ["succeeded", "succeeded"], timeout=30)
    new = next(ds for ds in _srs(storescp) if ds.SOPInstanceUID != old.SOPInstanceUID)
    assert new.StudyInstanceUID == study
    [predecessor] = new.PredecessorDocumentsSequence
    [series] = predecessor.ReferencedSeriesSequence
    [sop] = series.ReferencedSOPSequence
    assert sop.ReferencedSOPInstanceUID == old.SOPInstanceUID
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        read = set(result.summary["sop_instance_uids"])
        superseded = [s["sop_instance_uid"] for s in result.summary["superseded"]]
        jobs = session.scalars(select(Job).order_by(Job.id)).all()
    assert read == {
        pydicom.dcmread(first_image).SOPInstanceUID,
        pydicom.dcmread(second_image).SOPInstanceUID,
    }
    assert superseded == [old.SOPInstanceUID]
    assert [j.kind for j in jobs] == ["infer", "export"]
    assert len(_srs(storescp)) == 2  # no third SR


def test_a_late_image_the_route_does_not_take_changes_nothing(
    make_service: Callable[..., Any],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"], **NO_POLL)
    study = generate_uid()
    _send(service, dx_factory(study_uid=study, size=256))
    wait_until(lambda: job_states(service) == ["succeeded"] * 2, timeout=30)
    other = dx_factory(study_uid=study, size=256)
    ds = pydicom.dcmread(other)
    ds.BodyPartExamined = "ABDOMEN"
    ds.save_as(other, enforce_file_format=True)
    with caplog.at_level(logging.INFO, logger="overread.service.infer"):
        _send(service, other)
        # The study was completed again and its job looked: nothing it reads is new.
        wait_until(
            lambda: any("already stored; not run again" in r.message for r in caplog.records),
            timeout=30,
        )
        wait_until(lambda: job_states(service) == ["succeeded"] * 2, timeout=30)
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert "superseded" not in result.summary
    assert len(_srs(storescp)) == 1


def test_a_send_waiting_to_open_gets_the_association_released(tmp_path: Path) -> None:
    """A peer that takes one association at a time (storescp without --fork) must not
    be held by a kept one while another send of this process waits to open its own."""
    pacs = Storescp(tmp_path / "pacs")
    pool = AssociationPool(idle_seconds=30)
    target = {"ae_title": "PACSAE", "host": "127.0.0.1", "port": pacs.port}
    key = ("PACSAE", "127.0.0.1", pacs.port, "OVERREAD")
    try:
        [first] = pool.send([_sr_file(tmp_path, "a")], **target)
        assert first.ok and pool.open_count == 1
        pool._opening[key] = 1  # another worker is opening one to this peer now
        [second] = pool.send([_sr_file(tmp_path, "b")], **target)
        assert second.ok and pool.reused == 1
        assert pool.open_count == 0  # released, not kept
        pool._opening[key] = 0
        [third] = pool.send([_sr_file(tmp_path, "c")], **target)
        assert third.ok and pool.opened == 2 and pool.open_count == 1
    finally:
        pool.close()
        pacs.stop()


def test_associations_are_kept_only_where_one_process_sends(tmp_path: Path) -> None:
    from overread.config import Settings
    from overread.service.config import service_config

    settings = Settings(data_dir=tmp_path / "data")
    assert service_config(settings).kept_association_seconds == 5.0
    broker = service_config(settings, broker_url="amqp://guest:guest@127.0.0.1:5672//")
    assert broker.kept_association_seconds == 0.0
    chosen = service_config(
        settings, broker_url="amqp://guest:guest@127.0.0.1:5672//", association_idle_seconds=20
    )
    assert chosen.kept_association_seconds == 20.0


def test_the_gateways_own_objects_coming_back_are_not_late_images() -> None:
    """A PACS that forwards the gateway's SR (or any report, SEG or PDF) back into the
    study must not make the study be read again: only a missed image does."""
    from overread.service.infer import _images_not_read

    image, sr, seg, pdf, echoed_overlay = (generate_uid() for _ in range(5))
    result = Result(
        summary={"sop_instance_uids": [image]},
        artifacts=[
            {"sop_instance_uid": echoed_overlay, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.7"}
        ],
    )
    missed = generate_uid()
    rows = [
        (Path("a"), Instance(sop_instance_uid=image, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1")),
        (Path("b"), Instance(sop_instance_uid=sr, sop_class_uid="1.2.840.10008.5.1.4.1.1.88.33")),
        (Path("c"), Instance(sop_instance_uid=seg, sop_class_uid="1.2.840.10008.5.1.4.1.1.66.4")),
        (Path("d"), Instance(sop_instance_uid=pdf, sop_class_uid="1.2.840.10008.5.1.4.1.1.104.1")),
        (
            Path("e"),
            Instance(sop_instance_uid=echoed_overlay, sop_class_uid="1.2.840.10008.5.1.4.1.1.7"),
        ),
        (Path("f"), Instance(sop_instance_uid=missed, sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1")),
    ]
    assert _images_not_read(result, rows) == [missed]


def test_the_next_study_is_read_while_the_last_ones_sr_is_being_sent(
    make_service: Callable[..., Any], dx_factory: Callable[..., Path]
) -> None:
    """The worker hands its exports to the export lane and claims the next job at once:
    with a PACS that holds the first SR's answer until the second study's job has
    started, that job starts (one worker) while the first send is still waiting."""
    import threading

    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from overread.netutil import free_port

    started_second = threading.Event()
    held: list[bool] = []

    def on_store(event: Any) -> int:
        if not held:  # the first SR: answered once the next study is being read
            held.append(started_second.wait(30))
        return 0x0000

    ae = AE(ae_title="PACSAE")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{port}"], **NO_POLL)
        assert len(service.pool.workers) == 1
        _send(service, dx_factory(size=256))
        wait_until(lambda: len(job_states(service)) == 2, timeout=30)  # infer + export
        _send(service, dx_factory(size=256))

        def second_started() -> bool:
            with service.database.session() as session:
                infers = session.scalars(
                    select(Job).where(Job.kind == JobKind.INFER.value).order_by(Job.id)
                ).all()
            return len(infers) == 2 and infers[1].started_at is not None

        wait_until(second_started, timeout=25)
        started_second.set()
        wait_until(lambda: job_states(service) == ["succeeded"] * 4, timeout=30)
        assert held == [True]
    finally:
        started_second.set()
        server.shutdown()


def test_a_worker_sends_itself_while_the_export_lane_is_busy(
    make_service: Callable[..., Any], dx_factory: Callable[..., Path]
) -> None:
    """The lane takes a result's exports only when it is free: while it waits for a
    slow answer, the next result's SR is sent by its worker (no queue behind the lane)."""
    import threading

    from pynetdicom import AE, AllStoragePresentationContexts, evt
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from overread.netutil import free_port

    lock = threading.Lock()
    stored: list[str] = []
    second = threading.Event()
    held: list[bool] = []

    def on_store(event: Any) -> int:
        with lock:
            first = not stored
            stored.append(str(event.request.AffectedSOPInstanceUID))
            if len(stored) >= 2:
                second.set()
        if first:  # the first SR: answered once the second has been stored
            held.append(second.wait(30))
        return 0x0000

    ae = AE(ae_title="PACSAE")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    port = free_port()
    server = ae.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{port}"], **NO_POLL)
        assert len(service.pool.workers) == 1
        _send(service, dx_factory(size=256))
        wait_until(lambda: len(stored) == 1, timeout=30)  # the lane waits for its answer
        _send(service, dx_factory(size=256))
        wait_until(lambda: job_states(service) == ["succeeded"] * 4, timeout=60)
        assert held == [True]
    finally:
        second.set()
        server.shutdown()


def test_a_lane_whose_thread_is_gone_takes_nothing() -> None:
    """Its worker then sends the exports itself instead of handing them to no one."""
    from types import SimpleNamespace

    from overread.service.worker import ExportLane

    lane = ExportLane(SimpleNamespace(), idle_seconds=1.0)  # type: ignore[arg-type]
    assert lane.take([1, 2]) is False  # never started (or died)
