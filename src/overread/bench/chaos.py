"""``overread bench chaos``: the real ``overread serve`` under faults, then a reckoning.

Per backend (the embedded SQLite database with worker threads, or PostgreSQL with
``overread worker`` processes woken over RabbitMQ by Celery) the run starts the
service as child processes, a DCMTK ``storescp`` as the PACS, and a modality that
sends small chest DX studies throughout, by C-STORE (pynetdicom, so each instance's
status is known) and by STOW-RS. Meanwhile it goes through the faults, one phase
each:

* ``kill -9``: SIGKILL at seeded random moments (the gateway, or on PostgreSQL the
  gateway or a worker process), each restarted at once;
* ``PACS down``: the PACS stopped for a set time, then started on the same port;
* ``disk full``: the service processes' file-size limit (``RLIMIT_FSIZE``) set to
  zero for a set time, so every write that grows a file fails as on a full disk
  (the SQLite database's included), then lifted without a restart;
* ``idle-socket flood``: a hundred connections that never send an A-ASSOCIATE-RQ,
  reopened as the gateway closes them, while a C-ECHO and a C-STORE must succeed;
* ``oversized bodies``: a 200 MB JSON body declared to the login route, a JSON body
  streamed past the limit, a STOW-RS body declared past its limit: each must be
  answered 4xx.

Then it waits for the system to settle, stops it, and compares what was
acknowledged (C-STORE 0x0000, STOW-RS 200/202 listing the instance), stored (the
database), delivered (Structured Reports at the PACS) and audited (``receive`` per
instance, ``export`` per delivered report). :func:`assess` turns that into a verdict:
no acknowledged instance lost or left without a report, no two reports of different
content for one study and model, no missing audit event, no 5xx answer, every probe
passed.
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import json
import os
import random
import resource
import select
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError

from overread.bench.e2e import DEFAULT_BROKER, DEFAULT_POSTGRES, fresh_postgres, overread_command
from overread.bench.machine import machine_info, require_dcmtk
from overread.errors import ConfigError, ServiceError
from overread.harness import (
    GATEWAY_AE_TITLE,
    MODALITY_AE_TITLE,
    PACS_AE_TITLE,
    SR_CLASS_ROOT,
    StorescpPacs,
    end_process,
    free_port,
    wait_port,
    write_chest_dx,
)

Progress = Callable[[str, int, int], None]

#: What the phantom studies are: small (128 px) so that inference keeps up on 2 cores.
IMAGE_SIZE = 128
#: The 200 MB a login body declared in the adversarial run.
LOGIN_DECLARED_BYTES = 200_000_000
#: Past the default STOW-RS limit (512 MiB).
STOW_DECLARED_BYTES = 600 * 1024**2


class Backend(enum.StrEnum):
    """Where the service keeps its state and how its workers run."""

    SQLITE = "sqlite"
    POSTGRES = "postgres"


class Fault(enum.StrEnum):
    """The fault active while an instance was sent (one phase each, in this order)."""

    NONE = "none"
    KILL = "kill -9"
    PACS_DOWN = "PACS down"
    DISK_FULL = "disk full"
    IDLE_FLOOD = "idle-socket flood"
    OVERSIZED = "oversized bodies"


#: Each phase's share of ``--duration``.
PHASE_SHARES: dict[Fault, float] = {
    Fault.NONE: 0.10,
    Fault.KILL: 0.30,
    Fault.PACS_DOWN: 0.20,
    Fault.DISK_FULL: 0.15,
    Fault.IDLE_FLOOD: 0.15,
    Fault.OVERSIZED: 0.10,
}


class Channel(enum.StrEnum):
    """How an instance was sent."""

    C_STORE = "C-STORE"
    STOW_RS = "STOW-RS"


# -- what was observed -------------------------------------------------------------------
@dataclass(frozen=True)
class SentInstance:
    """One instance the modality sent, and what the gateway answered.

    ``status`` is the C-STORE status, or the STOW-RS request's HTTP status; ``None``
    when no answer came (no association, or the connection dropped).
    """

    sop_instance_uid: str
    study_instance_uid: str
    fault: Fault
    channel: Channel
    status: int | None
    acknowledged: bool


@dataclass(frozen=True)
class DeliveredReport:
    """One Structured Report the PACS holds."""

    sop_instance_uid: str
    study_instance_uid: str
    model: str
    content_digest: str


@dataclass(frozen=True)
class HttpAnswer:
    """One HTTP request of the run and its status (``None``: no answer)."""

    fault: Fault
    request: str
    status: int | None
    expected_4xx: bool = False


@dataclass(frozen=True)
class Probe:
    """A promise checked while a fault was on (a C-ECHO during the flood, ...)."""

    fault: Fault
    name: str
    passed: bool
    detail: str = ""


@dataclass
class ChaosObservation:
    """Everything one backend's run saw; :func:`assess` judges it."""

    backend: Backend
    sent: list[SentInstance] = field(default_factory=list)
    stored: set[str] = field(default_factory=set)
    delivered: list[DeliveredReport] = field(default_factory=list)
    receive_audited: set[str] = field(default_factory=set)
    export_audited: set[str] = field(default_factory=set)
    http: list[HttpAnswer] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    seconds: float = 0.0
    settle_seconds: float = 0.0


# -- the verdict ---------------------------------------------------------------------------
@dataclass(frozen=True)
class FaultRow:
    """Acknowledged vs stored vs delivered vs audited for the instances sent under one fault."""

    fault: str
    sent: int
    acknowledged: int
    unacknowledged: int
    stored: int
    lost: int
    studies_acknowledged: int
    studies_delivered: int
    receive_audited: int
    reports_delivered: int
    export_audited: int
    conflicting_duplicates: int
    http_5xx: int


