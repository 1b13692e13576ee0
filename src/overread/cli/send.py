"""``overread send``: C-STORE files to a DICOM node."""

from __future__ import annotations

from pathlib import Path

import typer

from overread.cli.app import app
from overread.errors import ConfigError


@app.command("send")
def send(
    paths: list[Path] = typer.Argument(..., help="DICOM files or folders (walked)."),
    to: str = typer.Option(..., "--to", help="Destination as AE@host:port."),
    calling_ae: str = typer.Option("OVERREAD", "--calling-ae", help="Our (calling) AE title."),
    timeout: float = typer.Option(30.0, "--timeout", help="Network timeout in seconds."),
) -> None:
    """Send DICOM files with C-STORE; print one status per file; exit 1 if any failed."""
    from overread.service.config import Destination
    from overread.service.scu import iter_files, send_files

    destination = Destination.parse(to)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise ConfigError(f"{missing[0]}: no such file or folder")
    files = list(iter_files(paths))
    if not files:
        raise ConfigError("no files to send")
    statuses = send_files(
        files,
        ae_title=destination.ae_title,
        host=destination.host,
        port=destination.port,
        calling_ae=calling_ae,
        timeout=timeout,
    )
    failed = 0
    for status in statuses:
        if status.ok:
            typer.echo(f"{status.path}: sent (0x{status.status or 0:04X})")
        else:
            failed += 1
            typer.echo(f"{status.path}: FAILED: {status.error}", err=True)
    typer.echo(
        f"{len(statuses) - failed}/{len(statuses)} sent to {destination.ae_title}@{destination.host}:{destination.port}"
    )
    if failed:
        raise typer.Exit(1)
