"""Audit fixtures: one database engine per backend (SQLite file, fresh PostgreSQL DB)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overread.audit import AuditBase, create_tables
from overread.service.db import Database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A gateway database with empty audit tables, on SQLite (WAL) or PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'overread.db'}"
    else:
        url = request.getfixturevalue("postgres_module_url")
    db = Database(url, create=False)
    AuditBase.metadata.drop_all(db.engine)
    db.create_tables()
    create_tables(db.engine)
    try:
        yield db
    finally:
        db.dispose()
