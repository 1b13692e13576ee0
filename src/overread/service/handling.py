"""What every job handler works with: the gateway's stores, the queue and its audit trail.

The worker claims a job and hands it to a handler (:mod:`~overread.service.infer`
for infer jobs, an exporter of :mod:`~overread.service.exporters` per destination
kind); each handler records its outcome through :class:`JobServices`, in the
transaction that marks the job done.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from overread.audit import AuditAction, record_event
from overread.errors import ServiceError
from overread.service.config import ServiceConfig
from overread.service.db import Database
from overread.service.jobs import JobQueue
from overread.service.store import ObjectStore


class PermanentExportError(ServiceError):
    """A destination refused a result for good (e.g. HTTP 400): retrying cannot help."""


@dataclass(frozen=True)
class JobServices:
    """The configuration, database, object store and queue a worker runs jobs with.

    ``owner`` is the worker's lease-owner name; it fences every job transition and
    names the worker in the audit trail.
    """

    config: ServiceConfig
    database: Database
    store: ObjectStore
    queue: JobQueue
    owner: str

    def audit(
        self,
        session: Session,
        *,
        action: AuditAction,
        object_uids: Iterable[str],
        details: dict[str, Any],
    ) -> None:
        """Record what this worker did, in ``session``'s transaction."""
        record_event(
            session,
            actor=f"worker:{self.owner}",
            role="service",
            action=action,
            object_uids=object_uids,
            details=details,
        )


__all__ = ["JobServices", "PermanentExportError"]
