"""``overread demo``: a modality, the gateway and a PACS on this machine, end to end."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import typer

from overread.cli.app import app

logger = logging.getLogger(__name__)


@app.command("demo")
def demo(
    data_dir: Path = typer.Option(
        Path("overread-data/demo"),
        "--data-dir",
        help="Cohort cache, gateway state and PACS folder.",
    ),
    studies: int = typer.Option(300, "--studies", help="Phantom studies to send."),
    rate: float = typer.Option(20.0, "--rate", help="Studies sent per minute (Poisson arrivals)."),
    http_port: int = typer.Option(
        8042, "--http-port", help="Port of the web UI and HTTP API on 127.0.0.1 (0: a free one)."
    ),
    duration: float | None = typer.Option(
        None, "--duration", help="Stop after this many seconds (default: serve until Ctrl-C)."
    ),
    exit_when_done: bool = typer.Option(
        False,
        "--exit-when-done",
        help="Stop once every study is read and its SR is at the PACS, then check the "
        "worklist and the audit chain (exit 1 if a check fails).",
    ),
    seed: int = typer.Option(0, "--seed", help="Phantom cohort seed (and arrival times)."),
    size: int = typer.Option(1024, "--size", help="Phantom image side in pixels."),
    sites: int = typer.Option(4, "--sites", help="Phantom sites (scanners), 1 to 4."),
    workers: int = typer.Option(2, "--workers", min=1, help="Gateway worker threads."),
    pacs: str = typer.Option(
        "auto",
        "--pacs",
        help="The PACS: dcmtk (storescp), pynetdicom, or auto (dcmtk if installed).",
    ),
) -> None:
    """Send phantom studies through the gateway to a local PACS, with live progress.

    Ctrl-C (or SIGTERM) stops everything and exits 0. With --exit-when-done, exits 1
    when a study was not sent, has no SR at the PACS or no worklist row, or the audit
    chain does not verify.
    """
    from rich.console import Console

    from overread.demo import DemoOptions, run_demo

    options = DemoOptions(
        data_dir=data_dir,
        studies=studies,
        rate=rate,
        seed=seed,
        size=size,
        sites=sites,
        http_port=http_port,
        duration=duration,
        exit_when_done=exit_when_done,
        workers=workers,
        pacs=pacs,
    )
    options.validate()
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping the demo", signum)
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_demo(options, stop, Console(soft_wrap=True))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if summary.interrupted:
        return
    if summary.error or not summary.ok or (exit_when_done and not summary.completed):
        raise typer.Exit(1)
