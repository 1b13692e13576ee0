"""Command-line interface: ``overread <command>``.

Each command lives in its own module that registers on :data:`overread.cli.app.app`;
:func:`main` imports them all and turns :class:`~overread.errors.OverreadError`
into one line on stderr and exit status 2 (1 is kept for "ran, but some inputs
failed"). ``--debug`` shows the traceback instead.

A usage error (an unknown command or option, a bad option value, a missing
argument) is one line ``error: ...`` on stderr and exit status 2 as well, never a
traceback. The command modules import only what registering their commands needs;
anything heavy (torch, MONAI, the service, the database) is imported inside the
command that uses it, so ``overread --help``, ``version``, ``config`` and
``inspect`` start quickly.
"""

from __future__ import annotations

import importlib
import re
import sys

import typer

from overread.cli.app import app, state
from overread.errors import OverreadError

# Command modules, imported for their registrations on ``app``.
COMMAND_MODULES: tuple[str, ...] = (
    "overread.cli.audit",
    "overread.cli.bench",
    "overread.cli.config_cmd",
    "overread.cli.db",
    "overread.cli.deid",
    "overread.cli.demo",
    "overread.cli.evaluate",
    "overread.cli.explain",
    "overread.cli.fetch",
    "overread.cli.export",
    "overread.cli.inspect",
    "overread.cli.jobs",
    "overread.cli.labels",
    "overread.cli.models",
    "overread.cli.monitor",
    "overread.cli.phantom",
    "overread.cli.predict",
    "overread.cli.retention",
    "overread.cli.route",
    "overread.cli.send",
    "overread.cli.serve",
    "overread.cli.stats",
    "overread.cli.train",
    "overread.cli.users",
    "overread.cli.worklist",
    # One line per command module; keep sorted.
)


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def _usage_line(exc: typer.TyperException) -> str:
    """One line for a usage error: the message and, when known, where to get help."""
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    if ctx is not None:
        message += f" (see '{ctx.command_path} --help')"
    return f"error: {message}"


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the process exit status."""
    _load_commands()
    state.debug = False
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    try:
        result = command.main(args=args, prog_name="overread", standalone_mode=False)
    except OverreadError as exc:
        if state.debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return 2
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except typer.TyperException as exc:
        # Usage errors: Typer (0.26 and later) bundles Click, whose exceptions derive
        # from TyperException. A group run without a command has already printed its
        # help, as ``--help`` would; it exits 2.
        if type(exc).__name__ != "NoArgsIsHelpError":
            typer.echo(_usage_line(exc), err=True)
        elif exc.format_message().strip():
            typer.echo(exc.format_message(), err=True)
        return int(getattr(exc, "exit_code", 2))
    except typer.Exit as exc:
        return int(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    except Exception as exc:
        unreachable = _database_unreachable(exc)
        if unreachable is None or state.debug:
            raise
        typer.echo(f"error: {unreachable}", err=True)
        return 2
    return int(result) if isinstance(result, int) else 0


def _database_unreachable(exc: BaseException) -> str | None:
    """One line for a database that cannot be reached or used (SQLAlchemy's
    ``OperationalError``: refused, unknown host, bad credentials, a locked or
    unwritable SQLite file); ``None`` for any other exception, which stays a bug with
    its traceback. The driver's own first line is kept, never a URL's password."""
    errors = sys.modules.get("sqlalchemy.exc")
    if errors is None or not isinstance(exc, errors.OperationalError):
        return None
    detail = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = re.sub(r"(://[^:/@\s]*:)[^@\s]*@", r"\1***@", detail[0] if detail else "")
    return f"the database cannot be used: {first or type(exc).__name__}"


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


__all__ = ["app", "main", "run"]
