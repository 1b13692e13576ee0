"""Shared fixtures."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from overread.cli import main


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run ``overread ARGS`` in-process; return (exit status, stdout, stderr)."""

    def _run(*args: str | Path) -> tuple[int, str, str]:
        status = main([str(a) for a in args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return _run


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    """Start gateways in-process (DICOM and HTTP on free loopback ports), stopped after the test.

    ``start_gateway(service_options={...}, **config)``: ``config`` overrides the service
    configuration (one worker and short waits by default), ``service_options`` go to
    the gateway object (``artifacts``, ``registry``, ...). Data lives in ``tmp_path/data``.
    """
    from overread.config import Settings
    from overread.harness.gateway import QUICK_TIMINGS, loopback_config, running_gateway

    with contextlib.ExitStack() as running:

        def _start(*, service_options: dict[str, Any] | None = None, **overrides: Any) -> Any:
            values = {"http_port": 0, **QUICK_TIMINGS, **overrides}
            config = loopback_config(Settings(data_dir=tmp_path / "data"), **values)
            return running.enter_context(
                running_gateway(config, stop_timeout=10, **(service_options or {}))
            )

        yield _start


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


def _drop_every_table(url: str) -> None:
    from sqlalchemy import MetaData, create_engine

    engine = create_engine(url)
    try:
        tables = MetaData()
        tables.reflect(engine)
        tables.drop_all(engine)
    finally:
        engine.dispose()


@pytest.fixture(scope="session")
def drop_every_table() -> Callable[[str], None]:
    """Empty a test database: drop every table, the schema version's included.

    Opening it again then creates it afresh at the current schema version.
    """
    return _drop_every_table
