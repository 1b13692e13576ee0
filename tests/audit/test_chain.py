"""The hash chain: appends, tamper detection by direct SQL, transactions, concurrency.

Every tamper test edits the database the way an intruder with write access would
(plain SQL on ``audit_events``), on SQLite and on PostgreSQL, and checks that
verification names the record at fault.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from overread.audit import (
    AuditAction,
    AuditEvent,
    BreakReason,
    event_hash,
    iter_records,
    load_checkpoints,
    record_event,
    verify_chain,
    write_checkpoint,
)
from overread.audit.chain import GENESIS_HASH
from overread.errors import AuditError
from overread.service.db import Database, Study

KEY = b"k" * 32


def _append(db: Database, n: int, actor: str = "alice") -> None:
    for i in range(n):
        with db.session() as session:
            record_event(
                session,
                actor=actor,
                role="radiologist",
                action=AuditAction.VIEW,
                object_uids=[f"1.2.3.{i}"],
                details={"i": i, "source": "127.0.0.1", "ratio": 0.1 * i},
            )


def _sql(db: Database, *statements: str) -> None:
    with db.engine.begin() as conn:
        for statement in statements:
            conn.execute(text(statement))


def _rehash_from(db: Database, seq: int) -> None:
    """What a tamperer without the key can do: recompute every hash from ``seq`` on."""
    with db.engine.begin() as conn:
        prev = conn.execute(
            select(AuditEvent.hash).where(AuditEvent.seq == seq - 1)
        ).scalar_one_or_none()
        prev = prev or GENESIS_HASH
        for record in list(iter_records(conn, after_seq=seq - 1)):
            fields = {**record.as_dict(), "prev_hash": prev}
            digest = event_hash(fields)
            conn.execute(
                text("UPDATE audit_events SET prev_hash = :p, hash = :h WHERE seq = :s"),
                {"p": prev, "h": digest, "s": record.seq},
            )
            prev = digest
        conn.execute(
            text("UPDATE audit_chain_head SET hash = :h WHERE id = 1"),
            {"h": prev},
        )


def test_appended_chain_verifies_and_links(database: Database) -> None:
    _append(database, 5)
    result = verify_chain(database.engine)
    assert result.ok, result.summary()
    assert result.count == 5 and result.head_seq == 5
    with database.session() as session:
        records = list(iter_records(session))
    assert [r.seq for r in records] == [1, 2, 3, 4, 5]
    assert records[0].prev_hash == GENESIS_HASH
    for before, after in itertools.pairwise(records):
        assert after.prev_hash == before.hash
    assert records[2].details == {"i": 2, "source": "127.0.0.1", "ratio": 0.1 * 2}
    assert records[0].timestamp.endswith("Z") and len(records[0].timestamp) == 24
    assert result.summary().startswith("OK: 5 audit records")


def test_empty_chain_verifies(database: Database) -> None:
    result = verify_chain(database.engine)
    assert result.ok and result.count == 0


def test_edited_record_is_named(database: Database) -> None:
    _append(database, 5)
    _sql(database, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 3")
    result = verify_chain(database.engine)
    assert not result.ok
    assert (result.broken_seq, result.reason) == (3, BreakReason.HASH_MISMATCH)
    assert "record 3" in result.summary()


def test_edited_details_are_detected(database: Database) -> None:
    _append(database, 4)
    with database.engine.begin() as conn:
        conn.execute(
            AuditEvent.__table__.update()
            .where(AuditEvent.seq == 2)
            .values(details={"i": 1, "source": "10.0.0.66", "ratio": 0.1})
        )
    result = verify_chain(database.engine)
    assert (result.ok, result.broken_seq, result.reason) == (False, 2, BreakReason.HASH_MISMATCH)


def test_edited_and_rehashed_record_breaks_the_next_link(database: Database) -> None:
    _append(database, 5)
    _sql(database, "UPDATE audit_events SET action = 'feedback' WHERE seq = 3")
    with database.engine.begin() as conn:
        record = next(iter(iter_records(conn, after_seq=2)))
        conn.execute(
            text("UPDATE audit_events SET hash = :h WHERE seq = 3"),
            {"h": event_hash(record.as_dict())},
        )
    result = verify_chain(database.engine)
    assert (result.broken_seq, result.reason) == (4, BreakReason.PREV_HASH_MISMATCH)


def test_deleted_record_is_named(database: Database) -> None:
    _append(database, 6)
    _sql(database, "DELETE FROM audit_events WHERE seq = 3")
    result = verify_chain(database.engine)
    assert (result.ok, result.broken_seq, result.reason) == (False, 3, BreakReason.SEQ_GAP)
    assert "record 3 is missing" in result.message


def test_deleted_first_record_is_named(database: Database) -> None:
    _append(database, 3)
    _sql(database, "DELETE FROM audit_events WHERE seq IN (1, 2)")
    result = verify_chain(database.engine)
    assert (result.broken_seq, result.reason) == (1, BreakReason.SEQ_GAP)
    assert "records 1 to 2 are missing" in result.message


def test_reordered_records_are_named(database: Database) -> None:
    _append(database, 6)
    _sql(
        database,
        "UPDATE audit_events SET seq = 1000 WHERE seq = 3",
        "UPDATE audit_events SET seq = 3 WHERE seq = 4",
        "UPDATE audit_events SET seq = 4 WHERE seq = 1000",
    )
    result = verify_chain(database.engine)
    assert (result.ok, result.broken_seq, result.reason) == (False, 3, BreakReason.REORDERED)
    assert "follows record 4" in result.message


def test_truncation_is_caught_by_the_chain_head(database: Database) -> None:
    _append(database, 6)
    _sql(database, "DELETE FROM audit_events WHERE seq >= 5")
    result = verify_chain(database.engine)
    assert (result.ok, result.broken_seq, result.reason) == (False, 5, BreakReason.TRUNCATED)


def test_truncation_with_forged_head_is_caught_by_a_checkpoint(
    database: Database, tmp_path: Path
) -> None:
    _append(database, 6)
    directory = tmp_path / "checkpoints"
    written = write_checkpoint(database.engine, directory, KEY)
    assert written.head_seq == 6
    # The tamperer deletes the newest records and fixes the head row to match.
    _sql(
        database,
        "DELETE FROM audit_events WHERE seq >= 5",
        "UPDATE audit_chain_head SET seq = 4, hash = (SELECT hash FROM audit_events WHERE seq = 4)",
    )
    assert verify_chain(database.engine).ok  # consistent without the anchor...
    result = verify_chain(database.engine, checkpoints=load_checkpoints(directory, KEY))
    assert (result.ok, result.broken_seq, result.reason) == (False, 5, BreakReason.TRUNCATED)
    assert written.name in result.message


def test_consistent_rewrite_before_checkpoint_is_caught(database: Database, tmp_path: Path) -> None:
    _append(database, 6)
    directory = tmp_path / "checkpoints"
    write_checkpoint(database.engine, directory, KEY)
    _sql(database, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 2")
    _rehash_from(database, 2)
    assert verify_chain(database.engine).ok  # internally consistent again...
    result = verify_chain(database.engine, checkpoints=load_checkpoints(directory, KEY))
    assert (result.ok, result.broken_seq, result.reason) == (
        False,
        6,
        BreakReason.CHECKPOINT_MISMATCH,
    )


def test_rewrite_after_last_checkpoint_is_not_detectable(
    database: Database, tmp_path: Path
) -> None:
    """The documented limit: records after the newest checkpoint can be rewritten."""
    _append(database, 4)
    directory = tmp_path / "checkpoints"
    write_checkpoint(database.engine, directory, KEY)
    _append(database, 3)
    _sql(database, "UPDATE audit_events SET actor = 'mallory' WHERE seq = 6")
    _rehash_from(database, 6)
    result = verify_chain(database.engine, checkpoints=load_checkpoints(directory, KEY))
    assert result.ok and result.checkpoints_checked == 1


def test_checkpoint_refuses_a_broken_chain(database: Database, tmp_path: Path) -> None:
    _append(database, 3)
    _sql(database, "DELETE FROM audit_events WHERE seq = 2")
    with pytest.raises(AuditError, match="broken chain"):
        write_checkpoint(database.engine, tmp_path / "checkpoints", KEY)


def test_rolled_back_action_leaves_no_audit_record(database: Database) -> None:
    uid = f"2.25.{uuid.uuid4().int}"
    with pytest.raises(RuntimeError, match="store failed"), database.session() as session:
        session.add(Study(study_instance_uid=uid))
        record_event(session, actor="ae:MODALITY", action=AuditAction.RECEIVE, object_uids=[uid])
        raise RuntimeError("store failed")
    with database.session() as session:
        assert session.scalar(select(func.count()).select_from(AuditEvent)) == 0
        assert session.scalar(select(Study).where(Study.study_instance_uid == uid)) is None
    # The chain lock was released and the head not advanced: the next append is record 1.
    with database.session() as session:
        session.add(Study(study_instance_uid=uid))
        written = record_event(
            session, actor="ae:MODALITY", action=AuditAction.RECEIVE, object_uids=[uid]
        )
    assert written.seq == 1
    with database.session() as session:
        assert session.scalar(select(Study.id).where(Study.study_instance_uid == uid)) is not None
    assert verify_chain(database.engine).ok


def test_concurrent_appends_keep_one_chain(database: Database) -> None:
    threads, per_thread = 4, 15
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads)

    def writer(n: int) -> None:
        try:
            barrier.wait()
            for i in range(per_thread):
                with database.session() as session:
                    session.add(Study(study_instance_uid=f"2.25.{uuid.uuid4().int}"))
                    record_event(
                        session,
                        actor=f"worker-{n}",
                        action=AuditAction.INFERENCE,
                        details={"i": i},
                    )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert errors == []
    result = verify_chain(database.engine)
    assert result.ok, result.summary()
    assert result.count == threads * per_thread
    with database.session() as session:
        actors = session.scalars(select(AuditEvent.actor)).all()
    assert sorted(set(actors)) == [f"worker-{n}" for n in range(threads)]


def test_unknown_action_and_bad_details_are_refused(database: Database) -> None:
    with database.session() as session:
        with pytest.raises(AuditError, match="unknown audit action"):
            record_event(session, actor="a", action="teleport")
        with pytest.raises(AuditError, match="1-128"):
            record_event(session, actor="x" * 129, action="view")
        with pytest.raises(AuditError, match="canonical JSON"):
            record_event(session, actor="a", action="view", details={"x": float("nan")})
    assert verify_chain(database.engine).count == 0


def test_recording_without_audit_tables_says_what_to_do(tmp_path: Path) -> None:
    # The gateway's Database creates the audit tables; a database made some other
    # way may lack them, and recording must then say what is missing.
    db = Database(f"sqlite:///{tmp_path / 'bare.db'}", create=False)
    with pytest.raises(AuditError, match="create_tables"), db.session() as session:
        record_event(session, actor="a", action=AuditAction.RECEIVE)
    db.dispose()


_WRITER = """
import sys
from overread.audit import record_event
from overread.service.db import Database

db = Database(sys.argv[1], create=False)
for i in range(int(sys.argv[3])):
    with db.session() as session:
        record_event(session, actor=sys.argv[2], action="inference", details={"i": i})
db.dispose()
"""


def test_concurrent_processes_keep_one_chain(database: Database) -> None:
    """Separate processes (``serve`` plus ``overread worker``) share one chain."""
    url = database.engine.url.render_as_string(hide_password=False)
    writers = [
        subprocess.Popen([sys.executable, "-c", _WRITER, url, f"proc-{n}", "12"]) for n in range(3)
    ]
    assert [w.wait(timeout=300) for w in writers] == [0, 0, 0]
    result = verify_chain(database.engine)
    assert result.ok, result.summary()
    assert result.count == 36
