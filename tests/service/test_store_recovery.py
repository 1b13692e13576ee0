"""The object store's incoming folder: an object placed without its row is found and
reported; a rejected payload whose write failed is never kept as if whole."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from overread.service import store as store_module
from overread.service.store import INCOMING_DIR, ObjectStore

from .test_scp_streaming import Receiver

pytestmark = [pytest.mark.service]

#: A writer that places two objects in the store and dies before it discards them
#: (as a receiver killed between placing an object and committing its row).
_DIES_AFTER_ADOPT = """
import os, sys
from pathlib import Path
from overread.service.store import ObjectStore
store = ObjectStore(Path(sys.argv[1]))
for data in (b"recorded object", b"object without a row"):
    incoming = store.receive()
    incoming.write(data)
    store.adopt(incoming)
os._exit(0)
"""


def _key(data: bytes) -> str:
    return ObjectStore.key_for(hashlib.sha256(data).hexdigest())


def _die_after_adopt(root: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", _DIES_AFTER_ADOPT, str(root)], check=True, env=env)


def test_an_object_placed_by_a_writer_that_died_is_checked_for_its_row(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "objects"
    _die_after_adopt(root)
    store = ObjectStore(root)
    recorded, orphan = _key(b"recorded object"), _key(b"object without a row")
    assert store.exists(recorded) and store.exists(orphan)
    # Its incoming names stay, the mark of objects whose rows may be missing.
    assert len(os.listdir(root / INCOMING_DIR)) == 2
    # Without a way to look for rows (a receiver process), they are left alone.
    assert store.remove_stale_incoming() == 0
    assert len(os.listdir(root / INCOMING_DIR)) == 2
    asked: list[str] = []

    def has_row(key: str) -> bool:
        asked.append(key)
        return key == recorded

    with caplog.at_level(logging.ERROR, logger="overread.service.store"):
        assert store.remove_stale_incoming(recorded=has_row) == 2
    assert sorted(asked) == sorted([recorded, orphan])
    reports = [r.getMessage() for r in caplog.records if "no instance row" in r.getMessage()]
    assert len(reports) == 1 and orphan in reports[0]
    # The marks are gone; both objects stay in the store (a resend records one).
    assert os.listdir(root / INCOMING_DIR) == []
    assert store.read(recorded) == b"recorded object"
    assert store.read(orphan) == b"object without a row"


def test_the_gateway_reports_an_object_without_its_row_when_it_starts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _die_after_adopt(tmp_path / "data" / "objects")
    with caplog.at_level(logging.ERROR, logger="overread.service.store"):
        gateway = Receiver(tmp_path / "data")  # its SCP's start sweeps
    try:
        reports = [r.getMessage() for r in caplog.records if "no instance row" in r.getMessage()]
        assert sorted(r.split()[1] for r in reports) == sorted(
            [_key(b"recorded object"), _key(b"object without a row")]
        )
        assert gateway.incoming() == [] and len(gateway.objects()) == 2
    finally:
        gateway.scp.stop()
        gateway.database.dispose()


def test_a_writer_at_work_keeps_its_placed_object_unchecked(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    incoming = store.receive()
    incoming.write(b"being recorded")
    stored = store.adopt(incoming)
    try:
        # Placed, its row not committed yet: the lock shows the writer at work.
        assert store.remove_stale_incoming(recorded=lambda _key: False) == 0
        assert incoming.path.exists()
    finally:
        incoming.discard()
    assert os.listdir(store.root / INCOMING_DIR) == [] and store.exists(stored.key)


def test_keeping_a_payload_whose_write_failed_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ObjectStore(tmp_path / "objects")
    real_write = os.write
    calls = {"n": 0}

    def failing(fd: int, data: object) -> int:
        calls["n"] += 1
        if calls["n"] > 1:  # the first chunk goes through, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)  # type: ignore[arg-type]

    monkeypatch.setattr(store_module.os, "write", failing)
    incoming = store.receive()
    incoming.write(b"first part ")
    incoming.write(b"second part")
    target = tmp_path / "rejected.bin"
    with pytest.raises(OSError, match=r"No space left.*kept as rejected\.bin\.incomplete"):
        incoming.keep_as(target)
    monkeypatch.setattr(store_module.os, "write", real_write)
    incoming.discard()
    assert not target.exists()  # never under the name of a whole payload
    assert (tmp_path / "rejected.bin.incomplete").read_bytes() == b"first part "


def test_keeping_a_whole_payload_moves_it(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    incoming = store.receive()
    incoming.write(b"whole payload")
    assert incoming.keep_as(tmp_path / "kept.bin") == tmp_path / "kept.bin"
    incoming.discard()
    assert (tmp_path / "kept.bin").read_bytes() == b"whole payload"
    assert os.listdir(store.root / INCOMING_DIR) == []
