"""What every web route needs: the running service, the database and access control.

The web app never imports what wires it: the gateway (:mod:`overread.gateway`)
hands it an object with the shape of :class:`RunningService`, inside a
:class:`WebContext`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from overread.security.access import AccessControl
from overread.security.login import LockoutPolicy
from overread.security.web_sessions import SessionSigner, load_session_key

if TYPE_CHECKING:
    from overread.models.registry import Registry
    from overread.service.config import ServiceConfig
    from overread.service.db import Database
    from overread.service.ingest import Ingestor
    from overread.service.jobs import JobQueue
    from overread.service.metrics import ServiceMetrics
    from overread.service.runtime import PipelineProvider
    from overread.service.store import ObjectStore


class RunningService(Protocol):
    """The parts of the running gateway the REST API and the UI use."""

    @property
    def config(self) -> ServiceConfig:
        """The service configuration (AE title, data directory...)."""
        ...

    @property
    def database(self) -> Database:
        """The gateway's database."""
        ...

    @property
    def store(self) -> ObjectStore:
        """Where stored instances and result objects are."""
        ...

    @property
    def queue(self) -> JobQueue:
        """The job queue (counts, listing, requeue)."""
        ...

    @property
    def metrics(self) -> ServiceMetrics:
        """The gateway's Prometheus metrics (``GET /metrics``)."""
        ...

    @property
    def ingestor(self) -> Ingestor:
        """Stores instances received over STOW-RS."""
        ...

    @property
    def models(self) -> PipelineProvider:
        """Resolves a model alias to a ready pipeline (overlays computed on request)."""
        ...

    @property
    def registry(self) -> Registry:
        """The model registry the API lists and switches aliases in."""
        ...

    @property
    def dicom_port(self) -> int | None:
        """The bound DICOM port, if the listener runs."""
        ...

    def request_released(self, studies: set[str]) -> None:
        """A STOW-RS request ended: treat it like a released association."""
        ...

    def complete_study(self, study_instance_uid: str) -> list[int]:
        """The explicit "study complete" trigger; the ids of the jobs it queued."""
        ...

    def wake_workers(self) -> None:
        """Tell idle workers to look for jobs now."""
        ...


@dataclass
class WebContext:
    """The shared state of the REST API and the web UI.

    Attributes
    ----------
    service
        The running gateway (config, database, queue, ingestor, models).
    access
        Authentication and permission checks (``access.require(Permission.X)``),
        login/logout and audit of views.
    """

    service: RunningService
    access: AccessControl

    @property
    def database(self) -> Database:
        """The gateway's database (``with ctx.database.session() as s: ...`` commits)."""
        return self.service.database

    @classmethod
    def for_service(cls, service: RunningService) -> WebContext:
        """The context of ``service``: session cookies signed with the data dir's key."""
        config = service.config
        signer = SessionSigner(load_session_key(Path(config.data_dir)))
        policy = LockoutPolicy(
            user_threshold=config.login_account_budget,
            source_threshold=config.login_address_budget,
            source_ceiling=config.login_address_ceiling,
            base_seconds=config.login_lockout_seconds,
        )
        access = AccessControl(service.database.session, signer, policy=policy)
        return cls(service=service, access=access)


__all__ = ["RunningService", "WebContext"]
