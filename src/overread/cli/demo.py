"""``overread demo``: a modality, the gateway and a PACS on this machine, end to end."""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from types import FrameType

import typer
from rich.console import Console

from overread.cli.app import app

logger = logging.getLogger(__name__)


@app.command("demo")
def demo(
    data_dir: Path = typer.Option(
        Path("overread-data/demo"),
        "--data-dir",
        help="Cohort cache, gateway state and PACS folder.",
    ),
    studies: int = typer.Option(40, "--studies", help="Phantom studies to send."),
    rate: float = typer.Option(1.0, "--rate", help="Studies sent per second."),
    duration: float | None = typer.Option(
        None, "--duration", help="Stop after this many seconds (default: serve until Ctrl-C)."
    ),
    exit_when_done: bool = typer.Option(
        False, "--exit-when-done", help="Stop once every study is read and its SRs are at the PACS."
    ),
    seed: int = typer.Option(0, "--seed", help="Phantom cohort seed."),
    size: int = typer.Option(1024, "--size", help="Phantom image side in pixels."),
    workers: int = typer.Option(2, "--workers", min=1, help="Gateway worker threads."),
) -> None:
    """Send a phantom cohort through the gateway to a local PACS, with live progress.

    Exits 1 when some study was not sent or not read, or the audit chain does not verify.
    """
    from overread.demo import DemoOptions, run_demo

    options = DemoOptions(
        data_dir=data_dir,
        studies=studies,
        rate=rate,
        seed=seed,
        size=size,
        duration=duration,
        exit_when_done=exit_when_done,
        workers=workers,
    )
    options.validate()
    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        logger.info("signal %d: stopping the demo", signum)
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        summary = run_demo(options, stop, Console())
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    interrupted = not summary.completed
    progress = summary.progress
    failed = (
        progress.failed or progress.send_failures or (summary.audit_line and not summary.audit_ok)
    )
    if failed and not interrupted:
        raise typer.Exit(1)
