"""Audit fixtures: one database engine per backend (SQLite file, fresh PostgreSQL DB)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from overread.audit import create_tables
from overread.service.db import Database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def database(
    request: pytest.FixtureRequest, tmp_path: Path, drop_every_table: Callable[[str], None]
) -> Iterator[Database]:
    """A gateway database with empty audit tables, on SQLite (WAL) or PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'overread.db'}"
    else:
        url = request.getfixturevalue("postgres_module_url")
    drop_every_table(url)
    db = Database(url)
    create_tables(db.engine)
    try:
        yield db
    finally:
        db.dispose()
