"""One process's share of the service: DICOM listener, study assembly and workers.

:class:`ServiceNode` builds the database, object store, job queue and model
provider of a :class:`~overread.service.config.ServiceConfig`, and runs the parts
asked for: the storage SCP, the study assembler and the worker pool. It owns
their threads and stops them in order. The full gateway
(:class:`overread.gateway.Gateway`) is a node plus the triage sweep and the HTTP
front, wired above both this package and the web app; ``overread worker`` runs that
gateway with its listeners, assembly and sweep switched off, so only the workers
run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from overread.audit import AutoCheckpointer
from overread.errors import ConfigError
from overread.service.assembly import StudyAssembler
from overread.service.config import ServiceConfig
from overread.service.db import Database, Job
from overread.service.diskspace import DiskCollector, DiskGuard
from overread.service.hl7.intake import OrderIntake
from overread.service.hl7.mllp import MllpListener
from overread.service.ingest import Ingestor, IngestOutcome
from overread.service.jobs import JobQueue, RetryPolicy
from overread.service.memory import MemoryTrimmer
from overread.service.metrics import ServiceMetrics
from overread.service.receivers import ReceiverProcesses, association_shares
from overread.service.retention import RetentionSweeper
from overread.service.rollout import RolloutStore
from overread.service.runtime import (
    ArtifactBuilder,
    PipelineProvider,
    RegistryPipelineProvider,
    default_artifact_builder,
)
from overread.service.scp import StorageSCP
from overread.service.scu import AssociationPool
from overread.service.store import ObjectStore
from overread.service.wakeups import WakeupPublisher, wake_queue
from overread.service.worker import Worker, WorkerPool, worker_identity

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from overread.models.registry import Registry

logger = logging.getLogger(__name__)

#: How long the stopping gateway lets the instances in flight on its DICOM port be
#: stored (see StorageSCP.stop) before it stops without them.
_DRAIN_SECONDS = 10.0


def open_queue(config: ServiceConfig) -> tuple[Database, ObjectStore, JobQueue]:
    """The database (tables created), object store and job queue of ``config``."""
    database = Database(config.database_url)
    store = ObjectStore(Path(config.data_dir) / "objects", fsync=config.fsync)
    queue = JobQueue(
        database,
        retry=RetryPolicy(
            config.retry_base_seconds,
            config.retry_max_seconds,
            retry_for_seconds=config.retry_for_seconds,
        ),
        max_attempts=config.max_attempts,
        on_lost=reroute_lost_canary(database),
    )
    return database, store, queue


def reroute_lost_canary(database: Database) -> Callable[[Session, Job, str], None]:
    """The queue's hook for a job dead-lettered because its worker was lost: a canary
    job's study goes to the active version, as after any canary failure."""
    rollouts = RolloutStore(database, critical={})

    def hook(session: Session, job: Job, actor: str) -> None:
        rollouts.reroute_dead_job(session, job, actor=actor)

    return hook


