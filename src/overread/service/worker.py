"""Workers: claim a job, do it, record the outcome in one fenced transaction.

An *infer* job runs the routed model on the study's stored instances, stores the
result row and the derived DICOM objects (SR) in the object store, and queues one
*export* job per destination, all in the transaction that marks it succeeded. An
*export* job C-STOREs those stored objects to its destination; a refusal or a
network error is retried with exponential backoff until ``max_attempts``, then the
job is dead-lettered (visible in ``/api/jobs``).

Workers are threads of ``overread serve`` or of a separate ``overread worker``
process; they coordinate only through the database, so any number may run against
one database.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import pydicom
from sqlalchemy import select

from overread.audit import AuditAction, record_event
from overread.errors import (
    ConfigError,
    InferenceError,
    InvalidDicomError,
    ModelPackageError,
    ServiceError,
)
from overread.results import Prediction, ResultSummary
from overread.service.config import Destination, FhirEndpoint, ServiceConfig
from overread.service.db import Database, Instance, Job, JobKind, Result, utcnow
from overread.service.jobs import JobQueue, LeaseLostError
from overread.service.routing import InstanceFacts, route_matches
from overread.service.runtime import ArtifactBuilder, PipelineProvider, require_ok
from overread.service.scu import send_files
from overread.service.store import ObjectStore
from overread.triage.score import StudyContext

logger = logging.getLogger(__name__)


class PermanentExportError(ServiceError):
    """A destination refused a result for good (e.g. HTTP 400): retrying cannot help."""


# Failures that will not go away by trying again: dead-letter at once.
PERMANENT_ERRORS: tuple[type[BaseException], ...] = (
    InferenceError,
    InvalidDicomError,
    ModelPackageError,
    PermanentExportError,
)

#: Prefix of the ``destination`` of FHIR export jobs (DICOM destination names cannot
#: contain a colon, so the two never collide).
FHIR_DESTINATION_PREFIX = "fhir:"


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
        # Imported here: overread.triage builds on this package's database models.
        from overread.triage import TriageConfig

        try:
            self.triage = TriageConfig.model_validate(config.triage)
        except ValueError as exc:
            raise ConfigError(f"invalid [triage] settings: {exc}") from None

    def run_once(self) -> Job | None:
        """Claim and run one job; return it (as claimed), or ``None`` if none was ready."""
        job = self.queue.claim(self.name, lease_seconds=self.config.lease_seconds)
        if job is None:
            return None
        with _Heartbeat(self.queue, job.id, self.name, self.config.lease_seconds) as beat:
            try:
                if job.kind == JobKind.INFER.value:
                    self._infer(job)
                elif job.kind == JobKind.EXPORT.value:
                    self._export(job)
                else:
                    raise InferenceError(f"unknown job kind {job.kind!r}")
            except LeaseLostError as exc:
                logger.warning("%s", exc)
            except PERMANENT_ERRORS as exc:
                self.queue.mark_failed(job.id, self.name, str(exc), retryable=False)
            except Exception as exc:
                logger.debug("job %d failed", job.id, exc_info=True)
                self.queue.mark_failed(job.id, self.name, f"{type(exc).__name__}: {exc}")
            if beat.lost:
                logger.warning("job %d: lease was lost while running", job.id)
        return job

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

    def run(self, stop: threading.Event, wake: threading.Event | None = None) -> None:
        """Warm the models up, then work until ``stop`` is set, sleeping
        ``poll_seconds`` (or until woken) when idle."""
        self.warmup()
        while not stop.is_set():
            try:
                ran = self.run_once()
            except Exception:
                logger.exception("%s: error while claiming a job; backing off", self.name)
                ran = None
            if ran is None and not stop.is_set():
                if wake is not None:
                    wake.wait(self.config.poll_seconds)
                    wake.clear()
                else:
                    stop.wait(self.config.poll_seconds)

    # -- infer ------------------------------------------------------------------------
    def _study_paths(self, job: Job) -> list[tuple[Path, Instance]]:
        with self.database.session() as session:
            rows = list(
                session.scalars(
                    select(Instance)
                    .where(Instance.study_instance_uid == job.study_instance_uid)
                    .order_by(Instance.series_instance_uid, Instance.id)
                ).all()
            )
        routes = [r for r in self.config.routes if r.name in set(job.route.split(","))]
        if routes:
            matched = [
                r for r in rows if any(route_matches(rt, InstanceFacts.of(r)) for rt in routes)
            ]
            rows = matched or rows
        return [(self.store.path(r.object_key), r) for r in rows]

    def _infer(self, job: Job) -> None:
        started = time.perf_counter()
        alias = str(job.payload.get("alias") or job.model_name)
        with self.database.session() as session:
            existing = session.scalar(
                select(Result).where(
                    Result.study_instance_uid == job.study_instance_uid,
                    Result.model_name == job.model_name,
                    Result.model_version == job.model_version,
                )
            )
        if existing is not None:
            logger.info("job %d: result %d already stored; not run again", job.id, existing.id)
            self._finish_infer(job, existing.id, None, [])
            return
        items = self._study_paths(job)
        if not items:
            raise InferenceError(f"study {job.study_instance_uid} has no stored instances")
        paths = [p for p, _ in items]
        pipeline = self.models.get(alias)
        cam_segmentation = alias in self.config.cam_segmentation
        explain = self.config.explain or cam_segmentation
        predictions = list(pipeline.predict(paths, explain=explain))
        require_ok(predictions, paths)
        modelled = time.perf_counter()
        # One header read per image serves the SR, the worklist context and the FHIR
        # facts; overlays need the pixels too.
        readings = [
            (prediction, pydicom.dcmread(path, stop_before_pixels=not self.config.explain))
            for prediction, (path, _) in zip(predictions, items, strict=True)
            if prediction.ok
        ]
        context = _study_context(items, readings[0][1])
        artifacts: list[dict[str, Any]] = []
        if self.artifacts is not None:
            for dataset in self.artifacts.build_study(readings, cam_segmentation=cam_segmentation):
                artifacts.append(self._store_dataset(dataset))
        built = time.perf_counter()
        from overread.service.outputs.fhir import study_header

        summary = ResultSummary(
            alias=alias,
            instances=tuple(predictions),
            sop_instance_uids=tuple(row.sop_instance_uid for _, row in items),
            study=study_header(readings[0][1]),
            timings=_stage_timings(predictions, modelled - started, built - modelled),
        ).to_dict()
        self._finish_infer(job, None, summary, artifacts, context)
        logger.info(
            "job %d: %s %s on study %s: %d prediction(s), %d object(s) to send in %.3f s",
            job.id,
            job.model_name,
            job.model_version,
            job.study_instance_uid,
            len(predictions),
            len(artifacts),
            time.perf_counter() - started,
        )

    def _audit(
        self,
        session: Any,
        *,
        action: AuditAction,
        object_uids: Iterable[str],
        details: dict[str, Any],
    ) -> None:
        """Record what this worker did, in ``session``'s transaction."""
        record_event(
            session,
            actor=f"worker:{self.name}",
            role="service",
            action=action,
            object_uids=object_uids,
            details=details,
        )

    def _store_dataset(self, dataset: Any) -> dict[str, Any]:
        buffer = BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        stored = self.store.put(buffer.getvalue())
        return {
            "key": stored.key,
            "sop_class_uid": str(dataset.SOPClassUID),
            "sop_instance_uid": str(dataset.SOPInstanceUID),
            "modality": str(dataset.get("Modality", "")),
        }

    def _finish_infer(
        self,
        job: Job,
        result_id: int | None,
        summary: dict[str, Any] | None,
        artifacts: list[dict[str, Any]],
        context: StudyContext | None = None,
    ) -> None:
        """Store the result, audit it, put the study on the worklist and queue exports.

        All of it is one transaction with marking the job done: a worker killed
        half-way leaves nothing behind but a job to run again.
        """
        from overread.triage import triage_result

        destinations = [Destination(**d) for d in job.payload.get("destinations", [])]
        with self.database.session() as session:
            if result_id is None:
                result = Result(
                    job_id=job.id,
                    study_instance_uid=job.study_instance_uid,
                    model_name=job.model_name,
                    model_version=job.model_version,
                    summary=summary or {},
                    artifacts=artifacts,
                    created_at=utcnow(),
                )
                session.add(result)
                session.flush()
                result_id = result.id
                self._audit(
                    session,
                    action=AuditAction.INFERENCE,
                    object_uids=[job.study_instance_uid],
                    details={
                        "job_id": job.id,
                        "result_id": result.id,
                        "model": job.model_name,
                        "version": job.model_version,
                    },
                )
                triage_result(session, result, context or _EMPTY_CONTEXT, self.triage, now=utcnow())
                has_artifacts = bool(artifacts)
            else:
                stored = session.get(Result, result_id)
                has_artifacts = bool(stored is not None and stored.artifacts)
            for endpoint in self.config.fhir_endpoints:
                self.queue.enqueue(
                    session,
                    study_instance_uid=job.study_instance_uid,
                    model_name=job.model_name,
                    model_version=job.model_version,
                    kind=JobKind.EXPORT,
                    destination=f"{FHIR_DESTINATION_PREFIX}{endpoint.name}",
                    route=job.route,
                    priority=job.priority,
                    payload={"fhir_endpoint": endpoint.name, "result_id": result_id},
                )
            if has_artifacts:
                for dest in destinations:
                    self.queue.enqueue(
                        session,
                        study_instance_uid=job.study_instance_uid,
                        model_name=job.model_name,
                        model_version=job.model_version,
                        kind=JobKind.EXPORT,
                        destination=dest.name,
                        route=job.route,
                        priority=job.priority,
                        payload={"destination": dest.model_dump(), "result_id": result_id},
                    )
            self.queue.mark_succeeded(session, job.id, self.name)

    # -- export -----------------------------------------------------------------------
    def _export(self, job: Job) -> None:
        if "fhir_endpoint" in job.payload:
            self._export_fhir(job)
            return
        dest = Destination(**job.payload["destination"])
        with self.database.session() as session:
            result = session.get(Result, int(job.payload["result_id"]))
            if result is None:
                raise InferenceError(f"result {job.payload['result_id']} no longer exists")
            artifacts = list(result.artifacts)
            keys = [str(a["key"]) for a in artifacts]
        paths = [self.store.path(k) for k in keys]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise InferenceError(f"stored result object(s) missing: {', '.join(missing)}")
        started = time.perf_counter()
        statuses = send_files(
            paths,
            ae_title=dest.ae_title,
            host=dest.host,
            port=dest.port,
            calling_ae=self.config.ae_title,
        )
        seconds = time.perf_counter() - started
        failed = [s for s in statuses if not s.ok]
        if failed:
            raise ConnectionError(
                f"{len(failed)}/{len(statuses)} object(s) not accepted by {dest}: {failed[0].error}"
            )
        with self.database.session() as session:
            self._audit(
                session,
                action=AuditAction.EXPORT,
                object_uids=[
                    job.study_instance_uid,
                    *(str(a["sop_instance_uid"]) for a in artifacts),
                ],
                details={
                    "job_id": job.id,
                    "destination_kind": "dicom",
                    "destination": str(dest),
                    "objects": len(paths),
                    "statuses": sorted({int(s.status) for s in statuses if s.status is not None}),
                    "seconds": round(seconds, 6),
                },
            )
            self.queue.mark_succeeded(session, job.id, self.name)
        logger.info(
            "job %d: sent %d object(s) to %s in %.3f s", job.id, len(statuses), dest, seconds
        )

    def _fhir_endpoint(self, name: str) -> FhirEndpoint:
        for endpoint in self.config.fhir_endpoints:
            if endpoint.name == name:
                return endpoint
        raise PermanentExportError(f"FHIR endpoint {name!r} is no longer configured")

    def _export_fhir(self, job: Job) -> None:
        """POST the result's FHIR bundle; every attempt is audited with its HTTP status."""
        from overread.service.outputs import DeliveryError, fhir_report_for_result, post_fhir

        endpoint = self._fhir_endpoint(str(job.payload["fhir_endpoint"]))
        with self.database.session() as session:
            result = session.get(Result, int(job.payload["result_id"]))
            if result is None:
                raise PermanentExportError(f"result {job.payload['result_id']} no longer exists")
            try:
                bundle = fhir_report_for_result(result)
            except ServiceError as exc:  # e.g. a result stored without the study's header
                raise PermanentExportError(f"no FHIR report for result {result.id}: {exc}") from exc
        token = endpoint.bearer_token.get_secret_value() if endpoint.bearer_token else None
        started = time.perf_counter()
        details: dict[str, Any] = {
            "job_id": job.id,
            "attempt": job.attempts,
            "destination_kind": "fhir",
            "destination": str(endpoint),
            "resources": len(bundle.get("entry", [])),
        }
        try:
            reply = post_fhir(
                bundle,
                endpoint.url,
                token,
                timeout=endpoint.timeout_seconds,
                headers=endpoint.headers,
            )
        except DeliveryError as exc:
            status = getattr(exc.response, "status_code", None)
            details.update(
                outcome="failed",
                status_code=status,
                seconds=round(time.perf_counter() - started, 6),
                error=str(exc)[:500],
            )
            with self.database.session() as session:
                self._audit(
                    session,
                    action=AuditAction.EXPORT,
                    object_uids=[job.study_instance_uid],
                    details=details,
                )
            if not exc.retryable:
                raise PermanentExportError(str(exc)) from exc
            raise
        seconds = time.perf_counter() - started
        details.update(outcome="stored", status_code=reply.status_code, seconds=round(seconds, 6))
        with self.database.session() as session:
            self._audit(
                session,
                action=AuditAction.EXPORT,
                object_uids=[job.study_instance_uid],
                details=details,
            )
            self.queue.mark_succeeded(session, job.id, self.name)
        logger.info(
            "job %d: FHIR report posted to %s: HTTP %d in %.3f s",
            job.id,
            endpoint,
            reply.status_code,
            seconds,
        )


