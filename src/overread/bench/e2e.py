"""``overread bench e2e``: C-STORE of a phantom chest X-ray to its SR stored at a PACS.

The set-up is the product's own path with real peers on loopback:

* phantom CR/DX studies (``overread.phantom``, 16-bit, a few detector sizes) are
  given fresh UIDs per send and sent by DCMTK ``storescu``, one association each;
* the gateway runs in this process (:class:`overread.gateway.Gateway`) with
  the default chest route and the bundled model: workers are its threads on the
  embedded SQLite database (``embedded``), or ``overread worker --broker``
  processes woken over RabbitMQ on a fresh PostgreSQL database (``celery``);
* DCMTK ``storescp`` is the PACS; a watcher notes when each SR file is complete in
  its folder (parsable, the study's UID in it).

Latency is from the ``storescu`` start (the first byte of the association) to the
SR complete at the PACS. The timed runs complete studies on association release
(the chest route's default), so no stable-age wait is in them; one further run
completes on the stable-age rule instead and reports the wait it measured as
``stable_wait_s``. Stage shares come from the database's timestamps (instance
commit, study completion, job start and finish) and from the stage timings the
worker stores with each result; the rest is computed from times noted here.
"""

from __future__ import annotations

import contextlib
import gc
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.uid import generate_uid

from overread.bench.machine import BENCH_AE_TITLE, machine_info, percentile, require_dcmtk
from overread.config import Settings
from overread.errors import ConfigError, ServiceError
from overread.harness import (
    PACS_AE_TITLE,
    PacsWatcher,
    StorescpPacs,
    end_process,
    storescu,
    wait_port,
)
from overread.harness.gateway import Gateway as RunningGateway
from overread.harness.gateway import loopback_config
from overread.harness.gateway import running_gateway as running_loopback_gateway
from overread.imaging import read_dataset

Progress = Callable[[str, int, int], None]

DEFAULT_POSTGRES = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
DEFAULT_BROKER = "amqp://guest:guest@127.0.0.1:5672//"
STAGES = (
    "ingest",
    "assembly_wait",
    "queue_wait",
    "read_preprocess",
    "model_forward",
    "postprocess_explain",
    "sr_build",
    "infer_other",
    "export",
)

#: How many of the slowest studies ``stage_breakdown`` lists with their stages.
SLOWEST = 5


