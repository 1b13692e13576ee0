"""Command-line interface: ``overread <command>``.

Each command lives in its own module that registers on :data:`overread.cli.app.app`;
:func:`main` imports them all and turns :class:`~overread.errors.OverreadError`
into one line on stderr and exit status 2 (1 is kept for "ran, but some inputs
failed"). ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer

from overread.cli.app import app, state
from overread.errors import OverreadError

# Command modules, imported for their registrations on ``app``.
COMMAND_MODULES: tuple[str, ...] = (
    "overread.cli.audit",
    "overread.cli.bench",
    "overread.cli.config_cmd",
    "overread.cli.db",
    "overread.cli.demo",
    "overread.cli.evaluate",
    "overread.cli.export",
    "overread.cli.inspect",
    "overread.cli.labels",
    "overread.cli.models",
    "overread.cli.phantom",
    "overread.cli.predict",
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


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return the process exit status."""
    _load_commands()
    command = typer.main.get_command(app)
    args = sys.argv[1:] if argv is None else argv
    try:
        result = command.main(args=args, prog_name="overread", standalone_mode=False)
    except OverreadError as exc:
        if state.debug:
            raise
        typer.echo(f"error: {exc}", err=True)
        return 2
    except click.exceptions.Abort:
        typer.echo("aborted", err=True)
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return 130
    return int(result) if isinstance(result, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


__all__ = ["app", "main", "run"]
