"""``overread config``: show the effective settings."""

from __future__ import annotations

import json

import typer

from overread.cli.app import app


@app.command("config")
def show_config(
    as_json: bool = typer.Option(False, "--json", help="Print the settings as JSON."),
) -> None:
    """Print the effective settings (file + OVERREAD_* environment + defaults)."""
    from overread.config import load_settings

    settings = load_settings()
    data = json.loads(settings.model_dump_json())
    if as_json:
        typer.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    for key, value in sorted(data.items()):
        typer.echo(f"{key} = {json.dumps(value)}")
