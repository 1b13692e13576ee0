"""``overread users``: add and list users, issue API tokens (all audited)."""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from overread.cli.app import app
from overread.errors import ConfigError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from overread.service.db import Database

# The database and the security package are imported inside the commands, so
# that ``overread --help`` does not load SQLAlchemy.

users_app = typer.Typer(help="Users, roles and API tokens.", no_args_is_help=True)
app.add_typer(users_app, name="users")

DATA_DIR = typer.Option(None, "--data-dir", help="Data directory (default: settings).")
DATABASE_URL = typer.Option(None, "--database-url", help="Database URL (default: settings).")


NAME = typer.Argument(..., help="User name.")


def _database(data_dir: Path | None, database_url: str | None) -> Database:
    from overread.config import load_settings
    from overread.security import create_tables
    from overread.service.db import Database

    overrides: dict[str, object] = {}
    if data_dir is not None:
        overrides["data_dir"] = data_dir
    if database_url is not None:
        overrides["database_url"] = database_url
    database = Database(load_settings(**overrides).resolved_database_url, create=False)
    create_tables(database.engine)
    return database


@contextmanager
def _session(data_dir: Path | None, database_url: str | None) -> Iterator[Session]:
    """A session on the configured database, committed on success, then closed.

    Account errors (unknown or taken names, short passwords) become one-line errors.
    """
    database = _database(data_dir, database_url)
    try:
        with database.session() as session:
            try:
                yield session
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
    finally:
        database.dispose()


def _operator() -> str:
    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):
        return "os:unknown"


@users_app.command("add")
def add(
    name: str = NAME,
    role: str = typer.Option(
        ..., "--role", help="radiologist, technologist, admin, auditor or service."
    ),
    password_stdin: bool = typer.Option(
        False, "--password-stdin", help="Read the password from the first line of stdin."
    ),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Add a user; without --password-stdin the account can only use API tokens."""
    from overread.security import add_user

    password = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
        if not password:
            raise ConfigError("--password-stdin: no password on stdin")
    with _session(data_dir, database_url) as session:
        add_user(session, name, role, password=password, actor=_operator())
    kind = "password" if password is not None else "token-only"
    typer.echo(f"added {name} ({role}, {kind})")


@users_app.command("list")
def list_(
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """List users, their roles and state."""
    from overread.security import list_users

    with _session(data_dir, database_url) as session:
        users = list_users(session)
        if not users:
            typer.echo("no users")
        for user in users:
            state = "active" if user.active else "disabled"
            login = "password" if user.password_hash else "token-only"
            last = user.last_login_at.isoformat() if user.last_login_at else "never"
            typer.echo(f"{user.username}\t{user.role}\t{state}\t{login}\tlast login {last}")


@users_app.command("token")
def token(
    name: str = NAME,
    expires_days: float = typer.Option(90.0, "--expires-days", help="Days until it expires."),
    label: str = typer.Option("", "--label", help="What the token is for."),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Issue an API token for NAME and print it once (only its hash is stored)."""
    from overread.security import issue_token

    if expires_days <= 0:
        raise ConfigError(f"--expires-days must be positive, not {expires_days}")
    with _session(data_dir, database_url) as session:
        value, row = issue_token(
            session, name, expires_in=timedelta(days=expires_days), label=label, actor=_operator()
        )
        expires = row.expires_at.isoformat() if row.expires_at else "never"
    typer.echo(value)
    typer.echo(f"token {row.id} for {name} ({row.role}), expires {expires}", err=True)


def _set_active(name: str, active: bool, data_dir: Path | None, database_url: str | None) -> None:
    from overread.security import set_active

    with _session(data_dir, database_url) as session:
        set_active(session, name, active, actor=_operator())
    typer.echo(f"{'enabled' if active else 'disabled'} {name}")


@users_app.command("disable")
def disable(
    name: str = NAME, data_dir: Path | None = DATA_DIR, database_url: str | None = DATABASE_URL
) -> None:
    """Disable a user: logins, web sessions and API tokens stop working at once."""
    _set_active(name, False, data_dir, database_url)


@users_app.command("enable")
def enable(
    name: str = NAME, data_dir: Path | None = DATA_DIR, database_url: str | None = DATABASE_URL
) -> None:
    """Enable a disabled user again."""
    _set_active(name, True, data_dir, database_url)


@users_app.command("password")
def password(
    name: str = NAME, data_dir: Path | None = DATA_DIR, database_url: str | None = DATABASE_URL
) -> None:
    """Set a user's password from the first line of stdin; their web sessions end."""
    from overread.security import set_password

    new_password = sys.stdin.readline().rstrip("\r\n")
    if not new_password:
        raise ConfigError("no password on stdin")
    with _session(data_dir, database_url) as session:
        set_password(session, name, new_password, actor=_operator())
    typer.echo(f"password changed for {name}")


@users_app.command("tokens")
def tokens(
    name: str = NAME, data_dir: Path | None = DATA_DIR, database_url: str | None = DATABASE_URL
) -> None:
    """List a user's API tokens (ids, state, expiry; never the tokens themselves)."""
    from sqlalchemy import select

    from overread.security import ApiToken, get_user
    from overread.security.schema import utcnow

    with _session(data_dir, database_url) as session:
        user = get_user(session, name)
        if user is None:
            raise ConfigError(f"no user called {name!r}")
        now = utcnow()
        rows = session.scalars(
            select(ApiToken).where(ApiToken.user_id == user.id).order_by(ApiToken.id)
        ).all()
        for row in rows:
            expired = row.expires_at is not None and row.expires_at <= now
            state = "revoked" if row.revoked else ("expired" if expired else "active")
            expires = row.expires_at.isoformat() if row.expires_at else "never"
            typer.echo(f"{row.id}\t{row.role}\t{state}\texpires {expires}\t{row.label}")


@users_app.command("revoke-token")
def revoke(
    token_id: int = typer.Argument(..., help="Token id (from 'overread users tokens')."),
    data_dir: Path | None = DATA_DIR,
    database_url: str | None = DATABASE_URL,
) -> None:
    """Revoke one API token at once (e.g. one that leaked)."""
    from overread.security import ApiToken, revoke_token

    with _session(data_dir, database_url) as session:
        if session.get(ApiToken, token_id) is None:
            raise ConfigError(f"no API token with id {token_id}")
        revoke_token(session, token_id, actor=_operator())
    typer.echo(f"revoked token {token_id}")
