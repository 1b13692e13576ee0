"""The Storage SCP against real DCMTK and pynetdicom peers."""

from __future__ import annotations

import copy
import hashlib
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pydicom.data
import pynetdicom
import pytest
from pydicom.uid import generate_uid
from pynetdicom import AE
from pynetdicom.presentation import PresentationContext
from sqlalchemy import select

from overread.audit import AuditAction
from overread.audit.schema import AuditEvent
from overread.config import Settings
from overread.errors import ConfigError
from overread.service.config import service_config
from overread.service.db import Database, Instance, Study
from overread.service.ingest import Ingestor, IngestOutcome
from overread.service.scp import StorageSCP
from overread.service.store import ObjectStore

from .conftest import needs_dcmtk

pytestmark = [pytest.mark.service, needs_dcmtk]


@dataclass
class Gateway:
    scp: StorageSCP
    database: Database
    store: ObjectStore
    port: int
    released: list[set[str]]
    stored_seen: list[tuple[IngestOutcome, bool, bool]]


@pytest.fixture
def make_gateway(tmp_path: Path) -> Iterator[Callable[..., Gateway]]:
    started: list[Gateway] = []

    def _make(**overrides: object) -> Gateway:
        settings = Settings(data_dir=tmp_path / "data")
        config = service_config(settings, dicom_port=0, dicom_host="127.0.0.1", **overrides)
        database = Database(config.database_url)
        store = ObjectStore(tmp_path / "data" / "objects")
        released: list[set[str]] = []
        seen: list[tuple[IngestOutcome, bool, bool]] = []

        def on_stored(outcome: IngestOutcome) -> None:
            # Called after commit, before the SCP answers: the file and row must exist.
            with database.session() as session:
                row = session.scalar(
                    select(Instance).where(Instance.sop_instance_uid == outcome.sop_instance_uid)
                )
            seen.append((outcome, store.exists(outcome.object_key), row is not None))

        scp = StorageSCP(
            config,
            Ingestor(database, store, on_stored=on_stored),
            on_released=released.append,
            rejected_dir=tmp_path / "data" / "rejected",
        )
        gateway = Gateway(scp, database, store, scp.start(), released, seen)
        started.append(gateway)
        return gateway

    yield _make
    for gateway in started:
        gateway.scp.stop()
        gateway.database.dispose()


def _storescu(
    port: int, *files: Path, calling: str = "MODALITY"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["storescu", "-aet", calling, "-aec", "OVERREAD", "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _audited(db: Database, action: AuditAction) -> list[AuditEvent]:
    with db.session() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == action.value).order_by(AuditEvent.seq)
        ).all()
        session.expunge_all()
        return list(events)


def _instances(db: Database) -> list[Instance]:
    with db.session() as session:
        return list(session.scalars(select(Instance)).all())


