"""Several processes receiving on one DICOM port (``serve --receivers N``)."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from sqlalchemy import select

from overread.config import Settings
from overread.errors import ServiceError
from overread.harness import storescu
from overread.service.config import service_config
from overread.service.db import Database, Instance, Study
from overread.service.ingest import Ingestor, IngestOutcome
from overread.service.receivers import SLOW_STORE_ENV, ReceiverProcesses, association_shares
from overread.service.scp import StorageSCP
from overread.service.store import INCOMING_DIR, ObjectStore

from .conftest import Storescp, job_states, make_dx, needs_dcmtk, wait_until

pytestmark = [pytest.mark.service, needs_dcmtk]


def _send_studies(port: int, studies: list[list[Path]]) -> None:
    """Each study on its own association, all at once (DCMTK storescu)."""
    failures: list[BaseException] = []

    def run(paths: list[Path]) -> None:
        try:
            storescu(port, paths, "OVERREAD", "MODALITY", timeout=120)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(paths,)) for paths in studies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures, failures


def _studies(tmp_path: Path, count: int, per_study: int) -> tuple[list[str], list[list[Path]]]:
    uids = [generate_uid() for _ in range(count)]
    files = [
        [
            make_dx(tmp_path / "dicom" / f"s{s}-{i}.dcm", seed=s * 10 + i, study_uid=uid, size=256)
            for i in range(per_study)
        ]
        for s, uid in enumerate(uids)
    ]
    return uids, files


def test_associations_spread_over_receiver_processes_each_land_once(tmp_path: Path) -> None:
    config = service_config(
        Settings(data_dir=tmp_path / "data"), dicom_port=0, dicom_host="127.0.0.1"
    )
    database = Database(config.database_url)
    store = ObjectStore(tmp_path / "data" / "objects")
    lock = threading.Lock()
    here: list[IngestOutcome] = []
    there: list[IngestOutcome] = []
    released: list[set[str]] = []

    def on_stored_here(outcome: IngestOutcome) -> None:
        with lock:
            here.append(outcome)

    def on_stored_there(outcome: IngestOutcome) -> None:
        with lock:
            there.append(outcome)

    def on_released(studies: set[str]) -> None:
        with lock:
            released.append(studies)

    scp = StorageSCP(
        config,
        Ingestor(database, store, on_stored=on_stored_here),
        on_released=on_released,
        shared_port=True,
    )
    port = scp.start()
    children = ReceiverProcesses(config, 3, on_released=on_released, on_stored=on_stored_there)
    children.start(scp.listening_socket)
    try:
        assert len(children.pids) == 3 and os.getpid() not in children.pids
        uids, files = _studies(tmp_path, 12, 2)
        _send_studies(port, files)
        wait_until(lambda: sum(len(s) for s in released) == len(uids), timeout=30)
    finally:
        children.stop()
        scp.stop()
    with database.session() as session:
        rows = session.scalars(select(Instance)).all()
        counts = dict(session.execute(select(Study.study_instance_uid, Study.instance_count)).all())
    database.dispose()
    # Every instance once, in the one database and store, whichever process took it.
    assert len(rows) == 24 and len({r.sop_instance_uid for r in rows}) == 24
    assert counts == {uid: 2 for uid in uids}
    objects = [p for p in store.root.rglob("*") if p.is_file() and INCOMING_DIR not in p.parts]
    assert sorted(store.path(r.object_key) for r in rows) == sorted(objects)
    # The children's events reached this process: the kernel gave them associations.
    assert len(here) + len(there) == 24 and there
    assert sorted(u for s in released for u in s) == sorted(uids)


@pytest.mark.slow
def test_studies_received_by_child_processes_complete_on_release(
    make_service: Callable[..., Any], storescp: Storescp, tmp_path: Path
) -> None:
    pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")
    service = make_service(
        dicom_receivers=3,
        stable_seconds=600,  # only the release can complete a study within the test
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
    )
    assert service.receivers is not None and len(service.receivers.pids) == 2
    uids, files = _studies(tmp_path, 4, 2)
    _send_studies(service.dicom_port, files)
    # One infer job and one export per study, all done: each study was completed on
    # its association's release, in whichever process received it.
    wait_until(lambda: job_states(service) == ["succeeded"] * 8, timeout=180)
    with service.database.session() as session:
        rows = session.scalars(select(Instance)).all()
        states = dict(session.execute(select(Study.study_instance_uid, Study.state)).all())
    assert len(rows) == 8 and len({r.sop_instance_uid for r in rows}) == 8
    assert set(states) == set(uids)
    assert len(storescp.files()) == 4


def _gateway(root: Path, port: int) -> tuple[StorageSCP, Database]:
    config = service_config(Settings(data_dir=root), dicom_port=port, dicom_host="127.0.0.1")
    database = Database(config.database_url)
    scp = StorageSCP(config, Ingestor(database, ObjectStore(root / "objects")), shared_port=True)
    return scp, database


def test_a_second_gateway_cannot_take_a_share_of_the_port(tmp_path: Path) -> None:
    # Both would receive with more processes: the second, with its own data
    # directory, must fail to start rather than take some of the associations.
    first, first_db = _gateway(tmp_path / "first", 0)
    port = first.start()
    second, second_db = _gateway(tmp_path / "second", port)
    try:
        with pytest.raises(ServiceError, match=f"cannot listen for DICOM on 127.0.0.1:{port}"):
            second.start()
    finally:
        second.stop()
        first.stop()
        first_db.dispose()
        second_db.dispose()


def test_a_child_that_dies_before_it_listens_fails_the_start_at_once(tmp_path: Path) -> None:
    gateway, database = _gateway(tmp_path / "data", 0)
    gateway.start()
    # The child cannot open this database: it exits without a word.
    broken = gateway.config.model_copy(update={"database_url": "nosuchdriver://nowhere"})
    children = ReceiverProcesses(broken, 1, on_released=lambda _s: None, on_stored=lambda _o: None)
    try:
        with pytest.raises(ServiceError, match=r"exited \(code 1\) before it listened"):
            children.start(gateway.listening_socket, timeout=60)
        assert children.pids == []
    finally:
        children.stop()
        gateway.stop()
        database.dispose()


def test_a_child_that_crashes_is_reaped_logged_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gateway, database = _gateway(tmp_path / "data", 0)
    port = gateway.start()
    children = ReceiverProcesses(
        gateway.config, 2, on_released=lambda _s: None, on_stored=lambda _o: None
    )
    children.start(gateway.listening_socket)
    try:
        crashed = children.pids[0]
        os.kill(crashed, signal.SIGKILL)
        wait_until(
            lambda: (
                crashed not in children.pids
                and len(children.pids) == 2
                and all(p.is_alive() for p in children._processes)
            ),
            timeout=60,
        )
        assert not Path(f"/proc/{crashed}").exists()  # reaped, not a zombie
        assert f"DICOM receiver process {crashed} exited" in caplog.text
        _send_studies(port, _studies(tmp_path, 1, 1)[1])  # the port still takes instances
    finally:
        children.stop()
        gateway.stop()
        database.dispose()


def test_one_receiver_stopping_leaves_the_port_listening_for_the_others(
    tmp_path: Path,
) -> None:
    # A receiver process holds its own descriptor of the gateway's listening socket;
    # stopping it must close that descriptor only, never shut the shared socket down.
    gateway, database = _gateway(tmp_path / "data", 0)
    port = gateway.start()
    config = gateway.config
    sharer = StorageSCP(
        config,
        Ingestor(database, ObjectStore(tmp_path / "data" / "objects")),
        listening_socket=gateway.listening_socket.dup(),
    )
    try:
        sharer.start()
        sharer.stop()
        _send_studies(port, _studies(tmp_path, 1, 1)[1])  # the gateway still takes it
        with database.session() as session:
            assert len(session.scalars(select(Instance)).all()) == 1
    finally:
        gateway.stop()
        database.dispose()


def _listening() -> socket.socket:
    """A bound, listening socket only receiver processes accept on."""
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen(16)
    return listening


def _association(port: int, paths: list[Path]) -> Any:
    ae = AE(ae_title="MODALITY")
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    return ae.associate("127.0.0.1", port, ae_title="OVERREAD")


def test_a_child_stopped_mid_instance_stores_it_with_its_row_or_refuses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each object waits 1.5 s in place before its row is committed: the child is
    # told to stop in that window, while its sender has more instances to send.
    monkeypatch.setenv(SLOW_STORE_ENV, "1.5")
    config = service_config(
        Settings(data_dir=tmp_path / "data"), dicom_port=0, dicom_host="127.0.0.1"
    )
    database = Database(config.database_url)
    store = ObjectStore(tmp_path / "data" / "objects")
    listening = _listening()
    children = ReceiverProcesses(config, 1, on_released=lambda _s: None, on_stored=lambda _o: None)
    children.start(listening)
    paths = [make_dx(tmp_path / f"dx{i}.dcm", seed=i, size=256) for i in range(8)]
    statuses: list[int | None] = []
    try:
        assoc = _association(listening.getsockname()[1], paths[:1])
        assert assoc.is_established

        def send() -> None:
            for path in paths:
                if not assoc.is_established:
                    break
                try:
                    status = assoc.send_c_store(path)
                except RuntimeError:  # aborted meanwhile
                    break
                if "Status" not in status:  # aborted: no answer
                    statuses.append(None)
                    break
                statuses.append(int(status.Status))
            if assoc.is_established:
                assoc.release()

        sender = threading.Thread(target=send)
        sender.start()
        # The first object is in place, its row not yet committed: stop now.
        wait_until(lambda: any(store.root.glob("[0-9a-f][0-9a-f]/*")), timeout=30)
        children.stop(timeout=6)  # lets the child drain for 4 s, then terminates it
        sender.join(30)
        assert not sender.is_alive()
    finally:
        children.stop()
        listening.close()
    with database.session() as session:
        rows = session.scalars(select(Instance)).all()
    database.dispose()
    # The instance in flight was stored whole, with its row, and acknowledged; none
    # sent once the child was stopping was taken (refused, or the association ended).
    assert statuses[0] == 0x0000
    assert len(rows) == 1
    assert all(status != 0x0000 for status in statuses[1:])
    placed = [p for p in store.root.rglob("*") if p.is_file() and INCOMING_DIR not in p.parts]
    assert sorted(store.path(r.object_key) for r in rows) == sorted(placed)
    assert os.listdir(store.root / INCOMING_DIR) == []


def test_max_associations_is_shared_out_over_the_receiving_processes(tmp_path: Path) -> None:
    assert association_shares(32, 1) == [32]
    assert association_shares(32, 3) == [11, 11, 10]
    assert sum(association_shares(7, 4)) == 7
    assert association_shares(2, 4) == [1, 1, 1, 1]  # each process admits one at least
    # Gateway and one child with a limit of 2: the child admits one association.
    config = service_config(
        Settings(data_dir=tmp_path / "data"),
        dicom_port=0,
        dicom_host="127.0.0.1",
        max_associations=2,
    )
    listening = _listening()
    children = ReceiverProcesses(config, 1, on_released=lambda _s: None, on_stored=lambda _o: None)
    children.start(listening)
    path = make_dx(tmp_path / "dx.dcm", seed=1, size=64)
    held: list[Any] = []
    try:
        first = _association(listening.getsockname()[1], [path])
        held.append(first)
        assert first.is_established
        second = _association(listening.getsockname()[1], [path])
        held.append(second)
        assert second.is_rejected
    finally:
        for assoc in held:
            if assoc.is_established:
                assoc.release()
        children.stop()
        listening.close()
