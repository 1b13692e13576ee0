"""The Typer application object that every command module registers on."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import typer

app = typer.Typer(
    name="overread",
    help="overread: an AI second reader for radiology.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@dataclass
class CliState:
    """Options given before the command name, shared with every command."""

    debug: bool = False


state = CliState()


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and debug logging."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log at INFO level."),
) -> None:
    state.debug = debug
    level = logging.DEBUG if debug else (logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


@app.command()
def version() -> None:
    """Print overread's version and the versions of the libraries it relies on."""
    import numpy
    import pydicom
    import torch

    from overread import __version__

    typer.echo(f"overread {__version__}")
    typer.echo(
        f"pydicom {pydicom.__version__}, numpy {numpy.__version__}, torch {torch.__version__}"
    )
