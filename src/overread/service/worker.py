"""Workers: claim a job, do it, record the outcome in one fenced transaction.

An *infer* job (:class:`~overread.service.infer.InferenceHandler`) runs the routed
model on the study's stored instances, stores the result row and the derived DICOM
objects (SR) in the object store, and queues one *export* job per destination, all
in the transaction that marks it succeeded. An *export* job goes to the exporter of
its payload's kind (:mod:`overread.service.exporters`: C-STORE to a DICOM node, or a
FHIR report to a FHIR endpoint), which audits every attempt; a refusal or a network
error is retried with capped exponential backoff and jitter for ``retry_for_seconds``
from its first attempt (and up to ``max_attempts`` when set), then the job is
dead-lettered (visible in ``/api/jobs`` and ``overread jobs list``).

Workers are threads of ``overread serve`` or of a separate ``overread worker``
process; they coordinate only through the database, so any number may run against
one database.
"""

from __future__ import annotations

import gc
import logging
import os
import queue
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

from overread.errors import (
    InferenceError,
    InvalidDicomError,
    ModelPackageError,
)
from overread.service.config import ServiceConfig
from overread.service.db import Database, Job, JobKind, JobState
from overread.service.exporters import Exporters
from overread.service.handling import JobServices, PermanentExportError
from overread.service.infer import FHIR_DESTINATION_PREFIX, InferenceHandler
from overread.service.jobs import JobQueue, LeaseLostError
from overread.service.payloads import export_payload
from overread.service.rollout import RolloutRole, RolloutStore
from overread.service.runtime import ArtifactBuilder, PipelineProvider
from overread.service.scu import AssociationPool
from overread.service.store import ObjectStore

logger = logging.getLogger(__name__)


# Failures that will not go away by trying again: dead-letter at once.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    InferenceError,
    InvalidDicomError,
    ModelPackageError,
    PermanentExportError,
)


