"""The end-to-end demonstration: a modality, the gateway and a PACS on one machine.

``overread demo`` shows the whole path a study takes without any outside system:
a phantom cohort (generated once per seed, count and size, then reused) is sent
study by study by C-STORE at a steady rate, as a modality would; the gateway runs
in-process on free loopback ports with its embedded defaults (SQLite and local
storage in the data dir, the bundled ``cxr-default`` model, completion on
association release); and an in-process PACS (a pynetdicom C-STORE SCP) receives
the Structured Reports the gateway sends back. The gateway's state is reset on
each run so the counts shown are this run's, while the cohort is kept.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.transport import ThreadedAssociationServer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import func, select

from overread.errors import ConfigError

logger = logging.getLogger(__name__)

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
PACS_AE_TITLE = "PACSAE"
MODALITY_AE_TITLE = "MODALITY"
DEMO_USER = "demo"

#: Job states after which nothing more happens without an operator.
_TERMINAL_STATES = frozenset({"succeeded", "dead_lettered"})


@dataclass(frozen=True)
class DemoOptions:
    """What ``overread demo`` was asked to do."""

    data_dir: Path
    studies: int = 40
    rate: float = 1.0
    seed: int = 0
    size: int = 1024
    duration: float | None = None
    exit_when_done: bool = False
    workers: int = 2

    def validate(self) -> None:
        """Refuse values that cannot make a demo, naming the option."""
        if self.studies < 1:
            raise ConfigError(f"--studies must be at least 1, not {self.studies}")
        if not self.rate > 0:
            raise ConfigError(f"--rate must be above 0 studies per second, not {self.rate}")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"--duration must be above 0 seconds, not {self.duration}")
        if not 64 <= self.size <= 4096:
            raise ConfigError(f"--size must be between 64 and 4096 pixels, not {self.size}")


@dataclass
class DemoProgress:
    """Counts shown while the demo runs (one snapshot)."""

    studies: int
    images: int
    sent_studies: int = 0
    sent_images: int = 0
    send_failures: int = 0
    read: int = 0
    failed: int = 0
    srs_at_pacs: int = 0
    objects_at_pacs: int = 0
    critical: int = 0
    jobs_active: int = 0

    @property
    def done(self) -> bool:
        """Everything sent, every study read (or given up on), every job finished."""
        return (
            self.sent_studies + self.send_failures >= self.studies
            and self.read + self.failed >= self.sent_studies
            and self.jobs_active == 0
        )


@dataclass
class DemoSummary:
    """What the demo leaves behind, for the final report and for tests."""

    progress: DemoProgress
    pacs_dir: Path
    gateway_dir: Path
    worklist: list[dict[str, Any]] = field(default_factory=list)
    worklist_total: int = 0
    audit_ok: bool = False
    audit_line: str = ""
    completed: bool = False


@dataclass(frozen=True)
class CohortStudy:
    """One study of the cohort: its UID and its image files."""

    study_instance_uid: str
    files: tuple[Path, ...]


# -- the cohort -------------------------------------------------------------------------
def cohort_dir(data_dir: Path, *, seed: int, studies: int, size: int) -> Path:
    """Where the cohort for these parameters is kept (reused when present)."""
    return data_dir / "cohorts" / f"seed{seed}-n{studies}-{size}px"


def prepare_cohort(
    options: DemoOptions,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Path, bool]:
    """Generate the phantom cohort, or reuse one generated with the same parameters.

    Returns the cohort folder and whether it was reused. A cohort is complete only
    once its ``cohort.json`` exists (written last by the generator), so an
    interrupted generation is redone rather than half reused.
    """
    from overread.phantom import generate_cohort

    out = cohort_dir(
        options.data_dir, seed=options.seed, studies=options.studies, size=options.size
    )
    if (out / "cohort.json").is_file() and (out / "labels.csv").is_file():
        return out, True
    if out.exists():
        shutil.rmtree(out)
    partial = out.with_name(out.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    generate_cohort(
        partial,
        n=options.studies,
        seed=options.seed,
        rows=options.size,
        cols=options.size,
        progress=progress,
        # In this process: forking a pool from a process that already runs threads
        # (rich, pynetdicom, torch) can deadlock a child; the output is the same.
        workers=1,
    )
    partial.rename(out)
    return out, False


def cohort_studies(cohort: Path) -> list[CohortStudy]:
    """The cohort's studies in the order a modality would acquire them (by study date)."""
    import csv

    by_study: dict[str, list[Path]] = defaultdict(list)
    dates: dict[str, str] = {}
    with (cohort / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            uid = row["StudyInstanceUID"]
            by_study[uid].append(cohort / row["Path"])
            dates.setdefault(uid, row.get("StudyDate", ""))
    order = sorted(by_study, key=lambda uid: (dates[uid], uid))
    return [CohortStudy(uid, tuple(sorted(by_study[uid]))) for uid in order]


# -- the PACS ---------------------------------------------------------------------------
class DemoPacs:
    """A C-STORE SCP standing in for the hospital PACS; objects land in ``out``.

    Parameters
    ----------
    out
        Folder receiving one file per SOP instance (``<SOPInstanceUID>.dcm``).
    ae_title
        The PACS's AE title, as configured on the gateway's destination.
    """

    def __init__(self, out: Path, ae_title: str = PACS_AE_TITLE) -> None:
        self.out = out
        self.ae_title = ae_title
        self.port = 0
        self._lock = threading.Lock()
        self._counts: dict[str, int] = defaultdict(int)
        self._server: ThreadedAssociationServer | None = None
        out.mkdir(parents=True, exist_ok=True)

    def _on_store(self, event: evt.Event) -> int:
        dataset: Dataset = event.dataset
        dataset.file_meta = event.file_meta
        sop_class = str(dataset.SOPClassUID)
        path = self.out / f"{dataset.SOPInstanceUID}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        with self._lock:
            self._counts[sop_class] += 1
        return 0x0000

    def start(self) -> int:
        """Listen on a free loopback port; return it."""
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        server = ae.start_server(
            ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._on_store)]
        )
        if server is None:  # pragma: no cover - only a blocking server returns None
            raise ConfigError("the demo PACS could not start listening")
        self._server = server
        self.port = int(server.server_address[1])
        return self.port

    def counts(self) -> dict[str, int]:
        """Objects received so far, by SOP class UID."""
        with self._lock:
            return dict(self._counts)

    def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None


