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
    from overread import __version__

    typer.echo(f"overread {__version__}")
    typer.echo(", ".join(f"{name} {_installed(name)}" for name in ("pydicom", "numpy", "torch")))


def _installed(distribution: str) -> str:
    """A library's installed version, read from its metadata (without importing it)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as distribution_version

    try:
        return distribution_version(distribution)
    except PackageNotFoundError:
        return "not installed"
