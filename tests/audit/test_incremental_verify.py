"""The incremental check: from the newest signed checkpoint on, and what it still catches.

The gateway's periodic checkpoint verifies only the records after the newest signed
checkpoint (plus that checkpoint's own record), so its cost stays flat as the trail
grows; the full verify still recomputes everything. Tampering is plain SQL, as in
``test_chain.py``, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from tests.audit.test_chain import _rehash_from

import overread.audit.chain as chain_module
import overread.audit.checkpoint as checkpoint_module
from overread.audit import (
    AuditAction,
    AutoCheckpointer,
    BreakReason,
    checkpoint_dir,
    event_hash,
    iter_records,
    latest_checkpoint,
    load_checkpoints,
    load_verification_ring,
    record_event,
    verify_chain,
    write_checkpoint,
)
from overread.errors import AuditError
from overread.service.db import Database

KEY = b"k" * 32


def _append(db: Database, n: int) -> None:
    for i in range(n):
        with db.session() as session:
            record_event(session, actor="alice", action=AuditAction.VIEW, details={"i": i})


def _sql(db: Database, *statements: str) -> None:
    with db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


class _Reads:
    """Counts the audit records read from the database (every read goes through one helper)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        original = chain_module._row_record

        def counting(row: Any) -> Any:
            self.count += 1
            return original(row)

        monkeypatch.setattr(chain_module, "_row_record", counting)


def _full(db: Database, directory: Path) -> Any:
    return verify_chain(db.engine, checkpoints=load_checkpoints(directory, KEY))


def _since_newest(db: Database, directory: Path) -> Any:
    return verify_chain(db.engine, since=latest_checkpoint(directory, KEY))