@dataclass(frozen=True)
class E2EOptions:
    """What ``overread bench e2e`` runs.

    Parameters
    ----------
    studies
        Timed studies per arrival rate and per saturation run.
    rates
        Arrival rates (studies per second) of the latency runs.
    workers
        Worker counts of the saturation runs.
    backends
        ``embedded`` (SQLite, worker threads) and/or ``celery`` (PostgreSQL, worker
        processes woken over RabbitMQ).
    latency_workers
        Workers during the latency runs (1: one CXR at a time; the service's default
        is 2).
    arrival
        ``poisson`` (exponential gaps) or ``fixed`` (even gaps).
    sizes
        Detector sizes in pixels of the phantom templates (square, 16-bit).
    stable_wait_s, stable_studies
        The stable-age configuration: its wait and how many studies it times.
    ingest_files, ingest_size
        The short ingest run against ``storescp`` inside e2e.
    max_seconds
        Bound on the whole benchmark; runs that would start later are skipped.
    celery_worker_processes
        Celery worker process counts (e.g. ``(1, 2)``): one more saturation run per
        count on the ``celery`` backend, every run sent the same study files, and
        the studies/s of each against the first count's (empty: none).
    """

    studies: int = 30
    rates: tuple[float, ...] = (0.5, 1.0, 2.0)
    workers: tuple[int, ...] = (1, 2, 4)
    backends: tuple[str, ...] = ("embedded",)
    latency_workers: int = 1
    arrival: str = "poisson"
    sizes: tuple[int, ...] = (2000, 2500, 3000)
    stable_wait_s: float = 2.0
    stable_studies: int = 5
    ingest_files: int = 12
    ingest_size: int = 1600
    max_seconds: float = 1200.0
    seed: int = 0
    postgres_url: str = DEFAULT_POSTGRES
    broker_url: str = DEFAULT_BROKER
    model: str | None = None
    celery_worker_processes: tuple[int, ...] = ()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option."""
        if self.studies < 1:
            raise ConfigError(f"bench e2e: --studies must be >= 1, got {self.studies}")
        if not self.rates or min(self.rates) <= 0:
            raise ConfigError("bench e2e: --rates must be positive studies per second")
        if not self.workers or min(self.workers) < 1 or max(self.workers) > 16:
            raise ConfigError("bench e2e: --workers must be between 1 and 16")
        if not 1 <= self.latency_workers <= 16:
            raise ConfigError("bench e2e: --latency-workers must be between 1 and 16")
        for backend in self.backends:
            if backend not in ("embedded", "celery"):
                raise ConfigError(f"bench e2e: --backend {backend!r} is not embedded or celery")
        if self.arrival not in ("poisson", "fixed"):
            raise ConfigError(f"bench e2e: --arrival {self.arrival!r} is not poisson or fixed")
        if not self.sizes or min(self.sizes) < 64 or max(self.sizes) > 3000:
            raise ConfigError("bench e2e: --sizes must be between 64 and 3000 pixels")
        if self.celery_worker_processes and (
            min(self.celery_worker_processes) < 1 or max(self.celery_worker_processes) > 16
        ):
            raise ConfigError("bench e2e: --celery-worker-processes must be between 1 and 16")


# -- phantom studies -------------------------------------------------------------------
class StudyFactory:
    """Phantom templates, each send given fresh Study/Series/SOP Instance UIDs."""

    def __init__(self, root: Path, sizes: tuple[int, ...], seed: int) -> None:
        from overread.phantom import generate_cohort

        self.root = root
        self.templates: list[pydicom.Dataset] = []
        for size in sizes:
            cohort = root / f"phantom-{size}"
            generate_cohort(cohort, n=2, seed=seed + size, rows=size, cols=size, workers=1)
            for path in sorted(cohort.rglob("*.dcm")):
                self.templates.append(read_dataset(path))
        if not self.templates:
            raise ServiceError("the phantom generator wrote no DICOM file")
        self._count = 0

    def make(self, folder: Path) -> tuple[Path, str]:
        """Write one new study (one image) under ``folder``; return its path and UID."""
        template = self.templates[self._count % len(self.templates)]
        self._count += 1
        ds = template.copy()
        study, series, sop = generate_uid(), generate_uid(), generate_uid()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study, series, sop
        ds.file_meta.MediaStorageSOPInstanceUID = sop
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{self._count:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path, study


# -- the gateway -----------------------------------------------------------------------
def overread_command() -> list[str]:
    """How to run this installation's ``overread`` in a child process."""
    script = shutil.which("overread", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "overread"]


@contextlib.contextmanager
def fresh_postgres(server_url: str) -> Iterator[str]:
    """A new, empty PostgreSQL database on ``server_url``'s server, dropped afterwards."""
    import sqlalchemy

    name = f"overread_bench_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except sqlalchemy.exc.SQLAlchemyError as exc:
        admin.dispose()
        raise ServiceError(f"cannot create a PostgreSQL database on {server_url}: {exc}") from None
    url = sqlalchemy.engine.make_url(server_url).set(database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError), admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@dataclass
class Gateway:
    """A started gateway and its PACS."""

    service: RunningGateway
    pacs: PacsWatcher
    port: int
    ae_title: str
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)


