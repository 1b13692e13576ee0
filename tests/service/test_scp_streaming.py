"""The Storage SCP writes and hashes a C-STORE data set as its PDUs arrive.

What it stores must be exactly what the in-memory path stored (the Part 10 file of
``event.encoded_dataset()``), with the right SHA-256, for every transfer syntax; a
refused, cut-off or unwritable instance must leave nothing half-written behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from sqlalchemy import select

from overread.config import Settings
from overread.service import store as store_module
from overread.service.config import service_config
from overread.service.db import Database, Instance
from overread.service.ingest import Ingestor
from overread.service.scp import StorageSCP
from overread.service.store import INCOMING_DIR, IncomingObject, ObjectStore

from .conftest import make_dx, needs_dcmtk

pytestmark = [pytest.mark.service]

#: pydicom's own test files, one per kind of encoding (the deflated and the
#: compressed ones included).
TEST_FILES = [
    "CT_small.dcm",  # explicit VR little endian
    "MR_small_implicit.dcm",  # implicit VR little endian
    "MR_small_bigendian.dcm",  # explicit VR big endian
    "image_dfl.dcm",  # deflated explicit VR little endian
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG baseline
    "JPEG2000.dcm",  # JPEG 2000
    "MR_small_RLE.dcm",  # RLE lossless
]

SOP_CLASSES = ["1.2.840.10008.5.1.4.1.1.1.1", "1.2.840.10008.5.1.4.1.1.2"]


class Receiver:
    def __init__(self, root: Path) -> None:
        settings = Settings(data_dir=root)
        self.config = service_config(settings, dicom_port=0, dicom_host="127.0.0.1")
        self.database = Database(self.config.database_url)
        self.store = ObjectStore(root / "objects")
        self.ingestor = Ingestor(self.database, self.store)
        self.calls: list[str] = []
        for name in ("ingest", "ingest_incoming"):
            original = getattr(self.ingestor, name)

            def spy(*args: object, _name: str = name, _original: object = original, **kw: object):  # type: ignore[no-untyped-def]
                self.calls.append(_name)
                return _original(*args, **kw)  # type: ignore[operator]

            setattr(self.ingestor, name, spy)
        self.rejected = root / "rejected"
        self.scp = StorageSCP(self.config, self.ingestor, rejected_dir=self.rejected)
        self.port = self.scp.start()

    def rows(self) -> list[Instance]:
        with self.database.session() as session:
            return list(session.scalars(select(Instance)).all())

    def incoming(self) -> list[str]:
        return os.listdir(self.store.root / INCOMING_DIR)

    def objects(self) -> list[Path]:
        return [
            p for p in self.store.root.rglob("*") if p.is_file() and INCOMING_DIR not in p.parts
        ]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    gateway = Receiver(tmp_path / "data")
    yield gateway
    gateway.scp.stop()
    gateway.database.dispose()


def _part10(path: Path) -> bytes:
    """What the in-memory path stores for ``path`` sent byte for byte: pynetdicom's
    preamble and File Meta Information, then the data set as it is in the file."""
    raw = path.read_bytes()
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    meta = create_file_meta(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax=ds.file_meta.TransferSyntaxUID,
    )
    return b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + raw[meta_end:]


def _send(port: int, paths: list[Path], *, like: Path | None = None) -> list[int]:
    """C-STORE ``paths`` on one association (contexts from ``like`` if given)."""
    ae = AE(ae_title="MODALITY")
    for path in [like] if like is not None else paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="OVERREAD")
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(path).Status) for path in paths]
    finally:
        assoc.release()


@pytest.mark.parametrize("name", TEST_FILES)
def test_every_transfer_syntax_is_stored_byte_for_byte_with_its_hash(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    # Sent as the file is (pynetdicom's byte-for-byte option): deflated and
    # compressed data sets arrive exactly as encoded.
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    path = Path(str(get_testdata_file(name)))
    assert _send(receiver.port, [path]) == [0x0000]
    assert receiver.calls == ["ingest_incoming"]  # not the in-memory path
    [row] = receiver.rows()
    expected = _part10(path)
    stored = receiver.store.path(row.object_key).read_bytes()
    assert stored == expected
    assert row.sha256 == hashlib.sha256(expected).hexdigest() and row.size == len(expected)
    assert row.object_key == ObjectStore.key_for(row.sha256)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert row.sop_instance_uid == str(header.SOPInstanceUID)
    assert row.transfer_syntax_uid == str(header.file_meta.TransferSyntaxUID)
    assert receiver.incoming() == []
    # The same bytes through the in-memory path are the same object (one key).
    assert receiver.ingestor.ingest(expected, calling_ae="FILE").object_key == row.object_key


@needs_dcmtk
def test_a_large_instance_in_many_fragments_is_stored_whole(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[int] = []
    original_write = IncomingObject.write

    def counting(self: IncomingObject, chunk: bytes) -> None:
        writes.append(len(chunk))
        original_write(self, chunk)

    monkeypatch.setattr(IncomingObject, "write", counting)
    path = make_dx(tmp_path / "big.dcm", seed=7, size=1800)  # 6.5 MB of pixels
    done = subprocess.run(
        [
            "storescu",
            "-aet",
            "MODALITY",
            "-aec",
            "OVERREAD",
            "--max-send-pdu",
            "16384",
            "127.0.0.1",
            str(receiver.port),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert receiver.calls == ["ingest_incoming"]
    assert len(writes) > 300  # 16 KiB PDUs: the data set came in hundreds of pieces
    [row] = receiver.rows()
    stored = receiver.store.path(row.object_key).read_bytes()
    original = path.read_bytes()
    assert len(stored) > 6_000_000 and stored[-1_000_000:] == original[-1_000_000:]
    assert row.sha256 == hashlib.sha256(stored).hexdigest() and row.size == len(stored)
    assert pydicom.dcmread(BytesIO(stored)).pixel_array.shape == (1800, 1800)
    assert receiver.incoming() == []


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_refused_instance_leaves_no_partial_file(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    good = make_dx(tmp_path / "good.dcm", seed=1, size=256)
    raw = good.read_bytes()
    meta_end = 132 + 12 + int.from_bytes(raw[140:144], "little")
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(raw[:meta_end] + b"\xff\xfe\x00\x01not dicom at all" * 10)
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[: len(raw) // 2])
    assert _send(receiver.port, [garbage, truncated], like=good) == [0xC000, 0xC000]
    assert receiver.calls == ["ingest_incoming"] * 2
    assert receiver.rows() == [] and receiver.objects() == [] and receiver.incoming() == []
    kept = sorted(receiver.rejected.iterdir())
    assert len(kept) == 2  # moved there for inspection, as the in-memory path kept them
    assert {p.read_bytes()[-40:] for p in kept} == {
        garbage.read_bytes()[-40:],
        truncated.read_bytes()[-40:],
    }


def test_a_failed_write_answers_out_of_resources_and_leaves_nothing(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls = {"n": 0}

    def failing(fd: int, data: object) -> int:
        calls["n"] += 1
        if calls["n"] > 1:  # the file meta goes through, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.os, "write", failing)
    path = make_dx(tmp_path / "dx.dcm", seed=3, size=256)
    assert _send(receiver.port, [path]) == [0xA700]
    monkeypatch.setattr(store_module.os, "write", real_write)
    assert receiver.calls == ["ingest_incoming"]
    assert receiver.rows() == [] and receiver.objects() == [] and receiver.incoming() == []
    assert _send(receiver.port, [path]) == [0x0000]  # and it carries on once the disk is back


def test_an_association_aborted_mid_data_set_leaves_no_partial_file(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = make_dx(tmp_path / "dx.dcm", seed=4, size=1024)
    ds = pydicom.dcmread(path)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="OVERREAD")
    assert assoc.is_established
    context = assoc.accepted_contexts[0]
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    raw = path.read_bytes()
    request.DataSet = BytesIO(raw[132 + 12 + int.from_bytes(raw[140:144], "little") :])
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    for number, pdata in enumerate(message.encode_msg(context.context_id, 16384)):
        if number == 20:  # the command and part of the data set
            break
        assoc.dul.send_pdu(pdata)
    deadline = time.monotonic() + 10
    while not receiver.incoming() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(receiver.incoming()) == 1  # being written as it arrives
    assoc.abort()
    deadline = time.monotonic() + 10
    while receiver.incoming() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert receiver.incoming() == [] and receiver.rows() == [] and receiver.objects() == []
    assert _send(receiver.port, [path]) == [0x0000]


def test_incoming_object_hashes_what_it_writes_and_discard_removes_it(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    chunks = [os.urandom(n) for n in (1, 4096, 70_000, 3)]
    incoming = store.receive()
    for chunk in chunks:
        incoming.write(chunk)
    whole = b"".join(chunks)
    assert incoming.finish() == (hashlib.sha256(whole).hexdigest(), len(whole))
    with incoming.mapped() as view:
        assert bytes(view) == whole
    stored = store.adopt(incoming)
    incoming.discard()
    assert stored.created and store.read(stored.key) == whole
    assert os.listdir(store.root / INCOMING_DIR) == []
    # The same bytes again: kept once, the second copy removed.
    second = store.receive()
    second.write(whole)
    assert not store.adopt(second).created
    second.discard()
    assert os.listdir(store.root / INCOMING_DIR) == []


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_objects_abandoned_in_incoming_are_removed_when_a_receiver_starts(
    tmp_path: Path,
) -> None:
    root = tmp_path / "objects"
    store = ObjectStore(root)
    store.prepare()
    child = subprocess.Popen(["true"])
    child.wait()
    # A writer elsewhere (another host or PID namespace: its pid means nothing
    # here) still receiving: it holds the file's lock.
    held = IncomingObject(root / INCOMING_DIR / f".tmp-{child.pid}-1-0")
    try:
        held.write(b"in progress")
        held.finish()
        _age(held.path, 7200)
        abandoned = root / INCOMING_DIR / f".tmp-{os.getpid()}-2-0"
        abandoned.write_bytes(b"half")
        _age(abandoned, 7200)
        recent = root / INCOMING_DIR / f".tmp-{child.pid}-3-0"
        recent.write_bytes(b"half")
        # A writer storing an object does not clean up.
        ObjectStore(root).put(b"another object")
        assert abandoned.exists()
        receiver = Receiver(tmp_path)  # its SCP's start cleans up
        try:
            assert held.path.exists() and recent.exists() and not abandoned.exists()
        finally:
            receiver.scp.stop()
            receiver.database.dispose()
    finally:
        held.discard()
    assert not held.path.exists()


def test_the_file_is_fsynced_by_the_writer_once_the_last_chunk_is_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(tmp_path / "objects")
    store.prepare()
    synced: list[tuple[int, str]] = []
    real_fsync = os.fsync

    def recording(fd: int) -> None:
        synced.append((fd, threading.current_thread().name))
        real_fsync(fd)

    monkeypatch.setattr(store_module.os, "fsync", recording)
    incoming = store.receive()
    incoming.write(b"x" * 100_000)
    incoming.end()  # what the SCP calls when the last PDU of the data set arrived
    deadline = time.monotonic() + 10
    while not synced and time.monotonic() < deadline:
        time.sleep(0.01)
    assert [name for _, name in synced] == ["store-incoming"]  # before anyone asked
    stored = store.adopt(incoming)  # no second file fsync, then the directory's
    incoming.discard()
    assert len(synced) == 2 and synced[1][1] != "store-incoming"
    assert store.read(stored.key) == b"x" * 100_000


def _record_syncs(monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[Path]]:
    """Record the inode of each file fsync'd and each directory fsync'd."""
    files: list[int] = []
    directories: list[Path] = []
    real_fsync = os.fsync
    real_fsync_dir = store_module._fsync_dir

    def fsync(fd: int) -> None:
        files.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    def fsync_dir(path: Path) -> None:
        directories.append(Path(path))
        real_fsync_dir(path)

    monkeypatch.setattr(store_module.os, "fsync", fsync)
    monkeypatch.setattr(store_module, "_fsync_dir", fsync_dir)
    return files, directories


def test_put_of_bytes_already_stored_makes_the_existing_file_durable_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another writer may have renamed the file into place and not yet fsync'd its
    # directory: finding it there must not return before it is durable.
    store = ObjectStore(tmp_path / "objects")
    first = store.put(b"same bytes")
    files, directories = _record_syncs(monkeypatch)
    again = store.put(b"same bytes")
    assert not again.created
    assert os.stat(first.path).st_ino in files
    assert first.path.parent in directories


def test_adopt_of_bytes_already_stored_makes_the_existing_file_durable_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(tmp_path / "objects")
    first = store.put(b"same bytes")
    incoming = store.receive()
    incoming.write(b"same bytes")
    incoming.finish()
    files, directories = _record_syncs(monkeypatch)
    try:
        again = store.adopt(incoming)
    finally:
        incoming.discard()
    assert not again.created
    assert os.stat(first.path).st_ino in files
    assert first.path.parent in directories


def test_without_fsync_a_duplicate_is_not_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(tmp_path / "objects", fsync=False)
    store.put(b"same bytes")
    files, directories = _record_syncs(monkeypatch)
    assert not store.put(b"same bytes").created
    assert files == [] and directories == []


def test_an_unexpected_error_in_the_writer_fails_finish_instead_of_hanging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(tmp_path / "objects")

    def broken(fd: int, data: object) -> int:
        raise ValueError("not an OSError")

    monkeypatch.setattr(store_module.os, "write", broken)
    incoming = store.receive()
    incoming.write(b"some bytes")
    outcome: list[BaseException | tuple[str, int]] = []

    def finish() -> None:
        try:
            outcome.append(incoming.finish())
        except BaseException as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=finish, daemon=True)
    waiter.start()
    waiter.join(10)
    assert not waiter.is_alive(), "finish() waits forever"
    [error] = outcome
    assert isinstance(error, OSError) and "not an OSError" in str(error)
    incoming.discard()
    assert os.listdir(store.root / INCOMING_DIR) == []


def test_an_unexpected_error_in_the_writer_answers_out_of_resources(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = os.write
    calls = {"n": 0}

    def failing(fd: int, data: object) -> int:
        calls["n"] += 1
        if calls["n"] > 1:
            raise ValueError("not an OSError")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.os, "write", failing)
    path = make_dx(tmp_path / "dx.dcm", seed=3, size=256)
    assert _send(receiver.port, [path]) == [0xA700]
    monkeypatch.setattr(store_module.os, "write", real_write)
    assert receiver.rows() == [] and receiver.objects() == [] and receiver.incoming() == []
    assert _send(receiver.port, [path]) == [0x0000]