def test_periodic_checkpoints_read_only_the_records_since_the_last_one(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _Reads(monkeypatch)
    files_read: list[str] = []
    original_read = checkpoint_module.read_checkpoint

    def counting_read(path: Path, key: Any) -> Any:
        files_read.append(path.name)
        return original_read(path, key)

    monkeypatch.setattr(checkpoint_module, "read_checkpoint", counting_read)
    auto = AutoCheckpointer(database.engine, tmp_path, every_events=5, every_seconds=0)
    _append(database, 60)
    assert auto.check() is not None  # the first one after start: the whole chain
    assert reads.count == 60
    for round_ in range(3):
        _append(database, 5)
        reads.count, files_read[:] = 0, []
        written = auto.check()
        assert written is not None
        # The checkpointed record, its audit-checkpoint event and the 5 new ones.
        assert reads.count == 7, round_
        assert len(files_read) == 1  # the newest checkpoint file only, not all of them
    # The full verify still reads everything and matches every checkpoint.
    reads.count = 0
    ring = load_verification_ring(tmp_path)
    full = verify_chain(
        database.engine, checkpoints=load_checkpoints(checkpoint_dir(tmp_path), ring)
    )
    assert full.ok and full.checkpoints_checked == 4 and reads.count == full.count == 79


def test_incremental_result_counts_the_whole_chain(database: Database, tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    _append(database, 10)
    first = write_checkpoint(database.engine, directory, KEY)
    _append(database, 3)
    result = _since_newest(database, directory)
    assert result.ok and (result.count, result.head_seq, result.records_read) == (13, 13, 4)
    assert result.since == first.name and first.name in result.summary()
    # A checkpoint written incrementally has the same head and count as a full one.
    second = write_checkpoint(database.engine, directory, KEY, incremental=True)
    assert (second.head_seq, second.count, second.head_hash) == (
        13,
        13,
        _full(database, directory).head_hash,
    )
    assert latest_checkpoint(directory, KEY) == second


@pytest.mark.parametrize(
    ("statements", "rehash_from", "broken_seq", "reason"),
    [
        # a record after the checkpoint edited
        (
            ["UPDATE audit_events SET actor = 'mallory' WHERE seq = 8"],
            None,
            8,
            BreakReason.HASH_MISMATCH,
        ),
        # the checkpointed record edited
        (
            ["UPDATE audit_events SET actor = 'mallory' WHERE seq = 5"],
            None,
            5,
            BreakReason.HASH_MISMATCH,
        ),
        # the checkpointed record edited and everything re-hashed from it
        (
            ["UPDATE audit_events SET actor = 'mallory' WHERE seq = 5"],
            5,
            5,
            BreakReason.CHECKPOINT_MISMATCH,
        ),
        # the checkpointed record deleted
        (["DELETE FROM audit_events WHERE seq = 5"], None, 5, BreakReason.SEQ_GAP),
        # a record after it deleted
        (["DELETE FROM audit_events WHERE seq = 7"], None, 7, BreakReason.SEQ_GAP),
        # truncated to before the checkpoint, head row fixed
        (
            [
                "DELETE FROM audit_events WHERE seq >= 4",
                "UPDATE audit_chain_head SET seq = 3, "
                "hash = (SELECT hash FROM audit_events WHERE seq = 3)",
            ],
            None,
            4,
            BreakReason.TRUNCATED,
        ),
        # newest records after the checkpoint deleted, head row left
        (["DELETE FROM audit_events WHERE seq >= 8"], None, 8, BreakReason.TRUNCATED),
    ],
)
def test_incremental_check_catches_tampering_from_the_checkpoint_on(
    database: Database,
    tmp_path: Path,
    statements: list[str],
    rehash_from: int | None,
    broken_seq: int,
    reason: str,
) -> None:
    directory = tmp_path / "checkpoints"
    _append(database, 5)
    write_checkpoint(database.engine, directory, KEY)
    _append(database, 4)
    assert _since_newest(database, directory).ok
    _sql(database, *statements)
    if rehash_from is not None:
        _rehash_from(database, rehash_from)
    result = _since_newest(database, directory)
    assert (result.ok, result.broken_seq, result.reason) == (False, broken_seq, reason)
    with pytest.raises(AuditError, match="broken chain"):
        write_checkpoint(database.engine, directory, KEY, incremental=True)
    full = _full(database, directory)
    assert not full.ok  # the full verify agrees


def test_a_record_after_the_checkpoint_edited_and_rehashed_breaks_the_next_link(
    database: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "checkpoints"
    _append(database, 5)
    write_checkpoint(database.engine, directory, KEY)
    _append(database, 4)
    _sql(database, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 7")
    with database.engine.begin() as conn:
        edited = next(iter(iter_records(conn, after_seq=6)))
        conn.execute(
            text("UPDATE audit_events SET hash = :h WHERE seq = 7"),
            {"h": event_hash(edited.as_dict())},
        )
    result = _since_newest(database, directory)
    assert (result.ok, result.broken_seq, result.reason) == (
        False,
        8,
        BreakReason.PREV_HASH_MISMATCH,
    )


def test_an_edit_before_the_checkpoint_is_left_to_the_full_verify_and_not_laundered(
    database: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "checkpoints"
    _append(database, 6)
    write_checkpoint(database.engine, directory, KEY)
    _sql(database, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    _append(database, 2)
    # The incremental check does not read record 2 (documented) and signs the head...
    assert _since_newest(database, directory).ok
    write_checkpoint(database.engine, directory, KEY, incremental=True)
    # ...whose hash still commits to the original record 2: the full verify names it.
    full = _full(database, directory)
    assert (full.ok, full.broken_seq, full.reason) == (False, 2, BreakReason.HASH_MISMATCH)
    # A consistent rewrite before the checkpoint reaches the checkpointed record: caught.
    _rehash_from(database, 2)
    result = _since_newest(database, directory)
    assert (result.ok, result.broken_seq, result.reason) == (
        False,
        8,
        BreakReason.CHECKPOINT_MISMATCH,
    )


def test_an_edited_newest_checkpoint_file_is_refused(database: Database, tmp_path: Path) -> None:
    directory = tmp_path / "checkpoints"
    _append(database, 4)
    written = write_checkpoint(database.engine, directory, KEY)
    document = json.loads(written.path.read_text())
    document["head_seq"] = document["count"] = 2
    written.path.write_text(json.dumps(document))
    with pytest.raises(AuditError, match="signature does not match"):
        write_checkpoint(database.engine, directory, KEY, incremental=True)


def test_after_a_refusal_the_auto_checkpointer_verifies_the_whole_chain_again(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _Reads(monkeypatch)
    auto = AutoCheckpointer(database.engine, tmp_path, every_events=3, every_seconds=0)
    _append(database, 3)
    assert auto.check() is not None
    _append(database, 3)
    _sql(database, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 6")
    assert auto.check() is None  # caught incrementally
    _sql(database, "UPDATE audit_events SET actor = 'alice' WHERE seq = 6")  # put back
    auto._failed_at = None
    reads.count = 0
    assert auto.check() is not None
    assert reads.count == 7  # the whole chain, not only since the checkpoint


def test_an_older_checkpoint_renamed_to_pose_as_the_newest_is_refused(
    database: Database, tmp_path: Path
) -> None:
    directory = tmp_path / "checkpoints"
    _append(database, 3)
    older = write_checkpoint(database.engine, directory, KEY)
    _append(database, 3)
    write_checkpoint(database.engine, directory, KEY)
    older.path.rename(directory / "checkpoint-999999999999-x.json")
    with pytest.raises(AuditError, match="name says head seq 999999999999"):
        latest_checkpoint(directory, KEY)
    with pytest.raises(AuditError):
        write_checkpoint(database.engine, directory, KEY, incremental=True)


def test_the_auto_checkpointer_checks_the_whole_chain_again_after_a_day(
    database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads = _Reads(monkeypatch)
    clock = [1000.0]
    monkeypatch.setattr(checkpoint_module.time, "monotonic", lambda: clock[0])
    auto = AutoCheckpointer(database.engine, tmp_path, every_events=3, every_seconds=0)
    _append(database, 3)
    assert auto.check() is not None  # the first: full
    _append(database, 3)
    reads.count = 0
    assert auto.check() is not None
    assert reads.count < 7  # incremental within the day
    _append(database, 3)
    clock[0] += 86_400.0
    reads.count = 0
    assert auto.check() is not None
    assert reads.count >= 10  # a day after the full check: the whole chain again
    _append(database, 3)
    reads.count = 0
    assert auto.check() is not None
    assert reads.count < 7  # and incremental again after it