# -- the modality -----------------------------------------------------------------------
class DemoModality(threading.Thread):
    """Sends the cohort's studies to the gateway by C-STORE, one study per association."""

    def __init__(
        self,
        studies: list[CohortStudy],
        *,
        port: int,
        called_ae: str,
        rate: float,
        stop: threading.Event,
    ) -> None:
        super().__init__(name="overread-demo-modality", daemon=True)
        self.studies = studies
        self.port = port
        self.called_ae = called_ae
        self.interval = 1.0 / rate
        self.stop_event = stop
        self.sent_studies = 0
        self.sent_images = 0
        self.failures = 0
        self.errors: list[str] = []

    def run(self) -> None:
        from overread.service.scu import send_files

        next_at = time.monotonic()
        for study in self.studies:
            if self.stop_event.wait(max(0.0, next_at - time.monotonic())):
                return
            next_at = max(next_at + self.interval, time.monotonic())
            statuses = send_files(
                list(study.files),
                ae_title=self.called_ae,
                host="127.0.0.1",
                port=self.port,
                calling_ae=MODALITY_AE_TITLE,
            )
            failed = [s for s in statuses if not s.ok]
            if failed:
                self.failures += 1
                self.errors.append(f"{study.study_instance_uid}: {failed[0].error}")
                logger.warning("sending %s failed: %s", study.study_instance_uid, failed[0].error)
            else:
                self.sent_studies += 1
                self.sent_images += len(statuses)


# -- the run ----------------------------------------------------------------------------
@contextmanager
def running_gateway(options: DemoOptions, pacs_port: int) -> Iterator[Any]:
    """The gateway in-process on free loopback ports, stopped on exit."""
    from overread.config import Settings
    from overread.service.config import service_config
    from overread.service.server import Service

    gateway_dir = options.data_dir / "gateway"
    settings = Settings(data_dir=gateway_dir, database_url=None)
    config = service_config(
        settings,
        dicom_host="127.0.0.1",
        dicom_port=0,
        http_host="127.0.0.1",
        http_port=0,
        workers=options.workers,
        stable_seconds=2.0,
        poll_seconds=0.5,
        retry_base_seconds=0.5,
        destinations=[f"PACS={PACS_AE_TITLE}@127.0.0.1:{pacs_port}"],
        allow_ae=[f"{MODALITY_AE_TITLE}@127.0.0.1"],
    )
    service = Service(config)
    try:
        service.start()
        yield service
    finally:
        service.stop(timeout=15)


