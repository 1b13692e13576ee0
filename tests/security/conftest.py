"""Security fixtures: a database with the access-control and audit tables."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from overread.audit import AuditBase
from overread.security import SecurityBase, create_tables
from overread.service.db import Database

POSTGRES_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@pytest.fixture(scope="module")
def postgres_module_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test module, dropped afterwards."""
    psycopg = pytest.importorskip("psycopg")
    name = f"overread_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(POSTGRES_ADMIN, autocommit=True)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL on 127.0.0.1:5432 not reachable: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