@dataclass(frozen=True)
class ChaosVerdict:
    """One backend's rows (one per fault, then ``all``) and the broken promises."""

    backend: Backend
    rows: list[FaultRow]
    problems: list[str]

    @property
    def passed(self) -> bool:
        """Whether every promise held."""
        return not self.problems


def _examples(values: Sequence[str] | set[str], limit: int = 3) -> str:
    shown = sorted(values)[:limit]
    more = len(values) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def assess(observation: ChaosObservation) -> ChaosVerdict:
    """Judge a run: count per fault, and list every promise it broke.

    The promises: every acknowledged instance is stored (none lost); every study with
    an acknowledged instance has a report at the PACS; no study has two reports of
    one model with different content; every stored instance has its ``receive``
    event and every delivered report its ``export`` event; no HTTP answer is a 5xx
    and each oversized body got a 4xx; every probe passed.
    """
    obs = observation
    problems: list[str] = []
    by_study: dict[str, list[DeliveredReport]] = defaultdict(list)
    for report in {r.sop_instance_uid: r for r in obs.delivered}.values():
        by_study[report.study_instance_uid].append(report)
    conflicting: set[str] = set()
    for study, reports in by_study.items():
        per_model: dict[str, set[str]] = defaultdict(set)
        for report in reports:
            per_model[report.model].add(report.content_digest)
        if any(len(digests) > 1 for digests in per_model.values()):
            conflicting.add(study)
    study_fault: dict[str, Fault] = {}
    for sent in obs.sent:
        study_fault.setdefault(sent.study_instance_uid, sent.fault)

    def row(name: str, sent: list[SentInstance], answers: list[HttpAnswer]) -> FaultRow:
        acked = [s for s in sent if s.acknowledged]
        acked_studies = {s.study_instance_uid for s in acked}
        studies = {s.study_instance_uid for s in sent}
        reports = [r for st in studies for r in by_study.get(st, [])]
        return FaultRow(
            fault=name,
            sent=len(sent),
            acknowledged=len(acked),
            unacknowledged=sum(1 for s in sent if not s.acknowledged),
            stored=sum(1 for s in sent if s.sop_instance_uid in obs.stored),
            lost=sum(1 for s in acked if s.sop_instance_uid not in obs.stored),
            studies_acknowledged=len(acked_studies),
            studies_delivered=sum(1 for st in acked_studies if by_study.get(st)),
            receive_audited=sum(
                1
                for s in sent
                if s.sop_instance_uid in obs.stored and s.sop_instance_uid in obs.receive_audited
            ),
            reports_delivered=len(reports),
            export_audited=sum(1 for r in reports if r.sop_instance_uid in obs.export_audited),
            conflicting_duplicates=len(studies & conflicting),
            http_5xx=sum(1 for a in answers if a.status is not None and a.status >= 500),
        )

    rows = [
        row(
            fault.value,
            [s for s in obs.sent if s.fault is fault],
            [a for a in obs.http if a.fault is fault],
        )
        for fault in Fault
    ]
    rows.append(row("all", obs.sent, obs.http))

    acked = [s for s in obs.sent if s.acknowledged]
    lost = {s.sop_instance_uid for s in acked if s.sop_instance_uid not in obs.stored}
    if lost:
        problems.append(f"{len(lost)} acknowledged instance(s) not stored: {_examples(lost)}")
    undelivered = {s.study_instance_uid for s in acked if not by_study.get(s.study_instance_uid)}
    if undelivered:
        problems.append(
            f"{len(undelivered)} acknowledged study(ies) without a report at the PACS: "
            f"{_examples(undelivered)}"
        )
    if conflicting:
        problems.append(
            f"{len(conflicting)} study(ies) with reports of different content from one "
            f"model: {_examples(conflicting)}"
        )
    stored_sent = {s.sop_instance_uid for s in obs.sent if s.sop_instance_uid in obs.stored}
    unaudited = stored_sent - obs.receive_audited
    if unaudited:
        problems.append(
            f"{len(unaudited)} stored instance(s) without a receive audit event: "
            f"{_examples(unaudited)}"
        )
    unexported = {r.sop_instance_uid for r in obs.delivered} - obs.export_audited
    if unexported:
        problems.append(
            f"{len(unexported)} delivered report(s) without an export audit event: "
            f"{_examples(unexported)}"
        )
    for answer in obs.http:
        if answer.status is not None and answer.status >= 500:
            problems.append(f"{answer.request} ({answer.fault}): HTTP {answer.status}")
        elif answer.expected_4xx and not (answer.status is not None and 400 <= answer.status < 500):
            got = "no answer" if answer.status is None else f"HTTP {answer.status}"
            problems.append(f"{answer.request} ({answer.fault}): {got}, expected 4xx")
    for probe in obs.probes:
        if not probe.passed:
            problems.append(f"{probe.name} ({probe.fault}) failed: {probe.detail}")
    return ChaosVerdict(obs.backend, rows, problems)


