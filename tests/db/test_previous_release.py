"""A database made by the release before schema versions: its real SQLite schema,
frozen in ``data/previous_release_sqlite.sql``, not rebuilt from today's models.

Today's models rebuilding "the previous release" could not catch a baseline migration
that differs from what that release really made; this file can.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

# Every package's tables, registered on the one Base.
import overread.audit.schema
import overread.security.schema
import overread.service.db
import overread.triage.schema  # noqa: F401
from overread.db import Base, SchemaState, head_revision, schema_status, upgrade_schema
from overread.db.schema import BASELINE_TABLES

DDL = Path(__file__).parent / "data" / "previous_release_sqlite.sql"
QUERY = "SELECT type, name, tbl_name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"


def _schema(path: Path) -> dict[tuple[str, str], str]:
    """The baseline's tables and their indexes (later revisions add tables of their own)."""
    with sqlite3.connect(path) as con:
        rows = con.execute(QUERY.replace("type, name, sql", "type, name, sql, tbl_name"))
        return {(t, n): s for t, n, s, table in rows if table in BASELINE_TABLES}


def test_previous_release_database_is_adopted_unchanged(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as con:
        con.executescript(DDL.read_text(encoding="utf-8"))
    before = _schema(old)
    engine = sa.create_engine(f"sqlite:///{old}")
    try:
        assert schema_status(engine).state is SchemaState.UNVERSIONED
        was, now = upgrade_schema(engine)
        assert was.state is SchemaState.UNVERSIONED
        assert now.state is SchemaState.CURRENT and now.revision == head_revision()
    finally:
        engine.dispose()
    # Adopting recorded the version and changed no table, index or head row.
    assert _schema(old) == before
    with sqlite3.connect(old) as con:
        assert con.execute("SELECT id, seq FROM audit_chain_head").fetchall() == [(1, 0)]


def test_previous_release_schema_equals_todays_models(tmp_path: Path) -> None:
    """What the previous release made is exactly what today's models declare, so the
    baseline revision that adopts it describes it truly."""
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as con:
        con.executescript(DDL.read_text(encoding="utf-8"))
    models = tmp_path / "models.db"
    engine = sa.create_engine(f"sqlite:///{models}")
    Base.metadata.create_all(
        engine, tables=[t for n, t in Base.metadata.tables.items() if n in BASELINE_TABLES]
    )
    engine.dispose()
    assert _schema(old) == _schema(models)