def _stage_timings(
    predictions: Sequence[Prediction], model_seconds: float, artifact_seconds: float
) -> dict[str, float]:
    """Seconds per stage of an infer job, summed over the study's images.

    ``read``, ``preprocess``, ``inference``, ``postprocess`` and ``explain`` come from
    the pipeline; ``model_total`` is the wall time of the whole model call (waiting
    for a shared batch included) and ``artifacts`` that of reading the headers and
    building and storing the SR, overlays and SEG.
    """
    totals: dict[str, float] = {}
    for prediction in predictions:
        for stage, seconds in prediction.timings.items():
            totals[str(stage)] = totals.get(str(stage), 0.0) + float(seconds)
    totals = {k: round(v, 6) for k, v in totals.items()}
    totals["model_total"] = round(model_seconds, 6)
    totals["artifacts"] = round(artifact_seconds, 6)
    return totals


def _study_context(items: list[tuple[Path, Instance]], header: Any) -> StudyContext:
    """Department, patient age and arrival time of a study, from its first header."""
    from overread.triage import department_key, dicom_age_years

    received = min((row.received_at for _, row in items), default=None)
    department = str(
        header.get("InstitutionalDepartmentName", "") or header.get("RequestingService", "")
    )
    return StudyContext(
        department=department_key(department),
        patient_age=dicom_age_years(str(header.get("PatientAge", "") or "")),
        received_at=received,
    )


_EMPTY_CONTEXT = StudyContext()


class WorkerPool:
    """``size`` worker threads sharing one wake-up event."""

    def __init__(self, size: int, make_worker: Callable[[int], Worker]) -> None:
        self.size = size
        self.make_worker = make_worker
        self.stop_event = threading.Event()
        self.wake_event = threading.Event()
        self.threads: list[threading.Thread] = []
        self.workers: list[Worker] = []

    def start(self) -> None:
        """Start the threads."""
        for index in range(self.size):
            worker = self.make_worker(index)
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
        alive = [t.name for t in self.threads if t.is_alive()]
        if alive:
            logger.warning("worker(s) %s still busy at shutdown; their leases will expire", alive)


__all__ = [
    "FHIR_DESTINATION_PREFIX",
    "PERMANENT_ERRORS",
    "PermanentExportError",
    "Worker",
    "WorkerPool",
    "worker_identity",
]