# -- reading the PACS and the database -------------------------------------------------
def _content_items(
    items: Sequence[Dataset], path: str, into: list[str], model: dict[str, set[str]]
) -> None:
    """Flatten an SR content tree to ``path = value`` lines, UIDs and times left out."""
    for item in items:
        names = item.get("ConceptNameCodeSequence") or []
        name = str(names[0].CodeMeaning) if names else "?"
        where = f"{path}/{name}"
        kind = str(item.get("ValueType", ""))
        if kind == "CODE" and item.get("ConceptCodeSequence"):
            code = item.ConceptCodeSequence[0]
            into.append(f"{where}={code.CodingSchemeDesignator}:{code.CodeValue}")
        elif kind == "NUM" and item.get("MeasuredValueSequence"):
            into.append(f"{where}={item.MeasuredValueSequence[0].NumericValue}")
        elif kind == "TEXT" and name != "Tracking Identifier":
            into.append(f"{where}={item.get('TextValue', '')}")
            if name in ("Algorithm Name", "Algorithm Version"):
                model.setdefault(name, set()).add(str(item.get("TextValue", "")))
        if item.get("ContentSequence"):
            _content_items(item.ContentSequence, where, into, model)


def read_report(path: Path) -> DeliveredReport | None:
    """The report in ``path`` (a file the PACS wrote), or ``None`` if it is not an SR.

    Its content digest covers the coded, numeric and text values of the content tree
    (findings, probabilities, the algorithm) and leaves out UIDs, dates and times,
    which differ between two runs of one model on one study by design.
    """
    try:
        ds = dcmread(path)
    except (OSError, InvalidDicomError):
        return None
    if not str(ds.get("SOPClassUID", "")).startswith(SR_CLASS_ROOT):
        return None
    lines: list[str] = []
    algorithm: dict[str, set[str]] = {}
    _content_items(ds.get("ContentSequence") or [], "", lines, algorithm)
    digest = hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()
    model = " ".join(
        ",".join(sorted(algorithm.get(key, {"?"})))
        for key in ("Algorithm Name", "Algorithm Version")
    )
    return DeliveredReport(str(ds.SOPInstanceUID), str(ds.StudyInstanceUID), model, digest)


def _pacs_reports(folder: Path) -> list[DeliveredReport]:
    reports = []
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.name.startswith("SR"):
            report = read_report(path)
            if report is not None:
                reports.append(report)
    return reports


def _database_facts(url: str, sop_uids: set[str]) -> tuple[set[str], set[str], set[str]]:
    """Stored instances among ``sop_uids``, and the UIDs named by receive and export events."""
    from sqlalchemy import select

    from overread.audit import AuditAction, AuditEvent
    from overread.db import Database
    from overread.service.db import Instance

    database = Database(url, create=False)
    try:
        with database.session() as session:
            stored = set(session.scalars(select(Instance.sop_instance_uid)).all()) & sop_uids
            receive: set[str] = set()
            export: set[str] = set()
            rows = session.execute(
                select(AuditEvent.action, AuditEvent.object_uids).where(
                    AuditEvent.action.in_([AuditAction.RECEIVE.value, AuditAction.EXPORT.value])
                )
            ).all()
            for action, uids in rows:
                (receive if action == AuditAction.RECEIVE.value else export).update(
                    str(u) for u in uids or []
                )
    finally:
        database.engine.dispose()
    return stored, receive, export


# -- the options ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ChaosOptions:
    """What ``overread bench chaos`` runs.

    Parameters
    ----------
    backends
        ``sqlite`` and/or ``postgres`` (PostgreSQL + Celery/RabbitMQ workers).
    duration_s
        The faults' phases per backend, in all (start-up and settling come on top).
    seed
        Seeds the kill moments and victims, the send gaps and the channel choice.
    settle_s
        Longest wait, after the faults, for every acknowledged study's report.
    pacs_down_s, disk_full_s
        How long the PACS stays down and the disk stays full.
    idle_sockets
        Connections in the flood.
    kills
        Fewest kills: the kill phase lasts until it has done this many (a restart
        under load can take longer than the phase's share).
    send_interval_s
        Mean gap between two studies sent.
    stow_share
        Share of the studies sent by STOW-RS (the rest by C-STORE).
    """

    backends: tuple[Backend, ...] = (Backend.SQLITE, Backend.POSTGRES)
    duration_s: float = 150.0
    seed: int = 0
    settle_s: float = 240.0
    pacs_down_s: float = 20.0
    disk_full_s: float = 10.0
    idle_sockets: int = 100
    kills: int = 3
    send_interval_s: float = 0.6
    stow_share: float = 0.25
    postgres_url: str = DEFAULT_POSTGRES
    broker_url: str = DEFAULT_BROKER

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option."""
        if not self.backends:
            raise ConfigError("bench chaos: --backend names no backend")
        if self.duration_s < 30:
            raise ConfigError(f"bench chaos: --duration must be >= 30 s, got {self.duration_s:g}")
        if self.settle_s <= 0 or self.pacs_down_s <= 0 or self.disk_full_s <= 0:
            raise ConfigError("bench chaos: --settle, --pacs-down and --disk-full must be positive")
        if not 0 <= self.kills <= 100:
            raise ConfigError("bench chaos: --kills must be between 0 and 100")
        if not 1 <= self.idle_sockets <= 1000:
            raise ConfigError("bench chaos: --idle-sockets must be between 1 and 1000")
        if self.send_interval_s <= 0 or not 0 <= self.stow_share <= 1:
            raise ConfigError("bench chaos: the send interval must be positive, the STOW share 0-1")

    def phase_seconds(self, fault: Fault) -> float:
        """How long ``fault``'s phase lasts (long enough for its outage and a recovery)."""
        share = PHASE_SHARES[fault] * self.duration_s
        if fault is Fault.PACS_DOWN:
            return max(share, self.pacs_down_s + 5)
        if fault is Fault.DISK_FULL:
            return max(share, self.disk_full_s + 5)
        return share