def add_demo_user(service: Any) -> str | None:
    """Create the ``demo`` radiologist with a random password; return the password.

    Returns ``None`` when the access-control tables are not available.
    """
    try:
        from overread.security import add_user, create_tables
    except ImportError:  # pragma: no cover - the security package ships with overread
        return None
    create_tables(service.database.engine)
    password = secrets.token_urlsafe(12)
    with service.database.session() as session:
        add_user(session, DEMO_USER, "radiologist", password=password, actor="system:demo")
    return password


def snapshot(
    service: Any, pacs: DemoPacs, modality: DemoModality, progress: DemoProgress
) -> DemoProgress:
    """Refresh ``progress`` from the database, the PACS and the modality."""
    from overread.service.db import Job, Result
    from overread.triage import WorklistItem

    with service.database.session() as session:
        progress.read = int(session.scalar(select(func.count()).select_from(Result)) or 0)
        states = dict(
            session.execute(
                select(Job.state, func.count()).where(Job.kind == "infer").group_by(Job.state)
            ).all()
        )
        active = session.scalar(
            select(func.count()).select_from(Job).where(Job.state.not_in(_TERMINAL_STATES))
        )
        progress.critical = int(
            session.scalar(
                select(func.count()).select_from(WorklistItem).where(WorklistItem.has_critical)
            )
            or 0
        )
    progress.failed = int(states.get("dead_lettered", 0))
    progress.jobs_active = int(active or 0)
    counts = pacs.counts()
    progress.srs_at_pacs = counts.get(COMPREHENSIVE_SR, 0)
    progress.objects_at_pacs = sum(counts.values())
    progress.sent_studies = modality.sent_studies
    progress.sent_images = modality.sent_images
    progress.send_failures = modality.failures
    return progress


def final_report(service: Any, summary: DemoSummary, top: int = 10) -> DemoSummary:
    """Fill in the worklist's top rows and the audit chain's verdict."""
    from overread.audit import verify_chain
    from overread.triage import query_worklist

    with service.database.session() as session:
        page = query_worklist(session, limit=top)
        summary.worklist_total = page.total
        summary.worklist = [
            {
                "score": round(item.score, 1),
                "department": item.department or "-",
                "top_finding": _top_finding(item.findings),
                "critical": list(item.critical_findings),
                "study_instance_uid": item.study_instance_uid,
            }
            for item in page.items
        ]
    verdict = verify_chain(service.database.engine)
    summary.audit_ok = verdict.ok
    summary.audit_line = verdict.summary()
    return summary


def _top_finding(findings: list[Any]) -> str:
    best: tuple[float, str] | None = None
    for finding in findings or []:
        if isinstance(finding, dict) and "label" in finding:
            candidate = (float(finding.get("probability") or 0.0), str(finding["label"]))
            if best is None or candidate > best:
                best = candidate
    return f"{best[1]} {best[0]:.2f}" if best else "-"


def reset_run_state(data_dir: Path) -> tuple[Path, Path]:
    """Empty the gateway's and the PACS's folders so this run's counts start at zero."""
    gateway_dir, pacs_dir = data_dir / "gateway", data_dir / "pacs"
    for folder in (gateway_dir, pacs_dir):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
    return gateway_dir, pacs_dir


