"""Checkpoints the gateway writes itself: by count, by time, never over a broken chain."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from sqlalchemy import select, text

from overread.audit import (
    AuditAction,
    AuditEvent,
    AutoCheckpointer,
    BreakReason,
    checkpoint_dir,
    load_checkpoints,
    load_verification_ring,
    record_event,
    verify_chain,
)
from overread.service.db import Database


def _append(db: Database, n: int) -> None:
    for i in range(n):
        with db.session() as session:
            record_event(session, actor="alice", action=AuditAction.VIEW, details={"i": i})


def _checkpoint_events(db: Database) -> list[AuditEvent]:
    with db.session() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.AUDIT_CHECKPOINT.value)
        ).all()
        session.expunge_all()
        return list(rows)


def test_a_checkpoint_is_written_every_n_events_and_catches_truncation(
    database: Database, tmp_path: Path
) -> None:
    auto = AutoCheckpointer(database.engine, tmp_path, every_events=5, every_seconds=0)
    _append(database, 4)
    assert auto.pending() == 4 and auto.check() is None  # not yet due
    _append(database, 1)
    first = auto.check()
    assert first is not None and first.head_seq == 5
    # Its own audit-checkpoint event does not make another one due.
    assert auto.pending() == 0 and auto.check() is None
    _append(database, 5)
    second = auto.check()
    assert second is not None and second.head_seq == 11
    events = _checkpoint_events(database)
    assert [e.details["file"] for e in events] == [first.name, second.name]
    assert all(e.actor == "service:audit" for e in events)
    # Someone deletes the newest records and fixes the head row: the anchor shows it.
    with database.engine.begin() as connection:
        connection.execute(text("DELETE FROM audit_events WHERE seq >= 8"))
        connection.execute(
            text(
                "UPDATE audit_chain_head SET seq = 7, "
                "hash = (SELECT hash FROM audit_events WHERE seq = 7)"
            )
        )
    ring = load_verification_ring(tmp_path)
    result = verify_chain(
        database.engine, checkpoints=load_checkpoints(checkpoint_dir(tmp_path), ring)
    )
    assert (result.ok, result.reason) == (False, BreakReason.TRUNCATED)
    assert second.name in result.message  # names the checkpoint it failed against


def test_after_the_interval_any_new_event_is_checkpointed(
    database: Database, tmp_path: Path
) -> None:
    auto = AutoCheckpointer(database.engine, tmp_path, every_events=0, every_seconds=60)
    _append(database, 2)
    assert not auto.due(auto.pending())  # within the interval
    assert auto.due(auto.pending(), now=time.monotonic() + 61)
    auto._last_at -= 61
    assert auto.check() is not None
    auto._last_at -= 61
    assert auto.check() is None  # nothing new since: no empty checkpoints


def test_a_broken_chain_is_not_signed_and_the_failure_is_logged(
    database: Database, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    auto = AutoCheckpointer(database.engine, tmp_path, every_events=2, every_seconds=0)
    _append(database, 3)
    with database.engine.begin() as connection:
        connection.execute(text("UPDATE audit_events SET actor = 'mallory' WHERE seq = 2"))
    with caplog.at_level(logging.ERROR, logger="overread.audit.checkpoint"):
        assert auto.check() is None
    assert "not writing a checkpoint over a broken chain" in caplog.text
    assert not list(checkpoint_dir(tmp_path).glob("checkpoint-*.json"))
    # Not re-verified and re-logged at every poll: it waits for the interval.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="overread.audit.checkpoint"):
        assert auto.check() is None
    assert caplog.text == ""
    auto._failed_at = time.monotonic() - auto.retry_seconds - 1
    with caplog.at_level(logging.ERROR, logger="overread.audit.checkpoint"):
        assert auto.check() is None
    assert "broken chain" in caplog.text


def test_the_background_thread_checkpoints_and_stops(database: Database, tmp_path: Path) -> None:
    auto = AutoCheckpointer(
        database.engine, tmp_path, every_events=3, every_seconds=0, poll_seconds=0.05
    )
    auto.start()
    try:
        _append(database, 3)
        deadline = time.monotonic() + 20
        while not auto.written and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        auto.stop()
    assert [c.head_seq for c in auto.written] == [3]
    assert (
        AutoCheckpointer(database.engine, tmp_path, every_events=0, every_seconds=0).enabled
        is False
    )
