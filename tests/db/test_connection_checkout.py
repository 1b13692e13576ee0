"""Checking a pooled connection out: a server's is pinged first (it may have dropped
while pooled), a SQLite file's is not (it cannot drop; the ping was one more statement
per session on the path from an image to its result)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa

from overread.db import Database


def test_a_sqlite_session_runs_no_ping_statement(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'overread.db'}", create=False)
    statements: list[str] = []

    @sa.event.listens_for(db.engine, "connect")
    def _trace(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(statements.append)

    try:
        for _ in range(3):  # the second and third check a pooled connection out
            with db.session() as session:
                assert session.execute(sa.text("SELECT 2")).scalar() == 2
    finally:
        db.dispose()
    assert statements.count("SELECT 2") == 3
    assert "SELECT 1" not in statements


def test_a_server_connection_is_still_checked_before_use() -> None:
    db = Database("postgresql+psycopg://postgres@127.0.0.1:5432/postgres", create=False)
    try:
        assert db.engine.pool._pre_ping is True
    finally:
        db.dispose()
