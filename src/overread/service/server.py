"""The gateway as one object: SCP, study assembler, workers, triage and HTTP API.

:class:`Service` wires the parts together and owns their lifecycle; ``overread
serve`` is a thin command around it, and tests start it in-process on free ports.
Besides the request-driven parts it runs one periodic task, the triage sweep:
alert deliveries, retries and escalation, and rescoring of the worklist as studies
wait (:meth:`Service.run_triage`).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from overread.errors import ConfigError
from overread.service.assembly import StudyAssembler
from overread.service.config import ServiceConfig
from overread.service.db import Database, utcnow
from overread.service.ingest import Ingestor, IngestOutcome
from overread.service.jobs import JobQueue, RetryPolicy
from overread.service.runtime import (
    ArtifactBuilder,
    PipelineProvider,
    RegistryPipelineProvider,
    default_artifact_builder,
)
from overread.service.scp import StorageSCP
from overread.service.store import ObjectStore
from overread.service.wakeups import WakeupPublisher, wake_queue
from overread.service.worker import Worker, WorkerPool, worker_identity

if TYPE_CHECKING:
    from overread.models.registry import Registry
    from overread.triage import SweepReport, TriageConfig

logger = logging.getLogger(__name__)

#: Seconds between two triage sweeps when none is configured.
DEFAULT_TRIAGE_INTERVAL = 15.0


@dataclass(frozen=True)
class TriageRun:
    """What one periodic triage pass did."""

    sweep: SweepReport
    rescored: int


def open_queue(config: ServiceConfig) -> tuple[Database, ObjectStore, JobQueue]:
    """The database (tables created), object store and job queue of ``config``."""
    database = Database(config.database_url)
    store = ObjectStore(Path(config.data_dir) / "objects", fsync=config.fsync)
    queue = JobQueue(
        database,
        retry=RetryPolicy(config.retry_base_seconds, config.retry_max_seconds),
        max_attempts=config.max_attempts,
    )
    return database, store, queue


class Service:
    """The running gateway.

    Parameters
    ----------
    config
        The validated service configuration.
    models
        Model resolver (default: the model registry through ``overread.inference``).
    artifacts
        Result object builder (default: the SR builder of ``overread.service.outputs``,
        or none when it is unavailable). Pass ``False`` to build nothing.
    with_scp, with_http
        Start the DICOM listener / the HTTP API (``overread worker`` starts neither).
    with_assembler
        Run study assembly and the periodic triage sweep (off in ``overread worker``).
    registry
        The model registry the API lists and switches aliases in (default: the
        settings' registry, the one :class:`~overread.inference.Pipeline` resolves in).
    triage_interval
        Seconds between triage sweeps (alert delivery, retries, escalation, and
        rescoring for waiting time); ``None`` or ``0`` runs none.
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        models: PipelineProvider | None = None,
        artifacts: ArtifactBuilder | bool | None = True,
        with_scp: bool = True,
        with_http: bool = True,
        with_assembler: bool = True,
        registry: Registry | None = None,
        triage_interval: float | None = DEFAULT_TRIAGE_INTERVAL,
    ) -> None:
        self.config = config
        from overread.triage import TriageConfig

        try:
            self.triage: TriageConfig = TriageConfig.model_validate(config.triage)
        except ValueError as exc:
            raise ConfigError(f"invalid [triage] settings: {exc}") from None
        self.triage_interval = triage_interval
        self._registry = registry
        Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        self.database, self.store, self.queue = open_queue(config)
        self.models: PipelineProvider = models or RegistryPipelineProvider.from_config(config)
        if artifacts is True:
            self.artifacts: ArtifactBuilder | None = default_artifact_builder()
        elif artifacts is False:
            self.artifacts = None
        else:
            self.artifacts = artifacts
        self.assembler = StudyAssembler(config, self.database, self.queue, self.models)
        self.ingestor = Ingestor(self.database, self.store, on_stored=self._on_stored)
        self.scp: StorageSCP | None = (
            StorageSCP(
                config,
                self.ingestor,
                on_released=self._on_released,
                rejected_dir=Path(config.data_dir) / "rejected",
            )
            if with_scp
            else None
        )
        self.with_http = with_http
        self.with_assembler = with_assembler
        prefix = worker_identity()
        self.pool = WorkerPool(
            config.workers,
            lambda i: Worker(
                config,
                self.database,
                self.store,
                self.queue,
                self.models,
                self.artifacts,
                name=f"{prefix}/{i}",
            ),
        )
        self.publisher: WakeupPublisher | None = (
            WakeupPublisher(config.broker_url, wake_queue(config.database_url))
            if config.broker_url and with_assembler
            else None
        )
        self._stop = threading.Event()
        self._assembler_thread: threading.Thread | None = None
        self._triage_thread: threading.Thread | None = None
        self._http: object | None = None
        self.dicom_port: int | None = None
        self.http_port: int | None = None

    @property
    def registry(self) -> Registry:
        """The model registry (built from the settings on first use)."""
        if self._registry is None:
            from overread.config import load_settings
            from overread.models.registry import Registry

            self._registry = Registry.from_settings(load_settings())
        return self._registry

    # -- events -----------------------------------------------------------------------
    def _on_stored(self, outcome: IngestOutcome) -> None:
        self.assembler.wake()

    def _on_released(self, studies: set[str]) -> None:
        if self.assembler.association_released(studies):
            self.wake_workers()

    def request_released(self, studies: set[str]) -> None:
        """A STOW-RS request ended: treat it like a released association."""
        self._on_released(studies)

    def complete_study(self, study_instance_uid: str) -> list[int]:
        """The explicit "study complete" trigger."""
        job_ids = self.assembler.complete_study(study_instance_uid)
        if job_ids:
            self.wake_workers()
        return job_ids

    def wake_workers(self) -> None:
        """Tell idle workers to look for jobs now: this process's, and others' via the broker."""
        self.pool.wake()
        if self.publisher is not None:
            self.publisher.publish()

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start every part; return once the listeners are bound."""
        if self.with_assembler:
            self._assembler_thread = threading.Thread(
                target=self._assemble, name="overread-assembler", daemon=True
            )
            self._assembler_thread.start()
            if self.triage_interval:
                self._triage_thread = threading.Thread(
                    target=self._triage_loop, name="overread-triage", daemon=True
                )
                self._triage_thread.start()
        self.pool.start()
        if self.scp is not None:
            self.dicom_port = self.scp.start()
        if self.with_http and self.config.http_port is not None:
            from overread.service.http import HttpServer
            from overread.web.app import create_app

            http = HttpServer(create_app(self), self.config.http_host, self.config.http_port)
            self.http_port = http.start()
            self._http = http
            logger.info("HTTP API on http://%s:%d", self.config.http_host, self.http_port)

    def _assemble(self) -> None:
        self.assembler.run(self._stop, on_jobs=lambda _ids: self.wake_workers())

    def run_triage(self, now: datetime | None = None) -> TriageRun:
        """One triage pass: escalate and deliver alerts, then rescore unread studies.

        The sweep sends with no transaction open (:func:`overread.triage.run_sweep`);
        rescoring is one short transaction. ``now`` defaults to the current time.
        """
        from overread.triage import refresh_scores, run_sweep

        moment = now or utcnow()
        report = run_sweep(self.database, self.triage, now=moment)
        with self.database.session() as session:
            rescored = refresh_scores(session, self.triage, now=moment)
        return TriageRun(sweep=report, rescored=rescored)

    def _triage_loop(self) -> None:
        interval = float(self.triage_interval or DEFAULT_TRIAGE_INTERVAL)
        while not self._stop.is_set():
            try:
                run = self.run_triage()
            except Exception:
                logger.exception("triage sweep failed; retrying in %.0f s", interval)
            else:
                report = run.sweep
                if report.sent or report.escalated or report.failed or report.retrying:
                    logger.info(
                        "triage: %d alert(s) sent, %d escalated, %d retrying, %d failed",
                        len(report.sent),
                        len(report.escalated),
                        len(report.retrying),
                        len(report.failed),
                    )
            self._stop.wait(interval)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, let running jobs finish (up to ``timeout``), close the database."""
        self._stop.set()
        if self.scp is not None:
            self.scp.stop()
        if self._http is not None:
            from overread.service.http import HttpServer

            assert isinstance(self._http, HttpServer)
            self._http.stop()
        self.assembler.wake()
        if self._assembler_thread is not None:
            self._assembler_thread.join(5)
        if self._triage_thread is not None:
            self._triage_thread.join(30)
        self.pool.stop(timeout)
        close = getattr(self.models, "close", None)
        if callable(close):
            close()
        if self.publisher is not None:
            self.publisher.close()
        self.database.dispose()
        logger.info("service stopped")

    def wait(self) -> None:
        """Block until :meth:`request_stop` is called."""
        self._stop.wait()

    def request_stop(self) -> None:
        """Ask :meth:`wait` to return (safe from a signal handler)."""
        self._stop.set()
        self.assembler.wake()


__all__ = ["DEFAULT_TRIAGE_INTERVAL", "Service", "TriageRun", "open_queue"]