class ServiceNode:
    """The DICOM listener, study assembler and job workers of one process.

    Parameters
    ----------
    config
        The validated service configuration.
    models
        Model resolver (default: the model registry through ``overread.inference``).
    artifacts
        Result object builder (default: the SR builder of ``overread.service.outputs``,
        or none when it is unavailable). Pass ``False`` to build nothing.
    with_scp
        Start the DICOM listener (``overread worker`` does not).
    with_assembler
        Run study assembly (off in ``overread worker``).
    registry
        The model registry the API lists and switches aliases in (default: the
        settings' registry, the one :class:`~overread.inference.Pipeline` resolves in).
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        models: PipelineProvider | None = None,
        artifacts: ArtifactBuilder | bool | None = True,
        with_scp: bool = True,
        with_assembler: bool = True,
        registry: Registry | None = None,
    ) -> None:
        self.config = config
        self._registry = registry
        try:
            Path(config.data_dir).mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ConfigError(
                f"{config.data_dir}: not a folder, cannot be the data folder"
            ) from None
        except OSError as exc:
            raise ConfigError(
                f"{config.data_dir}: cannot create the data folder ({exc.strerror or exc})"
            ) from None
        self.database, self.store, self.queue = open_queue(config)
        self.models: PipelineProvider = models or RegistryPipelineProvider.from_config(config)
        if artifacts is True:
            self.artifacts: ArtifactBuilder | None = default_artifact_builder()
        elif artifacts is False:
            self.artifacts = None
        else:
            self.artifacts = artifacts
        self.assembler = StudyAssembler(config, self.database, self.queue, self.models)
        self.disk = DiskGuard.from_settings(Path(config.data_dir), config.retention)
        self.ingestor = Ingestor(
            self.database, self.store, on_stored=self._on_stored, disk=self.disk
        )
        self.scp: StorageSCP | None = (
            StorageSCP(
                # With receiver processes the gateway admits its share of
                # max_associations (each child its own; together the setting).
                config.model_copy(
                    update={
                        "max_associations": association_shares(
                            config.max_associations, config.dicom_receivers
                        )[0]
                    }
                ),
                self.ingestor,
                on_released=self._on_released,
                rejected_dir=Path(config.data_dir) / "rejected",
                shared_port=config.dicom_receivers > 1,
            )
            if with_scp
            else None
        )
        self.receivers: ReceiverProcesses | None = (
            ReceiverProcesses(
                config,
                config.dicom_receivers - 1,
                on_released=self._on_released,
                on_stored=self._on_stored,
            )
            if with_scp and config.dicom_receivers > 1
            else None
        )
        self.with_assembler = with_assembler
        prefix = worker_identity()
        #: Associations to DICOM destinations kept between sends, for every worker.
        self.associations = AssociationPool(config.kept_association_seconds)
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
                associations=self.associations,
            ),
            export_lane=config.export_at_once,
        )
        self.publisher: WakeupPublisher | None = (
            WakeupPublisher(config.broker_url, wake_queue(config.database_url))
            if config.broker_url and with_assembler
            else None
        )
        # The node that assembles studies is the one gateway process per data
        # directory: it also signs the audit checkpoints.
        self.checkpointer: AutoCheckpointer | None = (
            AutoCheckpointer(
                self.database.engine,
                Path(config.data_dir),
                every_events=config.audit_checkpoint_events,
                every_seconds=config.audit_checkpoint_seconds,
            )
            if with_assembler
            else None
        )
        self.metrics = ServiceMetrics(self.queue, config, self.models)
        self.metrics.registry.register(DiskCollector(self.disk))
        # Retention runs where assembly does: one clean-up per data directory.
        self.retention: RetentionSweeper | None = (
            RetentionSweeper(self.database, self.store, config.retention)
            if with_assembler
            else None
        )
        # Freed memory back to the system, in every process (gateway and worker).
        self.trimmer = MemoryTrimmer(config.malloc_trim_seconds)
        self._stop = threading.Event()
        self._assembler_thread: threading.Thread | None = None
        self.dicom_port: int | None = None
        # Orders by HL7 (MLLP), beside the DICOM listener.
        self.hl7_listener: MllpListener | None = (
            MllpListener(config.hl7_listen_host, config.hl7_listen_port, OrderIntake(self.database))
            if with_scp and config.hl7_listen_port is not None
            else None
        )
        self.hl7_port: int | None = None

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
        self.metrics.observe_ingest(outcome)
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
        """Start every part; return once the DICOM listener is bound."""
        if self.with_assembler:
            self._assembler_thread = threading.Thread(
                target=self._assemble, name="overread-assembler", daemon=True
            )
            self._assembler_thread.start()
        self.metrics.start()
        self.trimmer.start()
        self.pool.start()
        if self.checkpointer is not None:
            self.checkpointer.start()
        if self.retention is not None:
            self.retention.start()
        if self.scp is not None:
            self.dicom_port = self.scp.start()
            if self.receivers is not None:
                self.receivers.start(self.scp.listening_socket)
        if self.hl7_listener is not None:
            self.hl7_port = self.hl7_listener.start()
            logger.info("HL7 orders (MLLP) on port %d", self.hl7_port)

    def _assemble(self) -> None:
        self.assembler.run(self._stop, on_jobs=lambda _ids: self.wake_workers())

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening, let running jobs finish (up to ``timeout``), close the database."""
        self._stop.set()
        if self.scp is not None:
            self.scp.stop(drain_seconds=_DRAIN_SECONDS)
        if self.receivers is not None:
            self.receivers.stop()
        if self.hl7_listener is not None:
            self.hl7_listener.stop()
        self.assembler.wake()
        if self._assembler_thread is not None:
            self._assembler_thread.join(5)
        if self.retention is not None:
            self.retention.stop()
        self.pool.stop(timeout)
        self.associations.close()
        self.metrics.stop()
        self.trimmer.stop()
        if self.checkpointer is not None:
            self.checkpointer.stop()
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


__all__ = ["ServiceNode", "open_queue"]