# -- the whole demo ---------------------------------------------------------------------
def run_demo(options: DemoOptions, stop: threading.Event, console: Console) -> DemoSummary:
    """Run the demo until done (``exit_when_done``), ``duration`` or ``stop`` is set.

    Parameters
    ----------
    options
        What to run.
    stop
        Set it (from a signal handler) to stop everything cleanly.
    console
        Where the live progress and the final report are shown.
    """
    options.validate()
    options.data_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
        auto_refresh=False,  # no refresh thread while the generator forks its workers
    ) as bar:
        task = bar.add_task(f"phantom cohort ({options.size} px)", total=options.studies)
        reused = (
            cohort_dir(
                options.data_dir, seed=options.seed, studies=options.studies, size=options.size
            )
            .joinpath("cohort.json")
            .is_file()
        )

        def _generated(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, refresh=True)
            if stop.is_set():
                raise DemoStoppedError("interrupted while generating the cohort")

        try:
            cohort, reused = prepare_cohort(options, progress=_generated)
        except DemoStoppedError:
            return DemoSummary(
                DemoProgress(options.studies, 0), options.data_dir / "pacs", options.data_dir
            )
        bar.update(task, completed=options.studies, total=options.studies)
    studies = cohort_studies(cohort)
    images = sum(len(s.files) for s in studies)
    console.print(
        f"cohort: {len(studies)} studies, {images} images in {cohort} "
        f"({'reused' if reused else 'generated'})"
    )
    gateway_dir, pacs_dir = reset_run_state(options.data_dir)
    pacs = DemoPacs(pacs_dir)
    pacs_port = pacs.start()
    progress = DemoProgress(len(studies), images)
    summary = DemoSummary(progress, pacs_dir, gateway_dir)
    modality: DemoModality | None = None
    try:
        with running_gateway(options, pacs_port) as service:
            base = f"http://127.0.0.1:{service.http_port}"
            console.print(
                f"gateway: DICOM {service.config.ae_title}@127.0.0.1:{service.dicom_port}, "
                f"data in {gateway_dir}; PACS {PACS_AE_TITLE}@127.0.0.1:{pacs_port} -> {pacs_dir}"
            )
            console.print(f"HTTP API: {base}/health  {base}/api/jobs  {base}/api/studies")
            password = add_demo_user(service)
            if password is not None:
                console.print(f"demo user: {DEMO_USER} (radiologist), password {password}")
            console.print("The web UI is not part of this release; use the HTTP API above.")
            console.print(
                f"ready in {time.monotonic() - started:.1f} s; sending {len(studies)} studies "
                f"at {options.rate:g}/s"
            )
            modality = DemoModality(
                studies,
                port=service.dicom_port or 0,
                called_ae=service.config.ae_title,
                rate=options.rate,
                stop=stop,
            )
            modality.start()
            summary.completed = _watch(options, service, pacs, modality, progress, stop, console)
            final_report(service, summary)
            _print_report(summary, console)
            if summary.completed and not options.exit_when_done:
                remaining = (
                    None
                    if options.duration is None
                    else started + options.duration - time.monotonic()
                )
                if remaining is None or remaining > 0:
                    console.print("all studies read; still serving (Ctrl-C to stop)")
                    stop.wait(remaining)
    finally:
        stop.set()
        if modality is not None:
            modality.join(30)
        pacs.stop()
    console.print("stopped")
    return summary


class DemoStoppedError(Exception):
    """Raised inside the cohort generator's progress callback to stop it early."""


def _watch(
    options: DemoOptions,
    service: Any,
    pacs: DemoPacs,
    modality: DemoModality,
    progress: DemoProgress,
    stop: threading.Event,
    console: Console,
) -> bool:
    """Show live counts until done, the duration is up, or ``stop``; return whether done."""
    deadline = None if options.duration is None else time.monotonic() + options.duration
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[note]}"),
        console=console,
    ) as bar:
        sent = bar.add_task("sent", total=progress.studies, note="studies by C-STORE")
        read = bar.add_task("read", total=progress.studies, note="results stored")
        srs = bar.add_task("SRs at PACS", total=progress.images, note="one per image")
        alerts = bar.add_task("critical", total=progress.studies, note="studies with alerts")
        while True:
            snapshot(service, pacs, modality, progress)
            bar.update(sent, completed=progress.sent_studies)
            bar.update(read, completed=progress.read)
            bar.update(srs, completed=progress.srs_at_pacs)
            bar.update(alerts, completed=progress.critical)
            if progress.failed or progress.send_failures:
                bar.update(
                    read,
                    note=f"results stored, {progress.failed} failed, "
                    f"{progress.send_failures} not sent",
                )
            if progress.done and not modality.is_alive():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if stop.wait(0.5):
                return False


def _print_report(summary: DemoSummary, console: Console) -> None:
    """The worklist's top rows and the audit verdict."""
    table = Table(title=f"worklist: top {len(summary.worklist)} of {summary.worklist_total}")
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
    console.print(table)
    progress = summary.progress
    console.print(
        f"sent {progress.sent_studies}/{progress.studies} studies, read {progress.read}, "
        f"failed {progress.failed}, {progress.srs_at_pacs} SRs and "
        f"{progress.objects_at_pacs} objects at the PACS, {progress.critical} critical"
    )
    console.print(f"audit verify: {summary.audit_line}")


__all__ = [
    "COMPREHENSIVE_SR",
    "CohortStudy",
    "DemoModality",
    "DemoOptions",
    "DemoPacs",
    "DemoProgress",
    "DemoStoppedError",
    "DemoSummary",
    "add_demo_user",
    "cohort_dir",
    "cohort_studies",
    "final_report",
    "prepare_cohort",
    "reset_run_state",
    "run_demo",
    "running_gateway",
    "snapshot",
]
