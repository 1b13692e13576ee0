"""``overread jobs``: dead letters listed and brought back from the command line, audited."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from overread.audit import AuditAction, AuditEvent
from overread.config import Settings
from overread.service.config import service_config
from overread.service.db import JobKind, JobState
from overread.service.node import open_queue


def _dead_letter(data_dir: Path) -> int:
    config = service_config(Settings(data_dir=data_dir), max_attempts=1)
    database, _, queue = open_queue(config)
    try:
        job_id, _ = queue.enqueue(
            study_instance_uid="1.2.3",
            model_name="cxr-default",
            model_version="1.1.0",
            kind=JobKind.EXPORT,
            destination="PACS",
        )
        assert queue.claim("w", lease_seconds=60) is not None
        assert queue.mark_failed(job_id, "w", "connection refused") == JobState.DEAD_LETTERED.value
        return job_id
    finally:
        database.dispose()


def test_dead_letters_are_listed_and_requeued_with_an_audit_record(
    tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("OVERREAD_DATA_DIR", str(data_dir))
    job_id = _dead_letter(data_dir)
    status, out, err = run_cli("jobs", "list", "--state", "dead_lettered", "--json")
    assert status == 0, err
    (listed,) = json.loads(out)["jobs"]
    assert (listed["id"], listed["destination"], listed["error"]) == (
        job_id,
        "PACS",
        "connection refused",
    )
    status, out, err = run_cli("jobs", "requeue", str(job_id))
    assert status == 0, err
    assert f"job {job_id}: requeued" in out
    status, out, _ = run_cli("jobs", "list", "--state", "queued")
    assert out.startswith(f"{job_id}\tqueued\texport\tPACS\t1.2.3")
    # A job that is not dead any more, or does not exist: one line each, exit 1.
    status, out, err = run_cli("jobs", "requeue", str(job_id), "999")
    assert status == 1
    assert err.splitlines() == [
        f"error: job {job_id}: is queued, not failed or dead-lettered",
        "error: job 999: no such job",
    ]
    config = service_config(Settings(data_dir=data_dir))
    database, _, _ = open_queue(config)
    try:
        with database.session() as session:
            (event,) = session.scalars(
                select(AuditEvent).where(AuditEvent.action == AuditAction.CONFIG_CHANGE.value)
            ).all()
            assert event.details == {
                "change": "requeue",
                "job_id": job_id,
                "was": "dead_lettered",
                "via": "cli",
            }
    finally:
        database.dispose()


def test_bad_job_arguments_are_one_line_errors(tmp_path: Path, run_cli) -> None:
    status, _, err = run_cli("jobs", "requeue", "--data-dir", tmp_path)
    assert (status, err) == (2, "error: name job ids or give --all-dead\n")
    status, _, err = run_cli("jobs", "list", "--state", "lost", "--data-dir", tmp_path)
    assert status == 2 and err.startswith("error: unknown job state 'lost'")
    status, _, err = run_cli("serve", "--retry-for", "a while", "--data-dir", tmp_path)
    assert (status, err) == (2, "error: not a duration: 'a while' (e.g. 24h, 90m, 30s, 2d)\n")


def test_durations() -> None:
    from overread.cli.options import parse_duration

    assert [parse_duration(t) for t in ("24h", "90m", "30s", "2d", "15", "1.5h")] == [
        86400.0,
        5400.0,
        30.0,
        172800.0,
        15.0,
        5400.0,
    ]