def test_echoscu_is_answered(make_gateway: Callable[..., Gateway]) -> None:
    gw = make_gateway()
    done = subprocess.run(
        ["echoscu", "-aet", "MODALITY", "-aec", "OVERREAD", "127.0.0.1", str(gw.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr


def test_unknown_calling_ae_is_refused_and_logged(
    make_gateway: Callable[..., Gateway],
    dx_factory: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = make_gateway(allow_ae=["MODALITY@127.0.0.1", "OTHERHOST@10.9.9.9"])
    with caplog.at_level(logging.WARNING, logger="overread.service.scp"):
        refused = subprocess.run(
            ["echoscu", "-aet", "STRANGER", "-aec", "OVERREAD", "127.0.0.1", str(gw.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        wrong_host = _storescu(gw.port, dx_factory(), calling="OTHERHOST")
    assert refused.returncode != 0
    assert "Rejected" in refused.stderr or "reject" in refused.stderr.lower()
    assert wrong_host.returncode != 0
    assert "'STRANGER'" in caplog.text and "not allowed" in caplog.text
    assert _instances(gw.database) == []
    refusals = _audited(gw.database, AuditAction.ASSOCIATION_REFUSED)
    assert [e.actor for e in refusals] == ["ae:STRANGER", "ae:OTHERHOST"]
    assert all("not allowed" in e.details["reason"] for e in refusals)
    assert refusals[0].details["peer_host"] == "127.0.0.1"
    allowed = _storescu(gw.port, dx_factory(), calling="MODALITY")
    assert allowed.returncode == 0, allowed.stderr
    assert len(_instances(gw.database)) == 1


def test_stored_instance_is_on_disk_and_in_the_database_before_success(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    gw = make_gateway()
    path = dx_factory()
    done = _storescu(gw.port, path)
    assert done.returncode == 0, done.stderr
    assert len(gw.stored_seen) == 1
    outcome, file_there, row_there = gw.stored_seen[0]
    assert file_there and row_there and not outcome.duplicate
    [row] = _instances(gw.database)
    stored = gw.store.path(row.object_key).read_bytes()
    assert row.sha256 == hashlib.sha256(stored).hexdigest() and row.size == len(stored)
    assert row.calling_ae == "MODALITY" and row.modality == "DX" and row.body_part == "CHEST"
    # The raw bytes were kept as sent: the data set after the file meta is identical.
    original = path.read_bytes()
    assert stored[-2000:] == original[-2000:]
    with gw.database.session() as session:
        study = session.scalar(select(Study))
        assert study is not None and study.instance_count == 1 and study.state == "receiving"
    deadline = time.monotonic() + 10  # the release handler runs after the peer is answered
    while not gw.released and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gw.released == [{row.study_instance_uid}]


def test_duplicate_instance_is_acknowledged_without_a_second_copy(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    gw = make_gateway()
    path = dx_factory()
    assert _storescu(gw.port, path).returncode == 0
    again = _storescu(gw.port, path)
    assert again.returncode == 0, again.stderr
    assert len(_instances(gw.database)) == 1
    objects = [p for p in gw.store.root.rglob("*") if p.is_file()]
    assert len(objects) == 1
    with gw.database.session() as session:
        study = session.scalar(select(Study))
        assert study is not None and study.instance_count == 1


def _corrupt_part10(tmp_path: Path, good: Path) -> Path:
    """A file whose meta says DX but whose data set is cut off in the middle."""
    data = good.read_bytes()
    bad = tmp_path / "truncated.dcm"
    bad.write_bytes(data[: len(data) // 3])
    return bad


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")
def test_corrupt_payload_is_refused_and_nothing_is_lost(
    make_gateway: Callable[..., Gateway],
    dx_factory: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Send files byte for byte (pynetdicom's documented option), so the peer sees the
    # corrupt data set exactly as written.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    gw = make_gateway()
    good = dx_factory()
    assert _storescu(gw.port, good).returncode == 0
    garbage = tmp_path / "garbage.dcm"
    raw = good.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")  # preamble, group length
    garbage.write_bytes(good.read_bytes()[:meta_end] + b"\xff\xfe\x00\x01not dicom at all" * 10)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", gw.port, ae_title="OVERREAD")
    assert assoc.is_established
    statuses = [
        int(assoc.send_c_store(p).Status) for p in (garbage, _corrupt_part10(tmp_path, good))
    ]
    assoc.release()
    assert statuses == [0xC000, 0xC000]
    refused = _audited(gw.database, AuditAction.RECEIVE_REFUSED)
    assert [(e.actor, e.details["status"]) for e in refused] == [("ae:MODALITY", "0xC000")] * 2
    rows = _instances(gw.database)
    assert len(rows) == 1 and gw.store.exists(rows[0].object_key)
    assert len(list((tmp_path / "data" / "rejected").iterdir())) == 2  # kept for inspection
    assert _storescu(gw.port, dx_factory()).returncode == 0  # and the SCP carries on


def test_disk_failure_answers_out_of_resources(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path], tmp_path: Path
) -> None:
    gw = make_gateway()
    # The store's directory is replaced by a plain file: every write fails with an
    # OSError (as on a full or read-only disk), even for root.
    shutil.rmtree(gw.store.root)
    gw.store.root.write_bytes(b"")
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", gw.port, ae_title="OVERREAD")
    status = int(assoc.send_c_store(dx_factory()).Status)
    assoc.release()
    assert status == 0xA700
    assert _instances(gw.database) == []


def test_database_down_answers_out_of_resources(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path], tmp_path: Path
) -> None:
    gw = make_gateway()
    gw.scp.ingestor.database = Database(
        "sqlite:////nonexistent-dir/for/sure/overread.db", create=False
    )
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", gw.port, ae_title="OVERREAD")
    status = int(assoc.send_c_store(dx_factory()).Status)
    assoc.release()
    assert status == 0xA700


def test_ten_concurrent_associations_are_all_stored(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path], database_url: str
) -> None:
    gw = make_gateway(database_url=database_url)
    study = generate_uid()
    batches = [[dx_factory(study_uid=study) for _ in range(3)] for _ in range(10)]
    results: list[int] = []

    def send(files: list[Path]) -> None:
        results.append(_storescu(gw.port, *files).returncode)

    threads = [threading.Thread(target=send, args=(b,)) for b in batches]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [0] * 10
    rows = _instances(gw.database)
    assert len(rows) == 30 and len({r.sop_instance_uid for r in rows}) == 30
    assert all(gw.store.exists(r.object_key) for r in rows)
    with gw.database.session() as session:
        study_row = session.scalar(select(Study))
        assert study_row is not None and study_row.instance_count == 30


def test_the_same_instance_sent_concurrently_is_stored_once(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path], database_url: str
) -> None:
    gw = make_gateway(database_url=database_url)
    path = dx_factory()
    codes: list[int] = []
    threads = [
        threading.Thread(target=lambda: codes.append(_storescu(gw.port, path).returncode))
        for _ in range(5)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [0] * 5
    assert len(_instances(gw.database)) == 1
    with gw.database.session() as session:
        study = session.scalar(select(Study))
        assert study is not None and study.instance_count == 1


def test_only_configured_sop_classes_and_transfer_syntaxes_are_accepted(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    gw = make_gateway(
        sop_classes=["1.2.840.10008.5.1.4.1.1.1.1"],  # DX for presentation only
        transfer_syntaxes=["1.2.840.10008.1.2.1"],  # Explicit VR Little Endian only
    )
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))
    refused = _storescu(gw.port, ct)
    assert refused.returncode != 0  # no presentation context for CT Image Storage
    implicit = subprocess.run(
        [
            "storescu",
            "-xi",
            "-aet",
            "MODALITY",
            "-aec",
            "OVERREAD",
            "127.0.0.1",
            str(gw.port),
            str(dx_factory()),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert implicit.returncode != 0  # proposes Implicit VR Little Endian only
    assert _instances(gw.database) == []
    assert _storescu(gw.port, dx_factory()).returncode == 0
    [row] = _instances(gw.database)
    assert row.transfer_syntax_uid == "1.2.840.10008.1.2.1"


def _contexts_seen(contexts: list[PresentationContext]) -> list[tuple[object, ...]]:
    return [
        (c.abstract_syntax, list(c.transfer_syntax), c.result, c.scu_role, c.scp_role)
        for c in contexts
    ]


def test_each_association_negotiates_on_its_own_copy_of_the_supported_contexts(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    gw = make_gateway()
    server = gw.scp._server
    before = _contexts_seen(server.contexts)
    assert before == _contexts_seen(gw.scp.ae.supported_contexts)
    copied = copy.deepcopy(server.contexts)
    assert all(a is not b for a, b in zip(copied, server.contexts, strict=True))
    copied[0].transfer_syntax = ["1.2.840.10008.1.2"]
    copied[0].result = 0x03
    assert _contexts_seen(server.contexts) == before
    assert _storescu(gw.port, dx_factory()).returncode == 0
    assert _storescu(gw.port, dx_factory(), dx_factory()).returncode == 0
    assert _contexts_seen(server.contexts) == before
    assert len(_instances(gw.database)) == 3


def test_a_different_instance_reusing_a_sop_instance_uid_keeps_the_first(
    make_gateway: Callable[..., Gateway],
    dx_factory: Callable[..., Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    gw = make_gateway()
    uid = generate_uid()
    first, second = dx_factory(sop_uid=uid), dx_factory(sop_uid=uid)  # different pixels
    assert first.read_bytes() != second.read_bytes()
    assert _storescu(gw.port, first).returncode == 0
    with caplog.at_level(logging.WARNING, logger="overread.service.ingest"):
        assert _storescu(gw.port, second).returncode == 0
    [row] = _instances(gw.database)
    assert gw.store.path(row.object_key).read_bytes()[-1000:] == first.read_bytes()[-1000:]
    assert "the first copy is kept" in caplog.text


def test_concurrent_rows_are_committed_together_and_each_caller_waits_for_its_own() -> None:
    from overread.service.ingest import _GroupCommit, _PendingRow

    batches: list[list[str]] = []
    first_batch_entered = threading.Event()
    release_first = threading.Event()

    def write(rows: object) -> None:
        names = [r.key for r in rows]  # type: ignore[attr-defined]
        if "bad" in names and len(names) == 1:
            raise ValueError("bad row")
        if "bad" in names:
            raise ValueError("batch with a bad row")
        batches.append(names)
        if len(batches) == 1:
            first_batch_entered.set()
            assert release_first.wait(10)

    group = _GroupCommit(write)
    outcomes: dict[str, str] = {}

    def ingest(key: str) -> None:
        row = _PendingRow(None, key, "", 0, "AE", "")  # type: ignore[arg-type]
        try:
            group.commit(row)
            outcomes[key] = (
                "committed" if key in [k for batch in batches for k in batch] else "not written"
            )
        except ValueError as exc:
            outcomes[key] = str(exc)

    first = threading.Thread(target=ingest, args=("a",))
    first.start()
    assert first_batch_entered.wait(10)
    others = [threading.Thread(target=ingest, args=(k,)) for k in ("b", "c", "bad")]
    for thread in others:
        thread.start()
    deadline = time.monotonic() + 10
    while len(group._pending) < 3 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert "b" not in outcomes  # nobody returns before its row is written
    release_first.set()
    for thread in (first, *others):
        thread.join(10)
    # "a" alone; then b, c and bad together, which failed and were written one by one.
    assert batches[0] == ["a"]
    assert sorted(k for batch in batches[1:] for k in batch) == ["b", "c"]
    assert outcomes == {"a": "committed", "b": "committed", "c": "committed", "bad": "bad row"}


def test_twelve_concurrent_senders_are_each_acknowledged_after_their_own_commit(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    gw = make_gateway()
    files = [dx_factory() for _ in range(12)]
    results: list[int] = []
    threads = [
        threading.Thread(target=lambda f=f: results.append(_storescu(gw.port, f).returncode))
        for f in files
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert results == [0] * 12
    rows = _instances(gw.database)
    assert len(rows) == 12 and all(gw.store.exists(r.object_key) for r in rows)
    assert all(stored and row for _, stored, row in gw.stored_seen)  # durable before success


def test_idle_sockets_hold_no_association_slot_and_are_closed(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    # 100 connections from the modality's own address that never send an
    # A-ASSOCIATE-RQ, against a limit of 4 associations.
    gw = make_gateway(
        allow_ae=["MODALITY@127.0.0.1"], max_associations=4, association_request_seconds=5.0
    )
    image = dx_factory()
    idle = [socket.create_connection(("127.0.0.1", gw.port), timeout=30) for _ in range(100)]
    try:
        stored = _storescu(gw.port, image)

        echoed = subprocess.run(
            ["echoscu", "-aet", "MODALITY", "-aec", "OVERREAD", "127.0.0.1", str(gw.port)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert stored.returncode == 0, stored.stderr
        assert echoed.returncode == 0, echoed.stderr
        assert len(_instances(gw.database)) == 1
        # The store happened while the idle sockets were all still open and waiting.
        for connection in idle:
            connection.setblocking(False)
            with pytest.raises(BlockingIOError):
                connection.recv(1, socket.MSG_PEEK)
            connection.settimeout(30)
        assert gw.scp.silent_connections == 100
        # Each silent connection is closed by the gateway after association_request_seconds.
        for connection in idle:
            assert connection.recv(1) == b""
        assert gw.scp.requested_associations == 0
        assert gw.scp.silent_connections == 0
    finally:
        for connection in idle:
            connection.close()


def test_requested_associations_beyond_the_limit_are_refused_transiently(
    make_gateway: Callable[..., Gateway],
) -> None:
    gw = make_gateway(max_associations=2)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", gw.port, ae_title="OVERREAD") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        assert gw.scp.requested_associations == 2
        third = ae.associate("127.0.0.1", gw.port, ae_title="OVERREAD")
        assert third.is_rejected
        reply = third.acceptor.primitive
        assert (reply.result, reply.result_source, reply.diagnostic) == (0x02, 0x03, 0x02)
    finally:
        for association in held:
            association.release()
    deadline = time.monotonic() + 10
    while gw.scp.requested_associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gw.scp.requested_associations == 0
    again = ae.associate("127.0.0.1", gw.port, ae_title="OVERREAD")
    assert again.is_established
    again.release()


def test_a_wrong_called_ae_title_is_refused_and_audited(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    gw = make_gateway()
    refused = subprocess.run(
        ["echoscu", "-aet", "MODALITY", "-aec", "SOMEONE", "127.0.0.1", str(gw.port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert refused.returncode != 0
    assert "Called AE Title Not Recognized" in refused.stderr or "reject" in refused.stderr.lower()
    (event,) = _audited(gw.database, AuditAction.ASSOCIATION_REFUSED)
    assert event.actor == "ae:MODALITY" and "'SOMEONE'" in event.details["reason"]
    assert _storescu(gw.port, dx_factory()).returncode == 0  # the right title still works
    lenient = make_gateway(check_called_ae=False)
    assert (
        subprocess.run(
            ["echoscu", "-aet", "MODALITY", "-aec", "SOMEONE", "127.0.0.1", str(lenient.port)],
            capture_output=True,
            timeout=30,
        ).returncode
        == 0
    )


# -- DICOM TLS on the receiving side, against DCMTK's TLS-enabled storescu and echoscu --


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(directory: Path, name: str) -> None:
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-keyout", f"{name}.key", "-out", f"{name}.crt", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip


def _signed(directory: Path, name: str, ca: str, *, ip: bool = False) -> None:
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
        "-out", f"{name}.csr", "-subj", f"/CN={name}",
        cwd=directory,
    )  # fmt: skip
    extensions = directory / f"{name}.ext"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n" if ip else "basicConstraints=CA:FALSE\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-out", f"{name}.crt", "-extfile", extensions.name,
        cwd=directory,
    )  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hospital CA with a gateway and a modality certificate; a stranger's CA and client."""
    directory = tmp_path_factory.mktemp("pki")
    _ca(directory, "hospital-ca")
    _signed(directory, "gateway", "hospital-ca", ip=True)
    _signed(directory, "modality", "hospital-ca")
    _ca(directory, "stranger-ca")
    _signed(directory, "stranger", "stranger-ca")
    return directory


def _tls_tool(
    tool: str, port: int, pki: Path, client: str, *files: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            tool, "-aet", "MODALITY", "-aec", "OVERREAD",
            "+tls", str(pki / f"{client}.key"), str(pki / f"{client}.crt"),
            "+cf", str(pki / "hospital-ca.crt"),
            "127.0.0.1", str(port), *map(str, files),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def test_a_modality_with_a_hospital_certificate_stores_over_tls(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path], pki: Path
) -> None:
    gw = make_gateway(
        dicom_tls_cert_file=pki / "gateway.crt",
        dicom_tls_key_file=pki / "gateway.key",
        dicom_tls_ca_file=pki / "hospital-ca.crt",
    )
    # A silent TCP connection first: the handshake waits off the accept loop.
    silent = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
    try:
        stored = _tls_tool("storescu", gw.port, pki, "modality", dx_factory())
        assert stored.returncode == 0, stored.stderr
        assert len(_instances(gw.database)) == 1
        # Plain DICOM to the TLS port is not understood, and nothing is stored.
        plain = subprocess.run(
            ["echoscu", "-aet", "MODALITY", "-aec", "OVERREAD", "127.0.0.1", str(gw.port)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert plain.returncode != 0
        # A certificate from another CA is refused at the handshake, and audited.
        stranger = _tls_tool("echoscu", gw.port, pki, "stranger")
        assert stranger.returncode != 0
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with gw.database.session() as session:
                refused = session.scalars(
                    select(AuditEvent).where(
                        AuditEvent.action == AuditAction.ASSOCIATION_REFUSED.value
                    )
                ).all()
                reasons = [e.details["reason"] for e in refused]
            if any("TLS handshake" in r for r in reasons):
                break
            time.sleep(0.1)
        assert any("TLS handshake with 127.0.0.1 failed" in r for r in reasons)
        # The service carries on.
        again = _tls_tool("echoscu", gw.port, pki, "modality")
        assert again.returncode == 0, again.stderr
    finally:
        silent.close()


def test_a_large_instance_over_tls_in_small_pdus_is_stored_whole(
    make_gateway: Callable[..., Gateway], dx_factory: Callable[..., Path], pki: Path
) -> None:
    # The data set's PDUs come through the TLS layer (whose buffered bytes select()
    # does not see) past pynetdicom's PDU decoding (service.pdata).
    gw = make_gateway(
        dicom_tls_cert_file=pki / "gateway.crt",
        dicom_tls_key_file=pki / "gateway.key",
        dicom_tls_ca_file=pki / "hospital-ca.crt",
    )
    path = dx_factory(size=1200)  # 2.9 MB: about 180 PDUs of 16 KiB
    sent = subprocess.run(
        [
            "storescu", "-aet", "MODALITY", "-aec", "OVERREAD", "--max-send-pdu", "16384",
            "+tls", str(pki / "modality.key"), str(pki / "modality.crt"),
            "+cf", str(pki / "hospital-ca.crt"), "127.0.0.1", str(gw.port), str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    [row] = _instances(gw.database)
    stored = gw.store.path(row.object_key).read_bytes()
    original = path.read_bytes()
    assert len(stored) > 2_800_000 and stored[-1_000_000:] == original[-1_000_000:]
    assert row.sha256 == hashlib.sha256(stored).hexdigest() and row.size == len(stored)


def test_tls_settings_are_checked_up_front(tmp_path: Path, pki: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    with pytest.raises(ConfigError, match="go together"):
        service_config(settings, dicom_tls_cert_file=pki / "gateway.crt")
    with pytest.raises(ConfigError, match="no such file"):
        service_config(
            settings,
            dicom_tls_cert_file=pki / "gateway.crt",
            dicom_tls_key_file=tmp_path / "missing.key",
        )