@contextlib.contextmanager
def running_gateway(
    root: Path,
    *,
    backend: str,
    workers: int,
    options: E2EOptions,
    stable: bool = False,
    watch_interval: float = 0.002,
) -> Iterator[Gateway]:
    """PACS (``storescp``) + gateway (+ worker processes for ``celery``), stopped on exit;
    the PACS folder is looked at every ``watch_interval`` seconds."""
    pacs_dir = root / "pacs"
    pacs = StorescpPacs(pacs_dir)
    pacs.start(attempts=5)
    watcher = PacsWatcher(pacs_dir, interval=watch_interval)
    watcher.start()
    stack = contextlib.ExitStack()
    try:
        database_url: str | None = None
        if backend == "celery":
            database_url = stack.enter_context(fresh_postgres(options.postgres_url))
        routes = None
        if stable:
            routes = [
                {
                    "name": "chest-xray",
                    "modality": ["CR", "DX"],
                    "body_part": ["CHEST"],
                    "models": [options.model or "cxr-default"],
                    "complete_on_release": False,
                }
            ]
        elif options.model:
            routes = [
                {
                    "name": "chest-xray",
                    "modality": ["CR", "DX"],
                    "body_part": ["CHEST"],
                    "models": [options.model],
                    "complete_on_release": True,
                }
            ]
        data_dir = root / "gateway"
        config = loopback_config(
            Settings(data_dir=data_dir),
            workers=0 if backend == "celery" else workers,
            database_url=database_url,
            broker_url=options.broker_url if backend == "celery" else None,
            destinations=[f"PACS={PACS_AE_TITLE}@127.0.0.1:{pacs.port}"],
            stable_seconds=options.stable_wait_s if stable else 30,
            routes=routes,
        )
        service = stack.enter_context(running_loopback_gateway(config))
        gateway = Gateway(service, watcher, int(service.dicom_port or 0), config.ae_title)
        if backend == "celery":
            assert database_url is not None
            for _ in range(workers):
                process = subprocess.Popen(
                    [
                        *overread_command(),
                        "worker",
                        "--data-dir",
                        str(data_dir),
                        "--database-url",
                        database_url,
                        "--workers",
                        "1",
                        "--broker",
                        options.broker_url,
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                gateway.workers.append(process)
                stack.callback(end_process, process)
        wait_port(gateway.port)
        yield gateway
    finally:
        stack.close()
        watcher.stop()
        pacs.stop()


# -- one run ---------------------------------------------------------------------------
@dataclass
class Sent:
    """One timed study."""

    study: str
    path: Path
    due: float = 0.0
    start_wall: float = 0.0
    sent_wall: float = 0.0
    arrived_wall: float | None = None
    error: str | None = None

    @property
    def latency(self) -> float | None:
        """Seconds from the ``storescu`` start to the SR complete at the PACS."""
        return None if self.arrived_wall is None else self.arrived_wall - self.start_wall


def _send_one(gateway: Gateway, item: Sent) -> None:
    item.start_wall = time.time()
    try:
        storescu(gateway.port, [item.path], gateway.ae_title, BENCH_AE_TITLE)
    except (ServiceError, subprocess.SubprocessError) as exc:
        item.error = str(exc)
    item.sent_wall = time.time()


def run_schedule(
    gateway: Gateway,
    items: list[Sent],
    *,
    deadline: float,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Send each item at its ``due`` offset (seconds) and wait for every SR or ``deadline``."""
    start = time.monotonic()
    threads: list[threading.Thread] = []
    for item in items:
        delay = start + item.due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if time.monotonic() > deadline:
            item.error = "not sent: --max-seconds reached"
            continue
        thread = threading.Thread(target=_send_one, args=(gateway, item), daemon=True)
        thread.start()
        threads.append(thread)
    waiting = [i for i in items if i.error is None]
    done = 0
    while waiting and time.monotonic() < deadline:
        still = []
        for item in waiting:
            item.arrived_wall = gateway.pacs.arrived(item.study)
            if item.arrived_wall is None and item.error is None:
                still.append(item)
        if len(still) != len(waiting):
            done += len(waiting) - len(still)
            if progress is not None:
                progress(done)
        waiting = still
        time.sleep(0.005)
    for thread in threads:
        thread.join(30)


def _schedule(n: int, rate: float, arrival: str, rng: np.random.Generator) -> list[float]:
    if arrival == "fixed":
        return [i / rate for i in range(n)]
    gaps = rng.exponential(1.0 / rate, n)
    gaps[0] = 0.0
    return list(np.cumsum(gaps))


def _ts(value: datetime | None) -> float | None:
    return None if value is None else value.timestamp()


def stage_breakdown(database: Any, items: list[Sent]) -> dict[str, Any]:
    """Mean seconds per stage over the studies that reached the PACS, and the shares."""
    from sqlalchemy import select

    from overread.service.db import Instance, Job, JobKind, Result, Study

    done = [i for i in items if i.latency is not None]
    uids = [i.study for i in done]
    if not uids:
        return {"studies": 0, "mean_s": {}, "share": {}}
    with database.session() as session:
        received: dict[str, Any] = {}
        last_received: dict[str, Any] = {}
        for uid, at in session.execute(
            select(Instance.study_instance_uid, Instance.received_at).where(
                Instance.study_instance_uid.in_(uids), Instance.modality != "SR"
            )
        ).all():
            if uid not in received or at < received[uid]:
                received[uid] = at
            if uid not in last_received or at > last_received[uid]:
                last_received[uid] = at
        completed = dict(
            session.execute(
                select(Study.study_instance_uid, Study.completed_at).where(
                    Study.study_instance_uid.in_(uids)
                )
            ).all()
        )
        infer = {
            row.study_instance_uid: row
            for row in session.execute(
                select(Job.study_instance_uid, Job.started_at, Job.finished_at).where(
                    Job.study_instance_uid.in_(uids), Job.kind == JobKind.INFER.value
                )
            ).all()
        }
        timings = {
            row.study_instance_uid: dict((row.summary or {}).get("timings") or {})
            for row in session.execute(
                select(Result.study_instance_uid, Result.summary).where(
                    Result.study_instance_uid.in_(uids)
                )
            ).all()
        }
    per_stage: dict[str, list[float]] = {name: [] for name in STAGES}
    extra: dict[str, list[float]] = {}
    totals: list[float] = []
    after_receive: list[float] = []
    per_study: list[dict[str, Any]] = []
    for item in done:
        got, complete = _ts(received.get(item.study)), _ts(completed.get(item.study))
        job, times = infer.get(item.study), timings.get(item.study, {})
        if got is None or complete is None or job is None:
            continue
        started, finished = _ts(job.started_at), _ts(job.finished_at)
        if started is None or finished is None or item.arrived_wall is None:
            continue
        t = {k: float(v) for k, v in times.items() if isinstance(v, int | float)}
        model_total = t.get(
            "model_total",
            sum(
                t.get(k, 0.0)
                for k in ("read", "preprocess", "inference", "postprocess", "explain", "trust")
            ),
        )
        sr_build = t.get("sr_build", t.get("artifacts", 0.0))
        values = {
            "ingest": got - item.start_wall,
            "assembly_wait": complete - got,
            "queue_wait": started - complete,
            "read_preprocess": t.get("read", 0.0) + t.get("preprocess", 0.0),
            "model_forward": t.get("inference", 0.0),
            # The explanation trust score is explaining too (its extra forward pass).
            "postprocess_explain": t.get("postprocess", 0.0)
            + t.get("explain", 0.0)
            + t.get("trust", 0.0),
            "sr_build": sr_build,
            "infer_other": max(0.0, (finished - started) - model_total - sr_build),
            "export": item.arrived_wall - finished,
        }
        for name, value in values.items():
            per_stage[name].append(value)
        for name, value in t.items():
            if name not in ("read", "preprocess", "inference", "postprocess", "explain", "trust"):
                extra.setdefault(name, []).append(value)
        totals.append(item.arrived_wall - item.start_wall)
        last = _ts(last_received.get(item.study))
        if last is not None:
            after_receive.append(item.arrived_wall - last)
        per_study.append(
            {
                "study": item.study,
                "image_mb": round(item.path.stat().st_size / 1e6, 1)
                if item.path.exists()
                else None,
                "sent_at_s": item.due,
                "total_s": item.arrived_wall - item.start_wall,
                "storescu_s": item.sent_wall - item.start_wall,
                **{f"{k}_s": v for k, v in values.items()},
            }
        )
    if not totals:
        return {"studies": 0, "mean_s": {}, "share": {}}
    mean_total = sum(totals) / len(totals)
    means = {k: (sum(v) / len(v) if v else 0.0) for k, v in per_stage.items()}
    return {
        "studies": len(totals),
        "mean_total_s": mean_total,
        "mean_s": means,
        "share": {k: v / mean_total for k, v in means.items()},
        "stored_timings_mean_s": {k: sum(v) / len(v) for k, v in extra.items()},
        # From the last image committed at the gateway to the SR complete at the PACS.
        "after_receive_p50_s": percentile(after_receive, 50),
        "after_receive_p95_s": percentile(after_receive, 95),
        # The slowest studies, each with its stages (what makes the tail).
        "slowest": sorted(per_study, key=lambda row: -float(row["total_s"]))[:SLOWEST],
    }


class GcPauses:
    """Python's garbage-collector pauses in this process (the gateway's threads are in
    it) while in the ``with`` block: count and longest pause per generation."""

    def __init__(self) -> None:
        self._start = 0.0
        self.pauses: dict[int, list[float]] = {}

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.perf_counter()
        else:
            self.pauses.setdefault(int(info["generation"]), []).append(
                time.perf_counter() - self._start
            )

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *_exc: object) -> None:
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(self._callback)

    def summary(self) -> dict[str, Any]:
        """Per generation: collections, total and longest pause (seconds)."""
        return {
            f"gen{gen}": {"count": len(v), "total_s": sum(v), "max_s": max(v)}
            for gen, v in sorted(self.pauses.items())
        }


def _latency_summary(items: list[Sent]) -> dict[str, Any]:
    latencies = [i.latency for i in items if i.latency is not None]
    return {
        "sent": len(items),
        "completed": len(latencies),
        "failed": sum(1 for i in items if i.error is not None),
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "p99_s": percentile(latencies, 99),
        "max_s": max(latencies) if latencies else float("nan"),
    }


# -- the benchmark ---------------------------------------------------------------------
def _progress_for(report: Progress, task: str, total: int) -> Callable[[int], None]:
    def update(done: int) -> None:
        report(task, done, total)

    return update


def _warm_up(gateway: Gateway, factory: StudyFactory, folder: Path, deadline: float) -> None:
    """One untimed study: loads the model and opens every connection."""
    path, study = factory.make(folder)
    item = Sent(study, path)
    run_schedule(gateway, [item], deadline=min(deadline, time.monotonic() + 300))
    if item.latency is None:
        raise ServiceError(
            f"the warm-up study never reached the PACS ({item.error or 'no SR within the time'})"
        )


def _saturation(
    gateway: Gateway,
    items: list[Sent],
    *,
    deadline: float,
    report: Progress,
    task: str,
) -> dict[str, Any]:
    """Send ``items`` (due a few ms apart) and measure the rate the SRs reach the PACS."""
    report(task, 0, len(items))
    run_schedule(
        gateway, items, deadline=deadline, progress=_progress_for(report, task, len(items))
    )
    arrived = [i.arrived_wall for i in items if i.arrived_wall is not None]
    first = min(i.start_wall for i in items if i.start_wall)
    span = (max(arrived) - first) if arrived else float("nan")
    rate_s = len(arrived) / span if arrived and span > 0 else float("nan")
    return {
        "studies": len(items),
        "completed": len(arrived),
        "seconds": span,
        "studies_per_s": rate_s,
        "studies_per_day": rate_s * 86400 if math.isfinite(rate_s) else rate_s,
        **{k: v for k, v in _latency_summary(items).items() if k.endswith("_s")},
        "stages": stage_breakdown(gateway.service.database, items),
    }


def _celery_scaling(
    options: E2EOptions,
    factory: StudyFactory,
    root: Path,
    *,
    deadline: float,
    report: Progress,
    skipped: list[str],
) -> dict[str, Any]:
    """Saturation on the Celery backend with each worker process count, the same studies."""
    paths = [factory.make(root / "studies") for _ in range(options.studies)]
    runs: list[dict[str, Any]] = []
    for index, count in enumerate(options.celery_worker_processes):
        if time.monotonic() > deadline:
            skipped.append(f"celery scaling x{count} process(es): --max-seconds reached")
            continue
        with running_gateway(
            root / f"x{count}-{index}", backend="celery", workers=count, options=options
        ) as gateway:
            _warm_up(gateway, factory, root / f"x{count}-{index}" / "warm", deadline)
            items = [Sent(study, path, due=i * 0.05) for i, (path, study) in enumerate(paths)]
            measured = _saturation(
                gateway,
                items,
                deadline=deadline,
                report=report,
                task=f"celery: {count} worker process(es), the same studies",
            )
        runs.append({"worker_processes": count, **measured})
    base = runs[0]["studies_per_s"] if runs else float("nan")
    for row in runs:
        ok = math.isfinite(base) and base > 0 and math.isfinite(row["studies_per_s"])
        row["ratio_to_first"] = row["studies_per_s"] / base if ok else float("nan")
    return {
        "studies": options.studies,
        "runs": runs,
        "ratio": runs[-1]["ratio_to_first"] if len(runs) > 1 else float("nan"),
    }


def benchmark_e2e(options: E2EOptions, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run the end-to-end benchmark described by ``options`` and return its figures.

    Returns
    -------
    dict
        ``p50_s``/``p95_s``/``p99_s`` (send to SR at the PACS at the lowest rate of
        the first backend, stable wait excluded), ``p95_after_receive_s`` (the same
        from the last image committed at the gateway), ``stable_wait_s`` (the stable-age
        wait measured in its own run), ``overhead_fraction`` (share of the end-to-end
        time not spent in the model's forward pass), ``ingest_ratio_vs_dcmtk``,
        ``latency`` (per backend and rate), ``saturation`` (per backend and worker
        count: studies/s and studies/day), ``stages`` (mean seconds and shares) and
        ``machine``; with ``celery_worker_processes``, ``celery_scaling`` (per process
        count: the saturation figures and ``ratio_to_first``; ``ratio``: the last
        count's studies/s over the first's) and ``celery_scaling_ratio`` (that ratio).
    """
    options.validate()
    require_dcmtk()
    started = time.monotonic()
    deadline = started + options.max_seconds
    report = progress or (lambda _task, _done, _total: None)
    rng = np.random.default_rng(options.seed)
    result: dict[str, Any] = {
        "options": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in options.__dict__.items()
            if k not in ("postgres_url", "broker_url")
        },
        "gateway": "in-process overread.gateway.Gateway; DCMTK storescu -> it -> DCMTK storescp",
        "latency": [],
        "saturation": [],
        "skipped": [],
    }
    with tempfile.TemporaryDirectory(prefix="overread-bench-e2e-") as tmp:
        root = Path(tmp)
        report("phantom studies", 0, 1)
        factory = StudyFactory(root / "templates", options.sizes, options.seed)
        report("phantom studies", 1, 1)
        result["image_mb"] = sorted({round(len(t.PixelData) / 1e6, 1) for t in factory.templates})
        run = 0
        lowest_items: list[Sent] = []
        lowest_stages: dict[str, Any] = {}
        for backend in options.backends:
            # Latency at each arrival rate, one gateway (warm) for all rates.
            if time.monotonic() > deadline:
                result["skipped"].append(f"{backend} latency: --max-seconds reached")
                continue
            run += 1
            with running_gateway(
                root / f"run{run}",
                backend=backend,
                workers=options.latency_workers,
                options=options,
            ) as gateway:
                _warm_up(gateway, factory, root / f"run{run}" / "warm", deadline)
                for rate in sorted(options.rates):
                    if time.monotonic() > deadline:
                        result["skipped"].append(f"{backend} rate {rate}/s: --max-seconds reached")
                        continue
                    items = [
                        Sent(study, path, due=due)
                        for due, (path, study) in zip(
                            _schedule(options.studies, rate, options.arrival, rng),
                            [
                                factory.make(root / f"run{run}" / f"rate{rate}")
                                for _ in range(options.studies)
                            ],
                            strict=True,
                        )
                    ]
                    task = f"{backend}: {rate:g} studies/s"
                    report(task, 0, len(items))
                    with GcPauses() as pauses:
                        run_schedule(
                            gateway,
                            items,
                            deadline=deadline,
                            progress=_progress_for(report, task, len(items)),
                        )
                    summary = _latency_summary(items)
                    stages = stage_breakdown(gateway.service.database, items)
                    result["latency"].append(
                        {
                            "backend": backend,
                            "rate_per_s": rate,
                            "workers": options.latency_workers,
                            **summary,
                            "stages": stages,
                            "gc_pauses": pauses.summary(),
                        }
                    )
                    if backend == options.backends[0] and not lowest_items:
                        lowest_items, lowest_stages = items, stages
            # Throughput at saturation, one fresh gateway per worker count.
            for count in options.workers:
                if time.monotonic() > deadline:
                    result["skipped"].append(
                        f"{backend} saturation x{count}: --max-seconds reached"
                    )
                    continue
                run += 1
                with running_gateway(
                    root / f"run{run}", backend=backend, workers=count, options=options
                ) as gateway:
                    _warm_up(gateway, factory, root / f"run{run}" / "warm", deadline)
                    items = [
                        Sent(study, path, due=i * 0.05)
                        for i, (path, study) in enumerate(
                            factory.make(root / f"run{run}" / "burst")
                            for _ in range(options.studies)
                        )
                    ]
                    measured = _saturation(
                        gateway,
                        items,
                        deadline=deadline,
                        report=report,
                        task=f"{backend}: saturation, {count} worker(s)",
                    )
                    result["saturation"].append({"backend": backend, "workers": count, **measured})
        # Celery worker processes, one and then more, on the same studies.
        if options.celery_worker_processes:
            run += 1
            scaling = _celery_scaling(
                options,
                factory,
                root / f"run{run}",
                deadline=deadline,
                report=report,
                skipped=result["skipped"],
            )
            result["celery_scaling"] = scaling
            result["celery_scaling_ratio"] = scaling["ratio"]
        # The stable-age rule: its own run, the wait reported on its own.
        first_backend = options.backends[0]
        if time.monotonic() < deadline and options.stable_studies > 0:
            run += 1
            with running_gateway(
                root / f"run{run}",
                backend=first_backend,
                workers=options.latency_workers,
                options=options,
                stable=True,
            ) as gateway:
                _warm_up(gateway, factory, root / f"run{run}" / "warm", deadline)
                gap = max(options.stable_wait_s * 2.0, 1.0 / min(options.rates))
                items = [
                    Sent(study, path, due=i * gap)
                    for i, (path, study) in enumerate(
                        factory.make(root / f"run{run}" / "stable")
                        for _ in range(options.stable_studies)
                    )
                ]
                task = f"{first_backend}: stable wait {options.stable_wait_s:g} s"
                report(task, 0, len(items))
                run_schedule(
                    gateway,
                    items,
                    deadline=deadline,
                    progress=_progress_for(report, task, len(items)),
                )
                stages = stage_breakdown(gateway.service.database, items)
                summary = _latency_summary(items)
                result["stable"] = {
                    "configured_s": options.stable_wait_s,
                    **summary,
                    "stages": stages,
                }
                result["stable_wait_s"] = stages.get("mean_s", {}).get(
                    "assembly_wait", float("nan")
                )
        else:
            result["skipped"].append(
                "stable-wait run: "
                + ("--stable-studies 0" if options.stable_studies == 0 else "--max-seconds reached")
            )
            result["stable_wait_s"] = float("nan")
        # A short side-by-side ingest run.
        if time.monotonic() < deadline:
            from overread.bench.ingest import benchmark_ingest_side_by_side

            report("ingest vs storescp", 0, 1)
            ingest = benchmark_ingest_side_by_side(
                files=options.ingest_files, size=options.ingest_size, associations=1, repeats=2
            )
            report("ingest vs storescp", 1, 1)
            result["ingest"] = ingest
            result["ingest_ratio_vs_dcmtk"] = ingest["ratio_1"]
        else:
            result["skipped"].append("ingest run: --max-seconds reached")
            result["ingest_ratio_vs_dcmtk"] = float("nan")
    low = _latency_summary(lowest_items)
    result["p50_s"], result["p95_s"], result["p99_s"] = low["p50_s"], low["p95_s"], low["p99_s"]
    result["p95_after_receive_s"] = lowest_stages.get("after_receive_p95_s", float("nan"))
    mean_total = lowest_stages.get("mean_total_s")
    forward = lowest_stages.get("mean_s", {}).get("model_forward")
    result["overhead_fraction"] = (
        1.0 - forward / mean_total if mean_total and forward is not None else float("nan")
    )
    result["machine"] = machine_info()
    result["seconds"] = time.monotonic() - started
    return result


def with_overrides(options: E2EOptions, **changes: Any) -> E2EOptions:
    """A copy of ``options`` with ``changes`` applied (``None`` values ignored)."""
    return replace(options, **{k: v for k, v in changes.items() if v is not None})


__all__ = [
    "STAGES",
    "E2EOptions",
    "StudyFactory",
    "benchmark_e2e",
    "fresh_postgres",
    "overread_command",
    "stage_breakdown",
    "with_overrides",
]
