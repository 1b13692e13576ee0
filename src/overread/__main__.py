"""``python -m overread`` runs the CLI."""

from overread.cli import run

run()
