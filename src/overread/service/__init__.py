"""The gateway: DICOM in, studies assembled and routed, jobs run, results out.

Importing this package is cheap: it does not import the result builders
(:mod:`overread.service.outputs`) or the model runtime; those load when a worker
first needs them.
"""

from overread.service.config import (
    AllowedPeer,
    Destination,
    QueryPeer,
    Route,
    ServiceConfig,
    service_config,
)
from overread.service.db import Database, JobKind, JobState, StudyState
from overread.service.jobs import JobQueue, LeaseLostError, RetryPolicy
from overread.service.store import ObjectStore

__all__ = [
    "AllowedPeer",
    "Database",
    "Destination",
    "JobKind",
    "JobQueue",
    "JobState",
    "LeaseLostError",
    "ObjectStore",
    "QueryPeer",
    "RetryPolicy",
    "Route",
    "ServiceConfig",
    "StudyState",
    "service_config",
]