def worker_identity() -> str:
    """A unique lease-owner name: host, process and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class _Heartbeat:
    """Renews a job's lease in the background while the job runs."""

    def __init__(self, queue: JobQueue, job_id: int, owner: str, lease_seconds: float) -> None:
        self.queue, self.job_id, self.owner, self.lease = queue, job_id, owner, lease_seconds
        self.stop = threading.Event()
        self.lost = False
        self.thread = threading.Thread(target=self._run, name=f"lease-{job_id}", daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(self.lease / 3):
            try:
                if not self.queue.renew(self.job_id, self.owner, lease_seconds=self.lease):
                    self.lost = True
                    return
            except Exception:
                logger.exception("job %d: lease renewal failed", self.job_id)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class Worker:
    """Runs jobs one at a time.

    Parameters
    ----------
    config
        Lease length, routes, explain flag.
    database, store, queue
        Where instances, objects and jobs are.
    models
        Resolves model aliases to pipelines.
    artifacts
        Builds the DICOM objects to send (``None``: results are stored, nothing is sent).
    associations
        The associations to DICOM destinations kept between sends, shared by the
        process's workers (``None``: a pool of this worker's own).
    """

    def __init__(
        self,
        config: ServiceConfig,
        database: Database,
        store: ObjectStore,
        queue: JobQueue,
        models: PipelineProvider,
        artifacts: ArtifactBuilder | None,
        *,
        name: str | None = None,
        associations: AssociationPool | None = None,
    ) -> None:
        self.config = config
        self.database = database
        self.store = store
        self.queue = queue
        self.models = models
        self.artifacts = artifacts
        self.name = name or worker_identity()
        configure = getattr(models, "configure", None)
        if configure is not None:
            configure(config)
        services = JobServices(config, database, store, queue, self.name)
        self.inference = InferenceHandler(services, models, artifacts)
        self.exporters = Exporters(services, associations)
        self.rollouts = RolloutStore(database, self.inference.triage.alerts.critical)
        #: Where an infer job's DICOM exports go to be sent at once when it is free
        #: (``None``: this worker sends them itself before its next claim); see
        #: :class:`ExportLane`.
        self.export_lane: ExportLane | None = None
        #: Whether the last :meth:`run_once` handed exports to the lane.
        self.handed_off = False

    def run_once(self, kinds: list[JobKind] | None = None) -> Job | None:
        """Claim and run one job; return it (as claimed), or ``None`` if none was ready.

        An infer job's DICOM exports are then claimed by id and sent at once instead
        of waiting in the queue for a poll: by the process's export lane when it is
        free (this worker then takes the next study), otherwise by this worker, on the
        association it keeps to the destination. They are ordinary export jobs all the
        same: the review hold and the kill switch are checked when they run, and a
        failed send is retried from the queue with the usual backoff.
        """
        self.handed_off = False
        job = self.queue.claim(self.name, lease_seconds=self.config.lease_seconds, kinds=kinds)
        if job is None:
            return None
        follow_ups = self._run_claimed(job)
        if follow_ups and self.export_lane is not None and self.export_lane.take(follow_ups):
            # The process's export lane sends them while this worker takes the next
            # study: a study that arrived with this one does not wait for its send.
            self.handed_off = True
        else:
            self.send_now(follow_ups)
        return job

    def send_now(self, job_ids: list[int]) -> None:
        """Claim the named export jobs by id and run them here, in order; one that
        another worker took (or that is not claimable now) is left alone."""
        for job_id in job_ids:
            export = self.queue.claim_job(
                job_id, self.name, lease_seconds=self.config.lease_seconds
            )
            if export is not None:
                self._run_claimed(export)

    def _run_claimed(self, job: Job) -> list[int]:
        """Run a job this worker holds; return the export jobs it queued to send now."""
        follow_ups: list[int] = []
        rollout_role = job.payload.get("role") if job.kind == JobKind.INFER.value else None
        if rollout_role in (RolloutRole.CANARY, RolloutRole.SHADOW) and self._rolled_back(job):
            return follow_ups
        with _Heartbeat(self.queue, job.id, self.name, self.config.lease_seconds) as beat:
            try:
                if job.kind == JobKind.INFER.value:
                    follow_ups = self.inference.run(job)
                elif job.kind == JobKind.EXPORT.value:
                    self.exporters.export(job, export_payload(job.payload))
                else:
                    raise InferenceError(f"unknown job kind {job.kind!r}")
            except LeaseLostError as exc:
                logger.warning("%s", exc)
            except PERMANENT_ERRORS as exc:
                state = self.queue.mark_failed(job.id, self.name, str(exc), retryable=False)
                self._after_failure(job, rollout_role, state)
            except Exception as exc:
                logger.debug("job %d failed", job.id, exc_info=True)
                state = self.queue.mark_failed(job.id, self.name, f"{type(exc).__name__}: {exc}")
                self._after_failure(job, rollout_role, state)
            if beat.lost:
                logger.warning("job %d: lease was lost while running", job.id)
        if rollout_role == RolloutRole.CANARY:
            self._watch_canary(str(job.payload.get("alias") or job.model_name))
        return follow_ups if self.config.export_at_once else []

    def _rolled_back(self, job: Job) -> bool:
        """Whether a claimed canary or shadow job's candidate was rolled back since it
        was queued (then it is cancelled, audited, and its study sent to the active
        version instead of running)."""
        try:
            return self.rollouts.skip_rolled_back(job.id, self.name)
        except Exception:
            logger.exception(
                "%s: rollout state of job %d unreadable; running it", self.name, job.id
            )
            return False

    def _after_failure(self, job: Job, rollout_role: Any, state: str) -> None:
        """A canary job that failed for good: its study goes to the active version."""
        if rollout_role != RolloutRole.CANARY or state != JobState.DEAD_LETTERED.value:
            return
        try:
            self.rollouts.reroute_dead_letter(job.id, actor=f"worker:{self.name}")
        except Exception:
            logger.exception("%s: re-routing dead-lettered canary job %d failed", self.name, job.id)

    def _watch_canary(self, alias: str) -> None:
        """Judge the alias's canary after each of its jobs (rolled back when it left a
        bound); an error here never costs the job its outcome."""
        try:
            self.rollouts.watch(alias)
        except Exception:
            logger.exception("%s: judging the canary of %r failed", self.name, alias)

    def warmup(self) -> None:
        """Load and warm up every model the routes name (once per process), so the
        first study pays neither for loading nor for creating runtime sessions."""
        warm = getattr(self.models, "warmup", None)
        aliases = list(dict.fromkeys(m for route in self.config.routes for m in route.models))
        try:
            if warm is not None:
                warm(aliases)
            builder_warmup = getattr(self.artifacts, "warmup", None)
            if builder_warmup is not None:
                builder_warmup()
        except Exception:
            logger.exception("%s: warm-up failed; models and builders load on first use", self.name)
        freeze_long_lived()

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Warm the models up, then work until ``stop`` is set, sleeping
        ``poll_seconds`` (or until woken) when idle."""
        self.warmup()
        while not stop.is_set():
            try:
                # Right after a hand-off, only a job that is not an export: the exports
                # just handed over are queued too, and taking one here would make the
                # next study wait for its send again (the lane, or a later poll, has it).
                ran = self.run_once(kinds=_NOT_EXPORTS if self.handed_off else None)
            except Exception:
                logger.exception("%s: error while claiming a job; backing off", self.name)
                ran = None
            if ran is None and not stop.is_set():
                self.exporters.close_idle()
                if wake is not None:
                    wake.wait(self.config.poll_seconds)
                    wake.clear()
                else:
                    stop.wait(self.config.poll_seconds)
        self.exporters.close()


_NOT_EXPORTS: list[JobKind] = [kind for kind in JobKind if kind is not JobKind.EXPORT]


def freeze_long_lived() -> int:
    """Collect once, then move every object alive now (imported modules, loaded models,
    the result builders' tables, warmed-up runtime sessions) out of the garbage
    collector's reach (:func:`gc.freeze`); return how many objects are frozen.

    Called after the warm-up: these objects live as long as the process, yet a full
    collection walks them all, and that pause (0.4 s measured with the default model
    loaded) stopped every thread, a study's ingest and inference included. Later
    collections see only the objects made since. Objects frozen here are still freed
    by reference counting when released.

    Done once per process: the first worker's warm-up loads the models the others
    share, and a process that starts gateways one after another (the tests) neither
    pays for a full collection per gateway nor freezes each one's objects.
    """
    with _FREEZE_LOCK:  # two workers ending their warm-up together freeze once
        if gc.get_freeze_count() == 0:
            gc.collect()
            gc.freeze()
    return gc.get_freeze_count()


_FREEZE_LOCK = threading.Lock()


class ExportLane:
    """One thread that sends the DICOM exports the process's workers hand it.

    A worker that stored a result hands over the export jobs it queued, when the lane
    is free (otherwise it sends them itself, as without a lane), and claims its next
    job at once, so a study that arrived together with another is read while the
    other's SR is on its way, instead of after its send (the send is mostly waiting
    for the destination's answer). The jobs are the same queued export jobs either way:
    the lane claims each by id (a worker that polled it first keeps it), the review
    hold and the kill switch are checked when it runs, a failed send retries from the
    queue, and ids the lane had not reached when the process stops are still queued
    for any worker to claim.
    """

    def __init__(self, worker: Worker, idle_seconds: float) -> None:
        self.worker = worker
        self.idle_seconds = idle_seconds
        self._ids: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._busy = False
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="overread-export-lane", daemon=True)

    def take(self, job_ids: list[int]) -> bool:
        """Send these export jobs (in order) if the lane is free; ``False`` (nothing
        taken: the caller sends them) while it is sending or has sends waiting, so
        that with many results at once the workers keep sending side by side and the
        lane never holds a queue of them."""
        with self._lock:
            if self._busy or self._stop.is_set() or not self.thread.is_alive():
                return False
            self._busy = True
        self._ids.put(list(job_ids))
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                job_ids = self._ids.get(timeout=self.idle_seconds)
            except queue.Empty:
                try:
                    self.worker.exporters.close_idle()
                except Exception:  # the lane must outlive one failed clean-up
                    logger.exception("export lane: closing idle associations failed")
                continue
            if self._stop.is_set():
                break  # still queued: a worker claims them
            try:
                self.worker.send_now(job_ids)
            except Exception:
                logger.exception("export lane: sending jobs %s failed; they stay queued", job_ids)
            finally:
                with self._lock:
                    self._busy = False

    def start(self) -> None:
        """Start the thread."""
        self.thread.start()

    def stop(self, timeout: float) -> None:
        """Stop after the send in progress (if any)."""
        self._stop.set()
        self._ids.put([])
        self.thread.join(timeout)
        self.worker.exporters.close()


class WorkerPool:
    """``size`` worker threads sharing one wake-up event, and with ``export_lane`` an
    :class:`ExportLane` the workers hand their results' DICOM exports to."""

    def __init__(
        self, size: int, make_worker: Callable[[int], Worker], *, export_lane: bool = False
    ) -> None:
        self.size = size
        self.make_worker = make_worker
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.workers: list[Worker] = []
        self.export_lane = export_lane
        self.lane: ExportLane | None = None

    def start(self) -> None:
        """Start the threads."""
        if self.export_lane and self.size > 0:
            lane_worker = self.make_worker(self.size)
            self.lane = ExportLane(lane_worker, lane_worker.config.poll_seconds)
            self.lane.start()
        for index in range(self.size):
            worker = self.make_worker(index)
            if self.lane is not None:
                worker.export_lane = self.lane
            thread = threading.Thread(
                target=worker.run,
                args=(self.stop_event, self.wake_event),
                name=f"overread-worker-{index}",
                daemon=True,
            )
            self.workers.append(worker)
            self.threads.append(thread)
            thread.start()
        logger.info("started %d worker thread(s)", self.size)

    def wake(self) -> None:
        """Tell idle workers there may be work."""
        self.wake_event.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; wait up to ``timeout`` s for running jobs (leases cover the rest)."""
        self.stop_event.set()
        self.wake_event.set()
        for thread in self.threads:
            thread.join(timeout)
        if self.lane is not None:
            self.lane.stop(timeout)
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            logger.warning("worker(s) %s still busy at shutdown; their leases will expire", alive)


__all__ = [
    "FHIR_DESTINATION_PREFIX",
    "PERMANENT_ERRORS",
    "ExportLane",
    "PermanentExportError",
    "Worker",
    "WorkerPool",
    "freeze_long_lived",
    "worker_identity",
]