def check_peers(options: ChaosOptions) -> None:
    """Raise :class:`ServiceError` in one line when PostgreSQL or RabbitMQ cannot be reached."""
    if Backend.POSTGRES not in options.backends:
        return
    import importlib

    import sqlalchemy

    kombu: Any = importlib.import_module("kombu")  # Celery's messaging library

    engine = sqlalchemy.create_engine(options.postgres_url)
    try:
        with engine.connect():
            pass
    except sqlalchemy.exc.SQLAlchemyError as exc:
        reason = str(exc.orig if hasattr(exc, "orig") else exc).strip().splitlines()[0]
        raise ServiceError(
            f"PostgreSQL not reachable at {options.postgres_url}: {reason}"
        ) from None
    finally:
        engine.dispose()
    try:
        with kombu.Connection(options.broker_url, connect_timeout=5) as broker:
            broker.ensure_connection(max_retries=1)
    except Exception as exc:  # kombu raises many kinds (socket, AMQP, its own)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServiceError(f"RabbitMQ not reachable at {options.broker_url}: {reason}") from None


# -- the service as child processes ---------------------------------------------------------
class ServiceUnderTest:
    """``overread serve`` (and, on PostgreSQL, ``overread worker`` processes) as children.

    The ports stay the same across restarts, so the modality and the PACS need not
    know about them.
    """

    def __init__(
        self,
        root: Path,
        backend: Backend,
        *,
        pacs_port: int,
        database_url: str,
        broker_url: str | None,
        workers: int,
    ) -> None:
        self.root = root
        self.backend = backend
        self.data_dir = root / "data"
        self.database_url = database_url
        self.broker_url = broker_url
        self.pacs_port = pacs_port
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.worker_count = workers
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.unexpected_exits: list[str] = []
        self._logs: list[IO[bytes]] = []
        self._copiers: list[threading.Thread] = []
        self._env = {k: v for k, v in os.environ.items() if not k.startswith("OVERREAD_")}

    def _common(self) -> list[str]:
        return [
            "--data-dir",
            str(self.data_dir),
            "--database-url",
            self.database_url,
            "--lease-seconds",
            "10",
            "--retry-base-seconds",
            "1",
        ]

    def _spawn(self, name: str, args: list[str]) -> None:
        """Start a process; its output reaches its log through a pipe.

        The pipe is written by the child and the file by this process, so the log
        keeps what the child says while its own writes to files fail (the full disk).
        """
        log = (self.root / f"{name}.log").open("ab")
        self._logs.append(log)
        process = subprocess.Popen(
            [*overread_command(), *args],
            cwd=self.root,
            env=self._env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = process
        copier = threading.Thread(
            target=self._copy_output, args=(process, log), name=f"log-{name}", daemon=True
        )
        copier.start()
        self._copiers.append(copier)

    @staticmethod
    def _copy_output(process: subprocess.Popen[bytes], log: IO[bytes]) -> None:
        assert process.stdout is not None
        with process.stdout:
            for line in process.stdout:
                log.write(line)
                log.flush()

    def start(self, name: str) -> None:
        """Start (or restart) ``serve`` or ``worker-N``; a gateway is waited for."""
        if name == "serve":
            broker = ["--broker", self.broker_url] if self.broker_url else []
            self._spawn(
                name,
                [
                    "serve",
                    *self._common(),
                    "--dicom-port",
                    str(self.dicom_port),
                    "--http-port",
                    str(self.http_port),
                    "--destination",
                    f"PACS={PACS_AE_TITLE}@127.0.0.1:{self.pacs_port}",
                    "--allow-ae",
                    f"{MODALITY_AE_TITLE}@127.0.0.1",
                    "--stable-seconds",
                    "2",
                    "--workers",
                    "0" if self.worker_count else "1",
                    *broker,
                ],
            )
            process = self.processes[name]
            try:
                wait_port(self.dicom_port, timeout=180, process=process)
                wait_port(self.http_port, timeout=60, process=process)
            except ServiceError as exc:
                raise ServiceError(f"{exc}; see {self.root / 'serve.log'}") from None
            return
        broker = ["--broker", self.broker_url] if self.broker_url else []
        log = self.root / f"{name}.log"
        offset = log.stat().st_size if log.exists() else 0
        self._spawn(name, ["worker", *self._common(), "--workers", "1", *broker])
        # A worker has no port: it is up once it says so (the next fault must not
        # find it half started, which would test start-up, not the promises).
        ready = b"taking wake-ups from the broker" if broker else b"overread worker:"
        self._wait_for_line(name, log, offset, ready, timeout=180)

    def _wait_for_line(
        self, name: str, log: Path, offset: int, text: bytes, *, timeout: float
    ) -> None:
        process = self.processes[name]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with log.open("rb") as handle:
                handle.seek(offset)
                if text in handle.read():
                    return
            if process.poll() is not None:
                raise ServiceError(
                    f"{name} exited with status {process.returncode} while starting; see {log}"
                )
            time.sleep(0.1)
        raise ServiceError(f"{name} did not report ready in {timeout:g} s; see {log}")

    def names(self) -> list[str]:
        """``serve`` and the worker processes' names."""
        return ["serve", *(f"worker-{i + 1}" for i in range(self.worker_count))]

    def start_all(self) -> None:
        """Start the gateway, then the worker processes."""
        for name in self.names():
            self.start(name)

    def check_alive(self, when: str) -> None:
        """Note every process that has ended without being told to (it is not restarted)."""
        for name, process in self.processes.items():
            status = process.poll()
            if status is None or any(n.startswith(f"{name} ") for n in self.unexpected_exits):
                continue
            try:
                lines = (self.root / f"{name}.log").read_text(errors="replace").splitlines()
            except OSError:
                lines = []
            last = " | ".join(line.strip() for line in lines[-3:] if line.strip())
            self.unexpected_exits.append(
                f"{name} exited by itself with status {status} ({when}); its log ends: {last}"
            )

    def kill(self, name: str) -> None:
        """SIGKILL ``name`` (no clean-up at all) and reap it."""
        self.check_alive(f"before kill -9 {name}")
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGKILL)
        process.wait(30)

    def limit_writes(self, limit: int | None) -> None:
        """Set every running process's file-size limit (``None``: lift it)."""
        for process in self.processes.values():
            if process.poll() is not None:
                continue
            soft_hard = (
                (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
                if limit is None
                else (limit, resource.RLIM_INFINITY)
            )
            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(process.pid, resource.RLIMIT_FSIZE, soft_hard)

    def stop(self) -> None:
        """SIGTERM every process (SIGKILL after a grace period) and close the logs."""
        for name in reversed(list(self.processes)):
            end_process(self.processes[name], grace=30)
        for copier in self._copiers:
            copier.join(10)
        for log in self._logs:
            log.close()


# -- the modality ----------------------------------------------------------------------------
class Modality:
    """Sends small chest DX studies, by C-STORE or STOW-RS, and notes every answer."""

    def __init__(
        self, root: Path, service: ServiceUnderTest, token: str, rng: random.Random
    ) -> None:
        self.root = root
        self.service = service
        self.token = token
        self.rng = rng
        self.sent: list[SentInstance] = []
        self.http: list[HttpAnswer] = []
        self.fault = Fault.NONE
        self.stow_share = 0.25
        self.send_error = ""
        self._lock = threading.Lock()
        self._count = 0

    def study(self, instances: int) -> list[Path]:
        """Write a new study of ``instances`` images."""
        study = f"2.25.{uuid.uuid4().int}"
        series = f"2.25.{uuid.uuid4().int}"
        paths = []
        for _ in range(instances):
            with self._lock:
                self._count += 1
                n = self._count
            paths.append(
                write_chest_dx(
                    self.root / f"{n:06d}.dcm",
                    study_uid=study,
                    series_uid=series,
                    size=IMAGE_SIZE,
                    seed=n,
                    patient_id=f"CHAOS{n:06d}",
                    accession=f"CH{n:06d}",
                )
            )
        return paths

    def _note(
        self, datasets: Sequence[Dataset], channel: Channel, statuses: list[int | None]
    ) -> None:
        fault = self.fault
        with self._lock:
            for ds, status in zip(datasets, statuses, strict=True):
                ok = status == 0x0000 if channel is Channel.C_STORE else status in (200, 202)
                self.sent.append(
                    SentInstance(
                        str(ds.SOPInstanceUID),
                        str(ds.StudyInstanceUID),
                        fault,
                        channel,
                        status,
                        ok and status is not None,
                    )
                )

    def c_store(self, paths: list[Path], *, timeout: float = 30.0) -> list[int | None]:
        """Send ``paths`` in one association; note and return each status."""
        from pydicom.uid import DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian
        from pynetdicom import AE

        datasets = [dcmread(p) for p in paths]
        ae = AE(ae_title=MODALITY_AE_TITLE)
        ae.add_requested_context(DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
        statuses: list[int | None] = [None] * len(datasets)
        assoc = ae.associate("127.0.0.1", self.service.dicom_port, ae_title=GATEWAY_AE_TITLE)
        if assoc.is_established:
            try:
                for i, ds in enumerate(datasets):
                    answer = assoc.send_c_store(ds)
                    if answer and "Status" in answer:
                        statuses[i] = int(answer.Status)
                    if not assoc.is_established:
                        break
            finally:
                if assoc.is_established:
                    assoc.release()
        self._note(datasets, Channel.C_STORE, statuses)
        return statuses

    def stow(self, paths: list[Path]) -> int | None:
        """Send ``paths`` in one STOW-RS request; note each instance, return the HTTP status."""
        import httpx

        datasets = [dcmread(p, stop_before_pixels=True) for p in paths]
        boundary = uuid.uuid4().hex
        body = (
            b"".join(
                f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
                + p.read_bytes()
                + b"\r\n"
                for p in paths
            )
            + f"--{boundary}--\r\n".encode()
        )
        status: int | None = None
        stored: set[str] = set()
        fault = self.fault
        try:
            reply = httpx.post(
                f"http://127.0.0.1:{self.service.http_port}/dicom-web/studies",
                content=body,
                headers={
                    "Content-Type": f'multipart/related; type="application/dicom"; '
                    f"boundary={boundary}",
                    "Authorization": f"Bearer {self.token}",
                },
                timeout=60,
            )
            status = reply.status_code
            if status in (200, 202):
                listed = reply.json().get("00081199", {}).get("Value", [])
                stored = {str(item["00081155"]["Value"][0]) for item in listed}
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            pass
        with self._lock:
            self.http.append(HttpAnswer(fault, "STOW-RS of a study", status))
        statuses = [
            (status if ds.SOPInstanceUID in stored else (None if status is None else 409))
            for ds in datasets
        ]
        self._note(datasets, Channel.STOW_RS, statuses)
        return status

    def send_study(self) -> None:
        """One new study (one or two images) by the seeded channel."""
        with self._lock:
            instances = self.rng.choice((1, 1, 2))
            by_stow = self.rng.random() < self.stow_share
        paths = self.study(instances)
        if by_stow:
            self.stow(paths)
        else:
            self.c_store(paths)

    def run(self, stop: threading.Event, interval: float) -> None:
        """Send studies until ``stop`` is set, gaps drawn around ``interval``."""
        while not stop.is_set():
            try:
                self.send_study()
            except Exception as exc:  # a send must never end the run; it is noted as unanswered
                self.send_error = str(exc)
            with self._lock:
                gap = self.rng.uniform(0.5, 1.5) * interval
            stop.wait(gap)


# -- the faults ----------------------------------------------------------------------------
class IdleFlood:
    """Connections to the DICOM port that never send an A-ASSOCIATE-RQ, reopened when closed."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.sockets: list[socket.socket] = []
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="idle-flood", daemon=True)

    def _open(self) -> socket.socket | None:
        try:
            return socket.create_connection(("127.0.0.1", self.port), timeout=5)
        except OSError:
            return None

    def start(self) -> None:
        """Open the connections and keep them open."""
        for _ in range(self.count):
            sock = self._open()
            if sock is not None:
                self.sockets.append(sock)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            if not self.sockets:
                continue
            readable, _, _ = select.select(self.sockets, [], [], 0)
            for sock in readable:  # closed by the gateway: open another
                self.sockets.remove(sock)
                sock.close()
                fresh = self._open()
                if fresh is not None:
                    self.sockets.append(fresh)
                    self.reopened += 1

    def stop(self) -> None:
        """Close every connection."""
        self._stop.set()
        self._thread.join(10)
        for sock in self.sockets:
            sock.close()
        self.sockets.clear()


def _status_line(reply: bytes) -> int | None:
    try:
        return int(reply.split(b"\r\n", 1)[0].split()[1])
    except (IndexError, ValueError):
        return None


def declared_but_unsent(port: int, path: str, declared: int, headers: str = "") -> int | None:
    """Declare a ``declared``-byte JSON body, send 1 KiB of it; the answer's status."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(
                (
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                    f"\r\nContent-Length: {declared}\r\n{headers}\r\n"
                ).encode()
                + b"{" * 1024
            )
            return _status_line(sock.recv(65536))
    except OSError:
        return None


def streamed_until_answered(port: int, path: str, total: int) -> int | None:
    """Stream up to ``total`` bytes of JSON, chunked, until the server answers; its status."""
    piece = b"[" * (64 * 1024)
    sent = 0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                "Transfer-Encoding: chunked\r\n\r\n".encode()
            )
            while sent < total:
                readable, _, _ = select.select([sock], [], [], 0)
                if readable:
                    break
                try:
                    sock.sendall(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                except OSError:
                    break
                sent += len(piece)
            else:
                sock.sendall(b"0\r\n\r\n")
            return _status_line(sock.recv(65536))
    except OSError:
        return None


def _echo(port: int, timeout: float = 10.0) -> tuple[bool, float]:
    from pynetdicom import AE

    verification = "1.2.840.10008.1.1"

    ae = AE(ae_title=MODALITY_AE_TITLE)
    ae.add_requested_context(verification)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    started = time.monotonic()
    assoc = ae.associate("127.0.0.1", port, ae_title=GATEWAY_AE_TITLE)
    ok = False
    if assoc.is_established:
        answer = assoc.send_c_echo()
        ok = bool(answer) and int(answer.get("Status", -1)) == 0
        assoc.release()
    return ok, time.monotonic() - started


# -- one backend's run --------------------------------------------------------------------------
def _service_token(database_url: str) -> str:
    """A service account's API token on the gateway's database (for STOW-RS)."""
    from overread.db import Database
    from overread.security import Role, add_user, issue_token

    database = Database(database_url, create=False)
    try:
        with database.session() as session:
            name = f"chaos-{uuid.uuid4().hex[:8]}"
            add_user(session, name, Role.SERVICE, actor="bench-chaos")
            token, _ = issue_token(session, name, actor="bench-chaos")
    finally:
        database.engine.dispose()
    return token


class ChaosRun:
    """One backend's run: start, go through the faults, settle, stop, observe."""

    def __init__(
        self, root: Path, backend: Backend, options: ChaosOptions, report: Progress
    ) -> None:
        self.root = root
        self.backend = backend
        self.options = options
        self.report = report
        self.rng = random.Random(f"{options.seed}-{backend.value}")
        self.observation = ChaosObservation(backend)
        self._started = time.monotonic()

    def event(self, text: str) -> None:
        """Note what was done, and when (seconds since the start)."""
        self.observation.events.append(f"{time.monotonic() - self._started:6.1f} s  {text}")

    def run(self) -> ChaosObservation:
        """Run every phase and return what was observed."""
        with contextlib.ExitStack() as stack:
            database_url = f"sqlite:///{self.root / 'data' / 'overread.db'}"
            broker: str | None = None
            workers = 0
            if self.backend is Backend.POSTGRES:
                database_url = stack.enter_context(fresh_postgres(self.options.postgres_url))
                broker, workers = self.options.broker_url, 2
            pacs = StorescpPacs(self.root / "pacs")
            pacs.start(attempts=5)
            stack.callback(pacs.stop)
            service = ServiceUnderTest(
                self.root,
                self.backend,
                pacs_port=pacs.port,
                database_url=database_url,
                broker_url=broker,
                workers=workers,
            )
            stack.callback(service.stop)
            self.report(f"{self.backend}: start", 0, 1)
            service.start_all()
            self.event(f"started {', '.join(service.names())}")
            self.report(f"{self.backend}: start", 1, 1)
            modality = Modality(
                self.root / "dicom", service, _service_token(database_url), self.rng
            )
            modality.stow_share = self.options.stow_share
            self._faults(service, pacs, modality)
            self._settle(modality)
            service.check_alive("after settling")
            self.observation.probes.append(
                Probe(
                    Fault.NONE,
                    "no service process ended by itself",
                    not service.unexpected_exits,
                    "; ".join(service.unexpected_exits) or f"{len(service.names())} running",
                )
            )
            service.stop()
            pacs.stop()
            self._observe(modality, database_url)
        self.observation.seconds = time.monotonic() - self._started
        return self.observation

    def _faults(self, service: ServiceUnderTest, pacs: StorescpPacs, modality: Modality) -> None:
        stop = threading.Event()
        sender = threading.Thread(
            target=modality.run, args=(stop, self.options.send_interval_s), daemon=True
        )
        sender.start()
        try:
            for fault in Fault:
                seconds = self.options.phase_seconds(fault)
                modality.fault = fault
                task = f"{self.backend}: {fault}"
                self.report(task, 0, 1)
                phase = getattr(self, f"_phase_{fault.name.lower()}")
                phase(service, pacs, modality, time.monotonic() + seconds)
                service.check_alive(f"at the end of the {fault} phase")
                self.report(task, 1, 1)
        finally:
            stop.set()
            sender.join(120)
        if modality.send_error:
            self.event(f"a send raised: {modality.send_error[:200]}")

    @staticmethod
    def _until(deadline: float) -> None:
        time.sleep(max(0.0, deadline - time.monotonic()))

    def _phase_none(
        self, service: ServiceUnderTest, pacs: StorescpPacs, modality: Modality, deadline: float
    ) -> None:
        self._until(deadline)

    def _phase_kill(
        self, service: ServiceUnderTest, pacs: StorescpPacs, modality: Modality, deadline: float
    ) -> None:
        kills = 0
        while time.monotonic() < deadline or kills < self.options.kills:
            time.sleep(self.rng.uniform(1.0, 6.0))
            if time.monotonic() >= deadline and kills >= self.options.kills:
                break
            kills += 1
            victim = self.rng.choice(service.names())
            service.kill(victim)
            self.event(f"kill -9 {victim}")
            service.start(victim)
            self.event(f"{victim} restarted")

    def _phase_pacs_down(
        self, service: ServiceUnderTest, pacs: StorescpPacs, modality: Modality, deadline: float
    ) -> None:
        port = pacs.port
        pacs.stop()
        self.event(f"PACS stopped for {self.options.pacs_down_s:g} s")
        time.sleep(self.options.pacs_down_s)
        pacs.start(port=port)
        self.event("PACS back on the same port")
        self._until(deadline)

    def _phase_disk_full(
        self, service: ServiceUnderTest, pacs: StorescpPacs, modality: Modality, deadline: float
    ) -> None:
        service.limit_writes(0)
        self.event(f"disk full (file-size limit 0) for {self.options.disk_full_s:g} s")
        full_until = time.monotonic() + self.options.disk_full_s
        answers: list[int | None] = []
        while time.monotonic() < full_until:
            answers += modality.c_store(modality.study(1))
            time.sleep(1.0)
        failures = sorted({f"0x{s:04X}" for s in answers if s is not None and s != 0})
        refused = bool(failures)
        service.limit_writes(None)
        self.event("disk space back (limit lifted, no restart)")
        self.observation.probes.append(
            Probe(
                Fault.DISK_FULL,
                "C-STORE refused with a failure status while the disk is full",
                refused,
                f"{sum(1 for s in answers if s not in (None, 0))} of {len(answers)} refused "
                f"({', '.join(failures) or 'none'})",
            )
        )
        recovered_at: float | None = None
        started = time.monotonic()
        while time.monotonic() - started < 30:
            if modality.c_store(modality.study(1)) == [0x0000]:
                recovered_at = time.monotonic() - started
                break
            time.sleep(1.0)
        self.observation.probes.append(
            Probe(
                Fault.DISK_FULL,
                "C-STORE acknowledged again after the disk frees, without a restart",
                recovered_at is not None,
                f"after {recovered_at:.1f} s" if recovered_at is not None else "not within 30 s",
            )
        )
        self._until(deadline)

    def _phase_idle_flood(
        self, service: ServiceUnderTest, pacs: StorescpPacs, modality: Modality, deadline: float
    ) -> None:
        flood = IdleFlood(service.dicom_port, self.options.idle_sockets)
        flood.start()
        self.event(f"{len(flood.sockets)} idle connections opened")
        try:
            rounds = 0
            while time.monotonic() < deadline - 2 or rounds == 0:
                rounds += 1
                ok, seconds = _echo(service.dicom_port)
                self.observation.probes.append(
                    Probe(
                        Fault.IDLE_FLOOD,
                        f"C-ECHO during the flood (round {rounds})",
                        ok,
                        f"{'answered' if ok else 'refused'} in {seconds:.2f} s",
                    )
                )
                started = time.monotonic()
                stored = modality.c_store(modality.study(1)) == [0x0000]
                self.observation.probes.append(
                    Probe(
                        Fault.IDLE_FLOOD,
                        f"C-STORE during the flood (round {rounds})",
                        stored,
                        f"{'stored' if stored else 'refused'} in "
                        f"{time.monotonic() - started:.2f} s",
                    )
                )
                time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        finally:
            self.event(f"flood closed ({flood.reopened} connections reopened after timing out)")
            flood.stop()
        self._until(deadline)

    def _phase_oversized(
        self, service: ServiceUnderTest, pacs: StorescpPacs, modality: Modality, deadline: float
    ) -> None:
        port = service.http_port
        auth = f"Authorization: Bearer {modality.token}\r\n"
        while True:
            for request, status in (
                (
                    "login, 200 MB JSON declared",
                    declared_but_unsent(port, "/api/auth/login", LOGIN_DECLARED_BYTES),
                ),
                (
                    "login, JSON streamed past the limit",
                    streamed_until_answered(port, "/api/auth/login", 8 * 1024**2),
                ),
                (
                    "STOW-RS, 600 MiB declared",
                    declared_but_unsent(port, "/dicom-web/studies", STOW_DECLARED_BYTES, auth),
                ),
            ):
                modality.http.append(HttpAnswer(Fault.OVERSIZED, request, status, True))
            if time.monotonic() >= deadline - 1:
                break
            time.sleep(2.0)
        self._until(deadline)

    def _settle(self, modality: Modality) -> None:
        """Wait until every acknowledged study's report is at the PACS (or ``settle_s``)."""
        started = time.monotonic()
        pacs_dir = self.root / "pacs"
        seen: dict[str, str] = {}
        wanted = {s.study_instance_uid for s in modality.sent if s.acknowledged}
        self.report(f"{self.backend}: settle", 0, len(wanted))
        while time.monotonic() - started < self.options.settle_s:
            for entry in os.scandir(pacs_dir):
                if entry.name.startswith("SR") and entry.name not in seen:
                    report = read_report(Path(entry.path))
                    if report is not None:
                        seen[entry.name] = report.study_instance_uid
            done = wanted & set(seen.values())
            self.report(f"{self.backend}: settle", len(done), len(wanted))
            if done == wanted:
                time.sleep(3.0)  # a late duplicate would still be counted
                break
            time.sleep(1.0)
        self.observation.settle_seconds = time.monotonic() - started
        self.event(f"settled after {self.observation.settle_seconds:.1f} s")

    def _observe(self, modality: Modality, database_url: str) -> None:
        obs = self.observation
        obs.sent = list(modality.sent)
        obs.http.extend(modality.http)
        obs.delivered = _pacs_reports(self.root / "pacs")
        sop_uids = {s.sop_instance_uid for s in obs.sent}
        obs.stored, obs.receive_audited, obs.export_audited = _database_facts(
            database_url, sop_uids
        )


# -- the benchmark ----------------------------------------------------------------------------
def _verdict_json(observation: ChaosObservation, verdict: ChaosVerdict) -> dict[str, Any]:
    return {
        "backend": verdict.backend.value,
        "passed": verdict.passed,
        "problems": verdict.problems,
        "rows": [asdict(r) for r in verdict.rows],
        "probes": [asdict(p) for p in observation.probes],
        "http": [asdict(a) for a in observation.http if a.expected_4xx or (a.status or 0) >= 500],
        "http_answers": dict(
            sorted(
                _count(
                    "no answer" if a.status is None else str(a.status) for a in observation.http
                ).items()
            )
        ),
        "events": observation.events,
        "seconds": round(observation.seconds, 1),
        "settle_seconds": round(observation.settle_seconds, 1),
    }


def _count(values: Iterator[str]) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for value in values:
        counts[value] += 1
    return dict(counts)


def benchmark_chaos(
    options: ChaosOptions, *, progress: Progress | None = None, keep: Path | None = None
) -> dict[str, Any]:
    """Run the chaos run of ``options`` on each backend; return the verdicts as JSON data.

    Returns
    -------
    dict
        ``passed`` (every backend held every promise), ``backends`` (per backend:
        ``passed``, ``problems``, ``rows`` of :class:`FaultRow` fields, ``probes``,
        the 4xx-expected and 5xx ``http`` answers, ``http_answers`` counted by status,
        ``events`` and ``seconds``), ``options`` and ``machine``.

    Raises
    ------
    ServiceError
        When DCMTK is missing, or PostgreSQL or RabbitMQ cannot be reached for the
        ``postgres`` backend.
    """
    options.validate()
    require_dcmtk()
    check_peers(options)
    report = progress or (lambda _task, _done, _total: None)
    started = time.monotonic()
    result: dict[str, Any] = {
        "options": {
            "backends": [b.value for b in options.backends],
            "duration_s": options.duration_s,
            "seed": options.seed,
            "settle_s": options.settle_s,
            "pacs_down_s": options.pacs_down_s,
            "disk_full_s": options.disk_full_s,
            "idle_sockets": options.idle_sockets,
            "kills": options.kills,
            "send_interval_s": options.send_interval_s,
            "stow_share": options.stow_share,
        },
        "backends": [],
    }
    with contextlib.ExitStack() as stack:
        if keep is None:
            base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="overread-chaos-")))
        else:
            base = keep
            base.mkdir(parents=True, exist_ok=True)
        for backend in options.backends:
            root = base / backend.value
            root.mkdir(parents=True, exist_ok=True)
            observation = ChaosRun(root, backend, options, report).run()
            result["backends"].append(_verdict_json(observation, assess(observation)))
            if keep is not None:
                (root / "result.json").write_text(json.dumps(result["backends"][-1], indent=2))
    result["passed"] = all(b["passed"] for b in result["backends"])
    result["machine"] = machine_info()
    result["seconds"] = round(time.monotonic() - started, 1)
    return result


def verdict_rows(result: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(backend, row)`` for every row of a :func:`benchmark_chaos` result."""
    for backend in result["backends"]:
        for row in backend["rows"]:
            yield backend["backend"], row


__all__ = [
    "PHASE_SHARES",
    "Backend",
    "Channel",
    "ChaosObservation",
    "ChaosOptions",
    "ChaosRun",
    "ChaosVerdict",
    "DeliveredReport",
    "Fault",
    "FaultRow",
    "HttpAnswer",
    "Probe",
    "SentInstance",
    "assess",
    "benchmark_chaos",
    "check_peers",
    "read_report",
    "verdict_rows",
]
