"""Writers of one process to one SQLite file take turns on a lock: a writer waiting
for another is woken when that one commits, not by SQLite's busy handler, whose
sleeps grow to 25 ms and more however soon the lock is free."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import sqlalchemy as sa

from overread.db import Database


def _database(tmp_path: Path) -> Database:
    db = Database(f"sqlite:///{tmp_path / 'overread.db'}", create=False)
    with db.engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)"))
    return db


def test_a_waiting_writer_goes_on_as_soon_as_the_writer_before_it_commits(
    tmp_path: Path,
) -> None:
    db = _database(tmp_path)
    waits: list[float] = []
    try:
        for _ in range(5):
            holding, release = threading.Event(), threading.Event()
            committed: list[float] = []

            def first(
                holding: threading.Event = holding,
                release: threading.Event = release,
                committed: list[float] = committed,
            ) -> None:
                with db.session() as session:
                    session.execute(sa.text("INSERT INTO t (v) VALUES ('first')"))
                    holding.set()
                    release.wait(10)
                    time.sleep(0.06)  # still holding the lock when the other starts
                committed.append(time.monotonic())

            thread = threading.Thread(target=first)
            thread.start()
            holding.wait(10)
            release.set()
            with db.session() as session:
                session.execute(sa.text("INSERT INTO t (v) VALUES ('second')"))
                wrote = time.monotonic()
            thread.join(10)
            waits.append(wrote - committed[0])
        with db.session() as session:
            assert session.execute(sa.text("SELECT count(*) FROM t")).scalar() == 10
    finally:
        db.dispose()
    # SQLite's busy handler, retrying at 1, 2, 5, 10, 15 ms... after a first wait of
    # 60 ms (53, then 78 ms), wakes the second writer about 18 ms after it committed.
    assert sorted(waits)[2] < 0.008, waits


def test_reads_do_not_wait_for_a_writer(tmp_path: Path) -> None:
    db = _database(tmp_path)
    try:
        with db.session() as writer:
            writer.execute(sa.text("INSERT INTO t (v) VALUES ('x')"))
            started = time.monotonic()
            with db.session() as reader:
                assert reader.execute(sa.text("SELECT count(*) FROM t")).scalar() == 0
            assert time.monotonic() - started < 1.0
        with db.session() as session:
            session.execute(sa.text("INSERT INTO t (v) VALUES ('y')"))  # the turn was given back
    finally:
        db.dispose()
