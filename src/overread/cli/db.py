"""``overread db``: which schema version the database is at, and upgrading it."""

from __future__ import annotations

from pathlib import Path

import typer

from overread.cli.app import app

db_app = typer.Typer(help="The database's schema version, and upgrades.", no_args_is_help=True)
app.add_typer(db_app, name="db")

DATA_DIR = typer.Option(None, "--data-dir", help="Where objects and the database live.")
DATABASE_URL = typer.Option(
    None, "--database-url", help="SQLAlchemy URL (default: SQLite in the data dir)."
)


def _database_url(data_dir: Path | None, database_url: str | None) -> str:
    from overread.config import load_settings

    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    return load_settings(**overrides).resolved_database_url


@db_app.command("current")
def current(data_dir: Path | None = DATA_DIR, database_url: str | None = DATABASE_URL) -> None:
    """Print the schema version the database records, against this overread's."""
    from overread.db import Database

    database = Database(_database_url(data_dir, database_url), create=False)
    try:
        status = database.schema_status()
    finally:
        database.dispose()
    typer.echo(f"{status.where}: {status.describe()}")


@db_app.command("upgrade")
def upgrade(data_dir: Path | None = DATA_DIR, database_url: str | None = DATABASE_URL) -> None:
    """Move the database to this overread's schema version (back it up first).

    A database made before schema versions were recorded is adopted as the baseline.
    Stop ``overread serve`` and every ``overread worker`` on the database first.
    """
    from overread.db import Database, SchemaState, upgrade_schema

    database = Database(_database_url(data_dir, database_url), create=False)
    try:
        before, after = upgrade_schema(database.engine)
    finally:
        database.dispose()
    if before.state is SchemaState.CURRENT:
        typer.echo(f"{after.where}: already at {after.revision}")
    elif before.state is SchemaState.EMPTY:
        typer.echo(f"{after.where}: created at {after.revision}")
    elif before.state is SchemaState.UNVERSIONED:
        typer.echo(f"{after.where}: unversioned schema adopted as {after.revision}")
    else:
        typer.echo(f"{after.where}: upgraded {before.revision} -> {after.revision}")
