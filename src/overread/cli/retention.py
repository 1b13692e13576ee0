"""``overread retention``: delete images, results and finished jobs past their period.

The policy is the ``[service.retention]`` table of ``overread.toml``; ``--images-days``,
``--results-days`` and ``--jobs-days`` override it for one run (try a policy with
``--dry-run`` first). The audit trail is never deleted.
"""

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
    from overread.service.retention import RetentionReport

retention_app = typer.Typer(
    help="Retention: delete received images, results and finished jobs on schedule.",
    no_args_is_help=True,
)
app.add_typer(retention_app, name="retention")


def _operator() -> str:
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):
        return "os:unknown"


def _size(nbytes: int) -> str:
    if nbytes < 1024**2:
        return f"{nbytes / 1024:.1f} KiB"
    if nbytes < 1024**3:
        return f"{nbytes / 1024**2:.1f} MiB"
    return f"{nbytes / 1024**3:.2f} GiB"


_UNITS = {"images": "instance", "results": "result", "jobs": "job"}


def _count(number: int, noun: str) -> str:
    plural = "studies" if noun == "study" else f"{noun}s"
    return f"{number} {noun if number == 1 else plural}"


def _lines(report: RetentionReport) -> list[str]:
    """The plain-text report: per class, then files, skipped studies and the audit."""
    data = report.to_dict()
    policy = data["policy"]
    lines = [
        "retention dry run: nothing deleted"
        if report.dry_run
        else f"retention run: data of {_count(len(report.applied), 'study')} deleted, "
        f"{_count(report.audit_events, 'audit event')}"
    ]
    for name, total in data["classes"].items():
        if total["days"] is None:
            lines.append(f"{name:<8} kept forever (no {name}_days)")
            continue
        size = "" if name == "jobs" else f", {_size(total['bytes'])}"
        lines.append(
            f"{name:<8} older than {total['days']} d: {_count(len(total['studies']), 'study')}, "
            f"{_count(total['count'], _UNITS[name])}{size}"
        )
        lines.extend(f"  {uid}" for uid in total["studies"])
    objects = data["objects"]
    verb = "to remove" if report.dry_run else "removed"
    lines.append(
        f"files    {objects['count']} {verb} ({_size(objects['bytes'])}), "
        f"{objects['shared_kept']} kept (still referenced by other data)"
    )
    lines.extend(f"skipped  {s['study_instance_uid']} ({s['reason']})" for s in data["skipped"])
    lines.append(f"audit    never deleted (legal period {policy['audit_min_days']} d)")
    return lines


@retention_app.command("run")
def run(
    dry_run: bool = typer.Option(
        False, "--dry-run", help="List exactly what would be deleted; delete nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object (see docs/service.md)."),
    images_days: int | None = typer.Option(
        None, "--images-days", min=1, help="Override images_days for this run."
    ),
    results_days: int | None = typer.Option(
        None, "--results-days", min=1, help="Override results_days for this run."
    ),
    jobs_days: int | None = typer.Option(
        None, "--jobs-days", min=1, help="Override jobs_days for this run."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="The gateway's data dir."),
    database_url: str | None = typer.Option(None, "--database-url", help="SQLAlchemy URL."),
) -> None:
    """Delete what the retention policy says is due (each study's deletion audited).

    Studies still being assembled or with a job not finished are skipped; files that
    other data still references are kept; the audit trail is never deleted.
    """
    from overread.service.node import open_queue
    from overread.service.retention import run_retention
    from overread.service.retention_settings import RetentionSettings

    config = service_settings(data_dir, database_url)
    overrides = {
        k: v
        for k, v in {
            "images_days": images_days,
            "results_days": results_days,
            "jobs_days": jobs_days,
        }.items()
        if v is not None
    }
    try:
        settings = RetentionSettings.model_validate({**config.retention.model_dump(), **overrides})
    except ValueError as exc:
        raise ConfigError(f"invalid retention settings: {exc}") from None
    database, store, _ = open_queue(config)
    try:
        report = run_retention(database, store, settings, dry_run=dry_run, actor=_operator())
    finally:
        database.dispose()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), sort_keys=True))
        return
    for line in _lines(report):
        typer.echo(line)
