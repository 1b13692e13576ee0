"""What the demo shows: the addresses, the live tables and the final report."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from overread.demo.accounts import ADMIN_USER, DEMO_USER, DemoAccounts
from overread.demo.options import DemoProgress, DemoSummary, Timeline
from overread.harness import PacsLike

if TYPE_CHECKING:
    from overread.harness.gateway import Gateway


def progress_table(progress: DemoProgress, timeline: Timeline, elapsed: float) -> Table:
    """The live counts as a table."""
    table = Table(title=f"overread demo, {elapsed:,.0f} s", title_justify="left")
    table.add_column("step")
    table.add_column("count", justify="right")
    table.add_column("of", justify="right")
    table.add_column("")
    n = progress.studies

    def first(at: float | None) -> str:
        return "" if at is None else f"first after {at:.1f} s"

    rows = [
        ("generated", progress.generated, n, "phantom studies written"),
        ("sent", progress.sent_studies, n, first(timeline.first_sent)),
        ("received", progress.received, progress.sent_studies, "studies at the gateway"),
        ("inferred", progress.read, progress.received, f"{progress.failed} failed"),
        ("SR at PACS", progress.srs_at_pacs, progress.sent_images, first(timeline.first_sr)),
        ("critical", progress.critical, progress.read, f"{progress.alerts} alerts raised"),
    ]
    for step, count, total, note in rows:
        table.add_row(step, f"{count:,}", f"{total:,}", note)
    if progress.send_failures:
        table.add_row("not sent", f"{progress.send_failures:,}", f"{n:,}", "C-STORE failed")
    return table


def worklist_table(summary: DemoSummary) -> Table:
    """The worklist's top rows."""
    table = Table(
        title=f"worklist: top {len(summary.worklist)} of {summary.worklist_total}",
        title_justify="left",
    )
    for column in ("score", "department", "top finding", "critical", "study"):
        table.add_column(column)
    for row in summary.worklist:
        table.add_row(
            f"{row['score']:.1f}",
            row["department"],
            row["top_finding"],
            ", ".join(row["critical"]) or "-",
            "…" + row["study_instance_uid"][-10:],
        )
    return table


def print_addresses(
    console: Console,
    service: Gateway,
    pacs: PacsLike,
    accounts: DemoAccounts,
    base: str,
    ui: int,
    api: int,
) -> None:
    """Where the gateway, the PACS and the web UI are, and the logins."""
    console.print(
        f"gateway: DICOM {service.config.ae_title}@127.0.0.1:{service.dicom_port}, "
        f"data in {service.config.data_dir}"
    )
    console.print(
        f"PACS: {pacs.ae_title}@127.0.0.1:{pacs.port} ({pacs.kind}), objects in {pacs.out}"
    )
    if 200 <= ui < 400:
        console.print(f"web UI: {base}/  (login at {base}/login)")
    else:
        console.print(f"web UI: not in this build (GET / answered {ui}); HTTP API at {base}/api")
    if api != 200:
        console.print(f"note: GET /api/studies with the demo's token answered {api}")
    console.print(f"login: {DEMO_USER} / {accounts.password}  (radiologist)")
    console.print(f"login: {ADMIN_USER} / {accounts.admin_password}  (admin)")


def print_report(summary: DemoSummary, console: Console) -> None:
    """The counts, the timings and the checks."""
    progress, timeline = summary.progress, summary.timeline
    console.print(
        f"sent {progress.sent_studies}/{progress.studies} studies, read {progress.read}, "
        f"failed {progress.failed}, {progress.srs_at_pacs} SRs and "
        f"{progress.objects_at_pacs} objects at the PACS, {progress.critical} critical"
    )
    marks = {
        "HTTP ready": timeline.http_ready,
        "first study sent": timeline.first_sent,
        "first SR at the PACS": timeline.first_sr,
    }
    console.print(
        "seconds after launch: "
        + ", ".join(f"{name} {'-' if t is None else f'{t:.1f}'}" for name, t in marks.items())
    )
    for check in summary.checks:
        console.print(f"{'OK  ' if check.ok else 'FAIL'} {check.name}: {check.detail}")
    if summary.note:
        console.print(f"note: {summary.note}")


__all__ = ["print_addresses", "print_report", "progress_table", "worklist_table"]
