"""``overread jobs``: see the job queue and bring dead letters back, without the web UI."""

from __future__ import annotations

import getpass
import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from overread.cli.app import app
from overread.cli.options import service_settings
from overread.errors import ConfigError

if TYPE_CHECKING:
    from overread.service.db import Database
    from overread.service.jobs import JobQueue

jobs_app = typer.Typer(help="The job queue: list jobs, requeue dead letters.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")

DATA_DIR = typer.Option(None, "--data-dir", help="The gateway's data dir.")
DATABASE_URL = typer.Option(None, "--database-url", help="SQLAlchemy URL.")


def _operator() -> str:
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):
        return "os:unknown"


def _queue(data_dir: Path | None, database_url: str | None) -> tuple[Database, JobQueue]:
    from overread.service.node import open_queue

    config = service_settings(data_dir, database_url)
    database, _, queue = open_queue(config)
    return database, queue


@jobs_app.command("list")
def list_jobs(
    state: str | None = typer.Option(
        None, "--state", help="queued, running, failed, dead_lettered, succeeded, received."
    ),
    limit: int = typer.Option(50, "--limit", min=1, help="Newest jobs shown."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object with the jobs."),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Jobs, newest first (tab-separated, or --json)."""
    from sqlalchemy import select

    from overread.service.db import Job, JobState
    from overread.service.jobs import job_to_dict

    known = [s.value for s in JobState]
    if state is not None and state not in known:
        raise ConfigError(f"unknown job state {state!r} (known: {', '.join(known)})")
    database, _ = _queue(data_dir, database_url)
    try:
        with database.session() as session:
            query = select(Job).order_by(Job.id.desc()).limit(limit)
            if state is not None:
                query = query.where(Job.state == state)
            rows = [job_to_dict(j) for j in session.scalars(query).all()]
    finally:
        database.dispose()
    if as_json:
        typer.echo(json.dumps({"jobs": rows}, sort_keys=True, default=str))
        return
    for row in rows:
        typer.echo(
            "\t".join(
                str(v)
                for v in (
                    row["id"],
                    row["state"],
                    row["kind"],
                    row["destination"] or row["model_name"],
                    row["study_instance_uid"],
                    row["attempts"],
                    (row["error"] or "").splitlines()[0][:120] if row["error"] else "",
                )
            )
        )


@jobs_app.command("requeue")
def requeue(
    job_ids: list[int] = typer.Argument(None, help="Job ids (see `overread jobs list`)."),
    all_dead: bool = typer.Option(
        False, "--all-dead", help="Every dead-lettered job (e.g. after a long outage)."
    ),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Put dead-lettered (or failed) jobs back in the queue with a fresh retry period.

    Each requeue is audited (config-change), as through the REST API. Exit 1 if any
    job could not be requeued (unknown, or not failed or dead-lettered).
    """
    from sqlalchemy import select

    from overread.audit import AuditAction, record_event
    from overread.service.db import Job, JobState

    if not job_ids and not all_dead:
        raise ConfigError("name job ids or give --all-dead")
    database, queue = _queue(data_dir, database_url)
    failures = 0
    try:
        ids = list(job_ids or [])
        if all_dead:
            with database.session() as session:
                ids += list(
                    session.scalars(
                        select(Job.id).where(Job.state == JobState.DEAD_LETTERED.value)
                    ).all()
                )
        for job_id in dict.fromkeys(ids):
            job = queue.get(job_id)
            if job is None:
                typer.echo(f"error: job {job_id}: no such job", err=True)
                failures += 1
                continue
            if not queue.requeue(job_id):
                typer.echo(
                    f"error: job {job_id}: is {job.state}, not failed or dead-lettered", err=True
                )
                failures += 1
                continue
            with database.session() as session:
                record_event(
                    session,
                    actor=_operator(),
                    role="operator",
                    action=AuditAction.CONFIG_CHANGE,
                    object_uids=[job.study_instance_uid, f"job:{job_id}"],
                    details={"change": "requeue", "job_id": job_id, "was": job.state, "via": "cli"},
                )
            typer.echo(f"job {job_id}: requeued ({job.kind}, was {job.state})")
    finally:
        database.dispose()
    if failures:
        raise typer.Exit(1)
