"""``overread worklist``: the prioritised worklist, critical alerts and reader feedback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from overread.cli.app import app
from overread.cli.options import output_file

if TYPE_CHECKING:
    from overread.service.db import Database

# The triage package and the database are imported inside the commands, so that
# ``overread --help`` does not load SQLAlchemy.

worklist_app = typer.Typer(
    help="The prioritised worklist, critical-finding alerts and reader feedback.",
    no_args_is_help=True,
)
app.add_typer(worklist_app, name="worklist")

DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: settings).")
DATABASE_URL = typer.Option(None, "--database-url", help="Database URL (default: settings).")
TRIAGE_CONFIG = typer.Option(
    None, "--triage-config", help="TOML file with a [triage] table (default: overread.toml)."
)


@contextmanager
def _database(data_dir: Path | None, database_url: str | None) -> Iterator[Database]:
    from overread.audit import create_tables as create_audit_tables
    from overread.config import load_settings
    from overread.service.db import Database

    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    settings = load_settings(**overrides)
    database = Database(settings.resolved_database_url)
    create_audit_tables(database.engine)
    try:
        yield database
    finally:
        database.dispose()


def _top_terms(breakdown: list[Any], count: int = 3) -> str:
    return ", ".join(f"{t['name']} +{t['contribution']:.1f}" for t in breakdown[:count])


@worklist_app.command("list")
def list_worklist(
    state: list[str] = typer.Option(
        [], "--state", help="unread, in-progress or read (repeatable)."
    ),
    department: str | None = typer.Option(None, "--department", help="Requesting department."),
    min_score: float | None = typer.Option(None, "--min-score", help="Only scores at least this."),
    critical: bool | None = typer.Option(
        None, "--critical/--no-critical", help="Only studies with (or without) a critical finding."
    ),
    limit: int = typer.Option(20, "--limit", min=1),
    offset: int = typer.Option(0, "--offset", min=0),
    as_json: bool = typer.Option(False, "--json", help="Print JSON with the full breakdown."),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Print the worklist, highest priority first, with why each study ranks there."""
    from overread.triage import query_worklist

    with _database(data_dir, database_url) as database, database.session() as session:
        page = query_worklist(
            session,
            state=state or None,
            department=department,
            min_score=min_score,
            has_critical=critical,
            limit=limit,
            offset=offset,
        )
        rows: list[dict[str, Any]] = [
            {
                "study_instance_uid": i.study_instance_uid,
                "score": round(i.score, 2),
                "state": i.state,
                "department": i.department,
                "critical": list(i.critical_findings),
                "breakdown": list(i.breakdown),
            }
            for i in page.items
        ]
    if as_json:
        typer.echo(json.dumps({"total": page.total, "offset": offset, "items": rows}, indent=2))
        return
    typer.echo(f"{page.total} studies; showing {offset + 1 if rows else 0}-{offset + len(rows)}")
    for row in rows:
        flag = " CRITICAL " + ",".join(row["critical"]) if row["critical"] else ""
        typer.echo(
            f"{row['score']:7.1f}  {row['state']:<11} {row['department'] or '-':<10} "
            f"{row['study_instance_uid']}{flag}  [{_top_terms(row['breakdown'])}]"
        )


@worklist_app.command("next")
def claim_next_cmd(
    reader: str = typer.Option(..., "--reader", help="Who takes the study."),
    department: str | None = typer.Option(None, "--department", help="Requesting department."),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Take the highest-priority unread study (marks it in progress). Exit 1 if none."""
    from overread.triage import claim_next

    with _database(data_dir, database_url) as database, database.session() as session:
        item = claim_next(session, reader=reader, now=datetime.now(UTC), department=department)
        if item is None:
            typer.echo("no unread study")
            raise typer.Exit(1)
        typer.echo(
            f"{item.study_instance_uid} score {item.score:.1f} "
            f"[{_top_terms(list(item.breakdown))}] now in progress for {reader}"
        )


@worklist_app.command("alerts")
def list_alerts(
    open_only: bool = typer.Option(False, "--open", help="Only unacknowledged alerts."),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Print critical-finding alerts, newest first."""
    from sqlalchemy import select

    from overread.triage import Alert, AlertState

    with _database(data_dir, database_url) as database, database.session() as session:
        query = select(Alert).order_by(Alert.raised_at.desc(), Alert.id.desc())
        if open_only:
            query = query.where(Alert.state == AlertState.OPEN.value)
        for alert in session.execute(query).scalars():
            ack = (
                f" by {alert.acknowledged_by} at {alert.acknowledged_at:%Y-%m-%d %H:%M:%S}"
                if alert.acknowledged_at is not None
                else ""
            )
            typer.echo(
                f"#{alert.id} {alert.raised_at:%Y-%m-%d %H:%M:%S} {alert.study_instance_uid} "
                f"{alert.finding} p={alert.probability:.2f} level {alert.level} "
                f"{alert.state}{ack} (+{alert.duplicates} duplicates)"
            )


@worklist_app.command("sweep")
def sweep_cmd(
    triage_config_path: Path | None = TRIAGE_CONFIG,
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Escalate overdue alerts and attempt due deliveries once. Exit 1 if any failed."""
    from overread.triage import load_triage_config, run_sweep

    config = load_triage_config(triage_config_path)
    with _database(data_dir, database_url) as database:
        report = run_sweep(database, config, now=datetime.now(UTC))
    typer.echo(
        f"escalated {len(report.escalated)}, sent {len(report.sent)}, "
        f"retrying {len(report.retrying)}, failed {len(report.failed)}"
    )
    for delivery_id, error in sorted(report.errors.items()):
        typer.echo(f"delivery {delivery_id}: {error}", err=True)
    if report.errors:
        raise typer.Exit(1)


@worklist_app.command("ack")
def ack_alert(
    alert_id: int = typer.Argument(..., help="The alert's number."),
    who: str = typer.Option(..., "--who", help="Who acknowledges."),
    told: str = typer.Option(
        ..., "--told", help="Who was told of the critical result (name, role, how)."
    ),
    note: str = typer.Option("", "--note", help="A note: what was said, a call-back number."),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Acknowledge a critical-finding alert, saying who was told (stops escalation; audited)."""
    from overread.errors import ConfigError
    from overread.triage import acknowledge

    with _database(data_dir, database_url) as database, database.session() as session:
        try:
            alert = acknowledge(
                session,
                alert_id,
                who=who,
                communicated_to=told,
                note=note,
                now=datetime.now(UTC),
            )
        except KeyError:
            typer.echo(f"error: alert {alert_id} does not exist", err=True)
            raise typer.Exit(2) from None
        except ConfigError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        typer.echo(f"alert #{alert.id} acknowledged by {alert.acknowledged_by}")


@worklist_app.command("export-feedback")
def export_feedback_cmd(
    out: Path = typer.Argument(..., help="CSV file to write."),
    order: str = typer.Option(
        "margin",
        "--order",
        help="margin (|p - threshold| smallest first) or proximity (closest to the threshold first).",
    ),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Write readers' labels as a CheXpert-format CSV, most uncertain cases first."""
    from overread.errors import ConfigError
    from overread.triage import export_feedback

    output_file(out, "OUT")
    with _database(data_dir, database_url) as database, database.session() as session:
        try:
            count = export_feedback(session, out, order=order)
        except OSError as exc:
            raise ConfigError(f"{out}: cannot write ({exc.strerror or exc})") from None
    typer.echo(f"wrote feedback on {count} studies to {out}")
