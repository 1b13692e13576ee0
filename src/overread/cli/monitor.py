"""``overread monitor``: post-deployment monitoring."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from overread.cli.app import app
from overread.errors import ConfigError

monitor_app = typer.Typer(help="Performance, drift and fairness monitoring.", no_args_is_help=True)
app.add_typer(monitor_app, name="monitor")


@monitor_app.command("simulate")
def monitor_simulate(
    seed: int = typer.Option(0, "--seed", help="Seeds the phantom pools and the daily draws."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    days: int = typer.Option(60, "--days", help="Simulated days per run (>= 20)."),
    studies_per_day: int = typer.Option(40, "--studies-per-day", help="Studies per day (>= 10)."),
    inject_day: int = typer.Option(30, "--inject-day", help="First drifted day (0-based)."),
    pool: int = typer.Option(1000, "--pool", help="Phantom studies rendered for the base pool."),
    plots: Path | None = typer.Option(None, "--plots", help="Save the charts as PNGs here."),
) -> None:
    """Replay phantom cohorts through the bundled model and monitoring, with injected
    drifts; report studies and days until each alert fires and the false alarms of a
    drift-free run."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn

    from overread.monitoring.simulate import SimulationOptions, save_plots, simulate

    options = SimulationOptions(
        seed=seed,
        days=days,
        studies_per_day=studies_per_day,
        inject_day=inject_day,
        pool_size=pool,
    )
    options.validate()
    if plots is not None and plots.exists() and not plots.is_dir():
        raise ConfigError(f"--plots {plots}: exists and is not a folder")
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), console=console
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done)

        report = simulate(options, progress=progress)
    if plots is not None:
        for path in save_plots(report, plots):
            console.print(f"wrote {path}")
    if as_json:
        sys.stdout.write(json.dumps(report.as_dict(), indent=2) + "\n")
        return
    out = Console()
    out.print(
        f"{options.studies} studies per run ({options.days} days x {options.studies_per_day}), "
        f"drifts injected at day {options.inject_day} (study {options.inject_day * options.studies_per_day})"
    )
    for d in report.detections:
        if d.detected_at_study is None:
            out.print(f"  {d.kind.value:22s} MISSED")
        else:
            out.print(
                f"  {d.kind.value:22s} detected after {d.detected_at_study - d.injected_at_study} "
                f"studies ({(d.detected_at_day or 0) - d.injected_at_day} days)"
                + (
                    f", {d.false_alarms_before} false alarm(s) before"
                    if d.false_alarms_before
                    else ""
                )
            )
    out.print(f"  false alarms on the drift-free run: {report.false_alarms_no_drift}")
    for day, _, alert in report.clean.alerts:
        out.print(f"    day {day}: {alert.kind.value}: {alert.message}")
