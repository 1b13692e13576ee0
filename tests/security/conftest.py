"""Security fixtures: a database with the access-control and audit tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overread.audit import AuditBase
from overread.security import SecurityBase, create_tables
from overread.service.db import Database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """Empty users, tokens, throttle and audit tables on SQLite or PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'overread.db'}"
    else:
        url = request.getfixturevalue("postgres_module_url")
    db = Database(url, create=False)
    SecurityBase.metadata.drop_all(db.engine)
    AuditBase.metadata.drop_all(db.engine)
    create_tables(db.engine)
    try:
        yield db
    finally:
        db.dispose()
