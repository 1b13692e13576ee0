"""``overread audit``: verify, checkpoint and export the tamper-evident audit trail."""

from __future__ import annotations

import getpass
import json
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import typer

from overread.cli.app import app
from overread.cli.options import output_file
from overread.errors import AuditError

if TYPE_CHECKING:
    from overread.service.db import Database

# The audit package and the database are imported inside the commands, so that
# ``overread --help`` does not load SQLAlchemy.

audit_app = typer.Typer(help="The tamper-evident audit trail.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")

DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: settings).")
DATABASE_URL = typer.Option(None, "--database-url", help="Database URL (default: settings).")


def _open(
    data_dir: Path | None, database_url: str | None, *, create: bool = True
) -> tuple[Path, Database]:
    from sqlalchemy import inspect

    from overread.audit import create_tables
    from overread.config import load_settings
    from overread.service.db import Database

    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    settings = load_settings(**overrides)
    database = Database(settings.resolved_database_url, create=False)
    if create:
        create_tables(database.engine)
    elif not inspect(database.engine).has_table("audit_events"):
        database.dispose()
        raise AuditError(f"{database!r}: no audit trail in this database")
    return settings.data_dir, database


def _operator() -> str:
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):
        return "os:unknown"


@audit_app.command("verify")
def verify(
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Recompute the chain; check it against the signed checkpoints. Exit 1 if broken."""
    from overread.audit import (
        checkpoint_dir,
        load_checkpoints,
        load_verification_ring,
        missing_checkpoints,
        verify_chain,
    )

    root, database = _open(data_dir, database_url, create=False)
    try:
        directory = checkpoint_dir(root)
        has_checkpoints = directory.is_dir() and any(directory.glob("checkpoint-*.json"))
        outcome: dict[str, object]
        try:
            checkpoints = (
                load_checkpoints(directory, load_verification_ring(root)) if has_checkpoints else []
            )
        except AuditError as exc:
            outcome = {"ok": False, "reason": "checkpoint-invalid", "message": str(exc)}
            line = f"BROKEN: {exc}"
        else:
            result = verify_chain(database.engine, checkpoints=checkpoints)
            outcome, line = result.as_dict(), result.summary()
            gone = missing_checkpoints(database.engine, directory) if result.ok else []
            if gone:
                seq, name = gone[0]
                line = f"BROKEN: checkpoint {name} (recorded at record {seq}) is missing from {directory}"
                outcome.update(ok=False, reason="checkpoint-missing", broken_seq=seq, message=line)
        typer.echo(json.dumps(outcome, sort_keys=True) if as_json else line)
        if not outcome["ok"]:
            raise typer.Exit(1)
    finally:
        database.dispose()


@audit_app.command("checkpoint")
def checkpoint(
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Verify the chain and write a signed checkpoint of its head (the gateway also
    writes them itself: [service] audit_checkpoint_events / audit_checkpoint_seconds)."""
    from overread.audit import checkpoint_now

    root, database = _open(data_dir, database_url)
    try:
        written = checkpoint_now(database.engine, root, actor=_operator())
        typer.echo(f"checkpoint at record {written.head_seq}: {written.path}")
    finally:
        database.dispose()


@audit_app.command("export")
def export(
    start: str = typer.Option(..., "--from", help="Start (ISO 8601, inclusive, UTC if naive)."),
    end: str = typer.Option(..., "--to", help="End (ISO 8601, exclusive, UTC if naive)."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl or csv."),
    out: Path | None = typer.Option(None, "--out", help="Output file (default: stdout)."),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Export the audit records in a time range for compliance (the export is audited)."""
    from overread.audit import export_events, parse_time

    start_at, end_at = parse_time(start), parse_time(end)
    if out is not None:
        output_file(out)
    _, database = _open(data_dir, database_url)
    try:
        with ExitStack() as stack:
            handle: TextIO = sys.stdout
            if out is not None:
                try:
                    handle = stack.enter_context(out.open("w", encoding="utf-8", newline=""))
                except OSError as exc:
                    raise AuditError(f"--out {out}: cannot write ({exc.strerror or exc})") from None
            with database.session() as session:
                count = export_events(
                    session,
                    handle,
                    start=start_at,
                    end=end_at,
                    fmt=fmt,
                    actor=_operator(),
                    destination=str(out) if out is not None else "stdout",
                )
        if out is not None:
            typer.echo(f"exported {count} audit records to {out}")
    finally:
        database.dispose()


@audit_app.command("show")
def show(
    last: int = typer.Option(20, "--last", min=1, help="How many of the newest records."),
    actor: str | None = typer.Option(None, "--actor", help="Only this actor."),
    action: str | None = typer.Option(None, "--action", help="Only this action."),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Print the newest audit records, oldest first (reading is not itself audited)."""
    from sqlalchemy import select

    from overread.audit import AuditAction, AuditEvent

    if action is not None and action not in {a.value for a in AuditAction}:
        known = ", ".join(a.value for a in AuditAction)
        raise AuditError(f"unknown audit action {action!r} (known: {known})")
    _, database = _open(data_dir, database_url, create=False)
    try:
        query = select(AuditEvent.__table__).order_by(AuditEvent.seq.desc()).limit(last)
        if actor is not None:
            query = query.where(AuditEvent.actor == actor)
        if action is not None:
            query = query.where(AuditEvent.action == action)
        with database.engine.connect() as conn:
            rows = list(reversed(conn.execute(query).all()))
        for row in rows:
            uids = ",".join(row.object_uids or []) or "-"
            details = json.dumps(row.details or {}, sort_keys=True)
            typer.echo(
                f"{row.seq}\t{row.timestamp}\t{row.actor}\t{row.role or '-'}\t"
                f"{row.action}\t{uids}\t{details}"
            )
    finally:
        database.dispose()


@audit_app.command("rotate-key")
def rotate_key(
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Retire the checkpoint key, create a new one, and checkpoint under it at once.

    Old checkpoints stay verifiable: an Ed25519 key's public half (or an HMAC secret)
    is kept in audit/retired-keys/.
    """
    from overread.audit import (
        AuditAction,
        checkpoint_dir,
        load_checkpoints,
        load_verification_ring,
        record_event,
        rotate_checkpoint_key,
        verify_chain,
        write_checkpoint,
    )

    root, database = _open(data_dir, database_url)
    try:
        directory = checkpoint_dir(root)
        # Refuse to rotate over a broken chain: the new key must not anchor tampering.
        ring = load_verification_ring(root)
        result = verify_chain(database.engine, checkpoints=load_checkpoints(directory, ring))
        if not result.ok:
            raise AuditError(f"not rotating the key over a broken chain: {result.summary()}")
        old, new = rotate_checkpoint_key(root)
        written = write_checkpoint(
            database.engine, directory, new, retired=load_verification_ring(root)
        )
        with database.session() as session:
            record_event(
                session,
                actor=_operator(),
                action=AuditAction.CONFIG_CHANGE,
                details={
                    "change": "audit-key-rotation",
                    "retired": f"{old.algorithm} {old.key_id}",
                    "current": f"{new.algorithm} {new.key_id}",
                    "checkpoint": written.name,
                },
            )
        typer.echo(
            f"retired {old.algorithm} key {old.key_id}; new {new.algorithm} key {new.key_id}; "
            f"checkpoint at record {written.head_seq}"
        )
    finally:
        database.dispose()
