"""Upgrading a data directory made before the schema was versioned, and refusing to
serve a database at another schema version."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from pydicom.uid import generate_uid

import overread.triage.schema  # noqa: F401  (registers the worklist tables on Base)
from overread.audit import AuditAction, AuditChainHead, record_event, verify_chain
from overread.audit.schema import GENESIS_HASH, HEAD_ID
from overread.db import Base, SchemaState, head_revision, schema_status
from overread.db.schema import BASELINE_TABLES
from overread.security import Role, add_user, issue_token
from overread.service.db import Database, JobKind, JobState, Result, utcnow
from overread.service.ingest import Ingestor
from overread.service.jobs import JobQueue
from overread.service.store import ObjectStore

MODEL = {"model_name": "cxr-default", "model_version": "1.1.0"}


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("OVERREAD_")}


def _overread(*args: str | Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``overread ARGS`` in its own process, as an operator runs it."""
    return subprocess.run(
        [sys.executable, "-m", "overread", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=timeout,
    )


def _database_args(url: str, data_dir: Path) -> list[str | Path]:
    # SQLite: the default database of the data dir; PostgreSQL: named by URL.
    return ["--data-dir", data_dir] if url.startswith("sqlite") else ["--database-url", url]


def _previous_release(url: str) -> None:
    """Every table as the release before schema versioning made them on start:
    ``create_all`` and the audit chain's head row, no ``alembic_version``."""
    engine = sa.create_engine(url)
    Base.metadata.create_all(
        engine, tables=[t for n, t in Base.metadata.tables.items() if n in BASELINE_TABLES]
    )
    with engine.begin() as conn:
        conn.execute(sa.insert(AuditChainHead).values(id=HEAD_ID, seq=0, hash=GENESIS_HASH))
    engine.dispose()


def _fill(url: str, data_dir: Path, dx_factory: Callable[..., Path]) -> list[str]:
    """Studies, instances, jobs, a result, users and audit events, through the real APIs."""
    db = Database(url, create=False)
    studies = [generate_uid() for _ in range(3)]
    ingestor = Ingestor(db, ObjectStore(data_dir / "objects"))
    for study in studies:
        for _ in range(2):
            ingestor.ingest_file(dx_factory(study_uid=study), calling_ae="MODALITY")
    queue = JobQueue(db)
    for study in studies:
        queue.enqueue(study_instance_uid=study, kind=JobKind.INFER, **MODEL)
    job = queue.claim("worker-1", lease_seconds=60)
    assert job is not None
    with db.session() as session:
        session.add(
            Result(
                job_id=job.id,
                study_instance_uid=job.study_instance_uid,
                summary={"instances": [], "sop_instance_uids": []},
                artifacts=[],
                created_at=utcnow(),
                **MODEL,
            )
        )
        queue.mark_succeeded(session, job.id, "worker-1")
        record_event(
            session,
            actor="worker-1",
            action=AuditAction.INFERENCE,
            object_uids=[job.study_instance_uid],
        )
    queue.enqueue(
        study_instance_uid=job.study_instance_uid,
        kind=JobKind.EXPORT,
        destination="PACS",
        **MODEL,
    )
    with db.session() as session:
        add_user(session, "reader", Role.RADIOLOGIST, password="correct horse 1", actor="tests")
        issue_token(session, "reader", actor="tests")
    db.dispose()
    return studies


def _snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in primary-key order."""
    engine = sa.create_engine(url)
    tables = sa.MetaData()
    tables.reflect(engine, only=sorted(BASELINE_TABLES))
    rows: dict[str, list[tuple[Any, ...]]] = {}
    with engine.connect() as conn:
        for name, table in tables.tables.items():
            order = list(table.primary_key.columns)
            rows[name] = [tuple(r) for r in conn.execute(sa.select(table).order_by(*order))]
    engine.dispose()
    return rows


def test_upgrade_keeps_every_study_result_job_and_audit_event(
    database_url: str, tmp_path: Path, dx_factory: Callable[..., Path], run_cli: Any
) -> None:
    data_dir = tmp_path
    where = _database_args(database_url, data_dir)
    _previous_release(database_url)
    studies = _fill(database_url, data_dir, dx_factory)
    before = _snapshot(database_url)
    assert len(before["studies"]) == 3 and len(before["instances"]) == 6
    assert len(before["results"]) == 1 and len(before["jobs"]) == 4
    assert len(before["audit_events"]) >= 8  # six receipts, an inference, user changes
    assert {row[1] for row in before["studies"]} == set(studies)

    # This overread will not run on it until it is upgraded.
    status, _, err = run_cli("worker", *where)
    assert status == 2 and "run `overread db upgrade`" in err and len(err.splitlines()) == 1

    upgraded = _overread("db", "upgrade", *where)
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"unversioned schema adopted as {head_revision()}" in upgraded.stdout
    current = _overread("db", "current", *where)
    assert current.returncode == 0 and f"{head_revision()} (current)" in current.stdout

    assert _snapshot(database_url) == before  # every row as it was
    verified = _overread("audit", "verify", *where)
    assert verified.returncode == 0, verified.stdout + verified.stderr

    # And the gateway carries on with it: the queued work is there, the chain continues.
    db = Database(database_url)
    try:
        queue = JobQueue(db)
        assert queue.counts() == {
            JobState.QUEUED.value: 3,
            JobState.SUCCEEDED.value: 1,
        }
        export = queue.claim("worker-2", lease_seconds=60, kinds=[JobKind.EXPORT])
        assert export is not None and export.destination == "PACS"
        with db.session() as session:
            record_event(session, actor="worker-2", action=AuditAction.SEND)
        result = verify_chain(db.engine)
        assert result.ok and result.count == len(before["audit_events"]) + 1
    finally:
        db.dispose()
    again, out, _ = run_cli("db", "upgrade", *where)
    assert again == 0 and f"already at {head_revision()}" in out


def _stamp(url: str, revision: str) -> None:
    db = Database(url)
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    db.dispose()


def test_serve_refuses_a_newer_schema_with_one_line(database_url: str, tmp_path: Path) -> None:
    _stamp(database_url, "9999")
    served = _overread(
        "serve", *_database_args(database_url, tmp_path), "--dicom-port", "0", "--http-port", "0"
    )
    assert served.returncode == 2
    assert served.stderr.startswith(
        f"error: database schema 9999 is newer than this overread ({head_revision()}); "
    )
    assert len(served.stderr.splitlines()) == 1 and "Traceback" not in served.stderr
    assert "overread serve:" not in served.stdout  # it never started
    engine = sa.create_engine(database_url)
    assert schema_status(engine).revision == "9999"  # and left the database alone
    engine.dispose()


@pytest.mark.parametrize("command", ["serve", "worker", "db upgrade"])
def test_an_unknown_schema_is_refused_with_one_line(
    database_url: str, tmp_path: Path, run_cli: Any, command: str
) -> None:
    _stamp(database_url, "f00dfeed")
    status, out, err = run_cli(
        *command.split(),
        *_database_args(database_url, tmp_path),
        *(["--dicom-port", "0", "--http-port", "0"] if command == "serve" else []),
    )
    assert status == 2 and out == ""
    assert err.startswith(
        f"error: database schema f00dfeed is unknown to this overread ({head_revision()}); "
    )
    assert len(err.splitlines()) == 1
    engine = sa.create_engine(database_url)
    assert schema_status(engine).state is SchemaState.UNKNOWN
    engine.dispose()
