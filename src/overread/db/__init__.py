"""The persistence floor: one declarative base, the UTC timestamp type, the database.

Every package's tables (the gateway's, triage's, the audit chain, access control)
declare on :class:`Base`, so one metadata describes the whole schema and one set of
Alembic migrations (:mod:`overread.db.migrations`) moves it between versions.
:class:`Database` wraps the engine and session factory for SQLite (WAL) and
PostgreSQL; opening it creates a new database at the current schema version and
refuses one at another (:mod:`overread.db.schema`). This package imports nothing of
ours except :mod:`overread.errors`.
"""

from overread.db.base import Base, UTCDateTime, utcnow
from overread.db.database import Database
from overread.db.schema import (
    SchemaState,
    SchemaStatus,
    ensure_schema,
    head_revision,
    schema_status,
    upgrade_schema,
)

__all__ = [
    "Base",
    "Database",
    "SchemaState",
    "SchemaStatus",
    "UTCDateTime",
    "ensure_schema",
    "head_revision",
    "schema_status",
    "upgrade_schema",
    "utcnow",
]
