"""``run_demo``: the cohort feed, the PACS, the gateway and the modality, started in
order, watched until done, and stopped."""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console, Group
from rich.live import Live

from overread.demo.accounts import add_demo_accounts
from overread.demo.cohort import CohortFeed
from overread.demo.console import print_addresses, print_report, progress_table, worklist_table
from overread.demo.gateway import check_port_free, http_status, running_gateway
from overread.demo.modality import DemoModality
from overread.demo.options import DemoOptions, DemoProgress, DemoSummary, Timeline
from overread.demo.pacs import open_pacs
from overread.demo.progress import final_checks, snapshot, worklist_top
from overread.harness import PacsLike

if TYPE_CHECKING:
    from overread.harness.gateway import Gateway


def seconds_since_launch() -> float | None:
    """Seconds since this process was started (Linux ``/proc``), or None elsewhere."""
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - int(stat[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def reset_run_state(data_dir: Path) -> tuple[Path, Path]:
    """Empty the gateway's and the PACS's folders so this run's counts start at zero."""
    gateway_dir, pacs_dir = data_dir / "gateway", data_dir / "pacs"
    for folder in (gateway_dir, pacs_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    return gateway_dir, pacs_dir


def run_demo(options: DemoOptions, stop: threading.Event, console: Console) -> DemoSummary:
    """Run the demo until done (``exit_when_done``), ``duration`` or ``stop`` is set.

    Parameters
    ----------
    options
        What to run.
    stop
        Set it (from a signal handler) to stop everything cleanly.
    console
        Where the addresses, the live table and the final report are shown.
    """
    options.validate()
    check_port_free(options.http_port)
    # The demo configures no alert channel: critical findings show on the worklist
    # and in the table, without a warning line per alert over the live display.
    logging.getLogger("overread.triage.alerts").setLevel(logging.ERROR)
    start = time.monotonic()
    age = seconds_since_launch()
    timeline = Timeline(launched_offset=start - (age if age is not None else 0.0))
    options.data_dir.mkdir(parents=True, exist_ok=True)
    gateway_dir, pacs_dir = reset_run_state(options.data_dir)
    progress = DemoProgress(options.studies)
    summary = DemoSummary(progress, pacs_dir, gateway_dir, timeline)
    feed = CohortFeed(options)
    feed.start()  # first: the generator starts while the gateway loads
    console.print(
        f"cohort: {options.studies} phantom studies over {options.sites} sites in {feed.path} "
        f"({'reused' if feed.reused else 'generating in the background'})"
    )
    pacs = open_pacs(options.pacs, pacs_dir)
    modality: DemoModality | None = None
    try:
        pacs.start()
        with running_gateway(options, pacs.port) as service:
            accounts = add_demo_accounts(service)
            base = f"http://127.0.0.1:{service.http_port}"
            ui = http_status(f"{base}/")
            api = http_status(f"{base}/api/studies?limit=1", accounts.token)
            timeline.http_ready = timeline.since_launch(time.monotonic())
            print_addresses(console, service, pacs, accounts, base, ui, api)
            modality = DemoModality(
                feed,
                port=service.dicom_port or 0,
                called_ae=service.config.ae_title,
                rate=options.rate,
                seed=options.seed,
                stop=stop,
            )
            modality.start()
            console.print(
                f"ready {timeline.http_ready:.1f} s after launch; sending at "
                f"{options.rate:g} studies/min (Poisson arrivals); Ctrl-C stops"
            )
            summary.completed = _watch(
                options, service, pacs, modality, feed, summary, stop, console
            )
            summary.interrupted = stop.is_set() and not summary.completed
            if summary.completed or options.exit_when_done:
                final_checks(service, modality, summary)
            print_report(summary, console)
            if summary.completed and not options.exit_when_done and not stop.is_set():
                remaining = (
                    None
                    if options.duration is None
                    else start + options.duration - time.monotonic()
                )
                if remaining is None or remaining > 0:
                    console.print("every study read; still serving (Ctrl-C to stop)")
                    stop.wait(remaining)
            stop.set()
            modality.join(30)
            feed.stop()
    finally:
        stop.set()
        feed.stop()
        pacs.stop()
    if feed.error:
        summary.error = feed.error
        console.print(f"error: {feed.error}")
    console.print("stopped")
    return summary


def _watch(
    options: DemoOptions,
    service: Gateway,
    pacs: PacsLike,
    modality: DemoModality,
    feed: CohortFeed,
    summary: DemoSummary,
    stop: threading.Event,
    console: Console,
) -> bool:
    """Show live counts until done, the duration is up, a stall, or ``stop``; return whether done."""
    start = time.monotonic()
    deadline = None if options.duration is None else start + options.duration
    progress, timeline = summary.progress, summary.timeline
    last_change, last_activity = start, progress.activity()
    wall_to_monotonic = time.monotonic() - time.time()
    tick = 0

    def render() -> Group:
        table = progress_table(progress, timeline, time.monotonic() - start)
        return Group(table, worklist_table(summary)) if summary.worklist else Group(table)

    def refresh() -> None:
        snapshot(service, pacs, modality, feed, progress)
        if modality.first_sent_at is not None and timeline.first_sent is None:
            timeline.first_sent = timeline.since_launch(modality.first_sent_at)
        first_sr = pacs.counts().first_sr_at
        if first_sr is not None and timeline.first_sr is None:
            timeline.first_sr = timeline.since_launch(first_sr + wall_to_monotonic)

    with Live(render(), console=console, auto_refresh=False, transient=False) as live:
        done = False
        while True:
            refresh()
            if tick % 4 == 0:
                worklist_top(service, summary, top=5)
            tick += 1
            live.update(render(), refresh=True)
            now = time.monotonic()
            if progress.activity() != last_activity:
                last_change, last_activity = now, progress.activity()
            if progress.done and not modality.is_alive():
                done = True
                break
            if feed.error and not modality.is_alive():
                break
            if deadline is not None and now >= deadline:
                summary.note = f"stopped after --duration {options.duration:g} s"
                break
            if options.exit_when_done and now - last_change > options.stall_seconds:
                summary.note = f"no progress for {options.stall_seconds:g} s"
                break
            if stop.wait(0.5):
                break
        refresh()
        worklist_top(service, summary, top=5)
        live.update(render(), refresh=True)
    if not console.is_terminal:
        console.line()  # a redirected Live ends without a newline
    return done


__all__ = ["reset_run_state", "run_demo", "seconds_since_launch"]
