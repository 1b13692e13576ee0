"""``overread monitor``: post-deployment monitoring."""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import typer

from overread.cli.app import app
from overread.cli.options import service_settings
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


def _day(text: str | None) -> dt.date | None:
    if not text:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise ConfigError(f"--date {text!r}: not a date (YYYY-MM-DD)") from None


@monitor_app.command("run")
def monitor_run(
    as_json: bool = typer.Option(False, "--json", help="Print the run as JSON."),
    date: str | None = typer.Option(None, "--date", help="Last day judged, YYYY-MM-DD (UTC)."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="The gateway's data dir."),
    database_url: str | None = typer.Option(None, "--database-url", help="SQLAlchemy URL."),
) -> None:
    """Run monitoring now over the stored observations and reader feedback: new alerts
    go to the triage alert channels and the audit log (docs/monitoring.md)."""
    from overread.config import load_settings
    from overread.models.registry import Registry
    from overread.service.monitor.run import registry_baselines, run_monitoring
    from overread.service.node import open_queue
    from overread.triage import TriageConfig

    day = _day(date)
    config = service_settings(data_dir, database_url)
    try:
        triage = TriageConfig.model_validate(config.triage)
    except ValueError as exc:
        raise ConfigError(f"invalid [triage] settings: {exc}") from None
    database, _, _ = open_queue(config)
    try:
        report = run_monitoring(
            database,
            config.monitoring,
            triage,
            baselines=registry_baselines(Registry.from_settings(load_settings())),
            day=day,
        )
    finally:
        database.dispose()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), sort_keys=True))
        return
    typer.echo(
        f"monitoring {report.start} .. {report.day}: {report.observations} observation(s), "
        f"{report.labelled_studies} labelled study(ies), models {', '.join(report.models) or '-'}"
    )
    for alert in report.routed:
        typer.echo(f"  NEW {alert.kind.value}: {alert.message}")
    if report.repeated:
        typer.echo(f"  {len(report.repeated)} repeat(s) of conditions already alerted")
    if not report.routed:
        typer.echo("  no new alert")


@monitor_app.command("summary")
def monitor_summary(
    date: str | None = typer.Option(None, "--date", help="The UTC day, YYYY-MM-DD (today)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="The gateway's data dir."),
    database_url: str | None = typer.Option(None, "--database-url", help="SQLAlchemy URL."),
) -> None:
    """The daily summary: studies, findings, alerts, referrals, refusals, latency,
    drift per site and performance per label (keys: docs/monitoring.md)."""
    from overread.service.monitor.summary import daily_summary
    from overread.service.node import open_queue

    day = _day(date) or dt.datetime.now(dt.UTC).date()
    config = service_settings(data_dir, database_url)
    database, _, _ = open_queue(config)
    try:
        data = daily_summary(database, day).to_dict()
    finally:
        database.dispose()
    if as_json:
        typer.echo(json.dumps(data, sort_keys=True))
        return
    latency = data["latency_seconds"]["turnaround"]
    typer.echo(f"{data['date']}: {data['studies']} studies, {data['analysed']} analysed")
    findings = ", ".join(f"{k} {v}" for k, v in data["findings"].items()) or "none"
    typer.echo(f"  positive findings: {findings}")
    typer.echo(
        f"  alerts: {data['alerts']['critical']} critical, {data['alerts']['monitoring']} "
        f"monitoring; referrals {data['referrals']['studies']}; not analysed "
        f"{data['refusals']['not_analysed_studies']}; failed jobs {data['refusals']['failed_jobs']}"
    )
    typer.echo(f"  turnaround p50 {latency['p50']} s, p95 {latency['p95']} s ({latency['n']} jobs)")
    for d in data["drift"]:
        typer.echo(f"  drift {d['site']}: {d['status']} (score {d['combined_score']}, {d['date']})")
    for p in data["performance"]:
        typer.echo(
            f"  {p['model']} {p['label']} {p['window_days']} d: AUC {p['auc']} "
            f"(n {p['n']}, baseline {p['baseline']}): {p['status']}"
        )
