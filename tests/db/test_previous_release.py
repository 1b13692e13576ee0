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
from overread.db import SchemaState, head_revision, schema_status, upgrade_schema
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
    # Adopting recorded the version and changed no table, index or head row: the
    # later revisions then made it exactly what a new database is.
    assert _schema(old) == _schema(_migrated(tmp_path / "new.db", head_revision()))
    baseline = tmp_path / "baseline.db"
    with sqlite3.connect(baseline) as con:
        con.executescript(DDL.read_text(encoding="utf-8"))
    assert _schema(_migrated(baseline, "0001")) == before
    with sqlite3.connect(old) as con:
        assert con.execute("SELECT id, seq FROM audit_chain_head").fetchall() == [(1, 0)]


def _migrated(path: Path, revision: str) -> Path:
    """``path``'s database migrated to ``revision`` (created when empty)."""
    from alembic import command

    from overread.db.schema import alembic_config

    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), revision)
    engine.dispose()
    return path


def test_previous_release_schema_equals_the_baseline_revision(tmp_path: Path) -> None:
    """What the previous release made is exactly what the baseline revision creates,
    so the baseline that adopts it describes it truly (today's models are checked
    against the head revision in test_schema.py)."""
    old = tmp_path / "old.db"
    with sqlite3.connect(old) as con:
        con.executescript(DDL.read_text(encoding="utf-8"))
    assert _schema(old) == _schema(_migrated(tmp_path / "baseline.db", "0001"))
