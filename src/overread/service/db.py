"""The gateway's database: instances, studies, jobs and results.

SQLAlchemy 2 typed declarative models over one schema that runs on SQLite (the
embedded default, in WAL mode with ``synchronous=FULL`` so a committed row survives
power loss) and on PostgreSQL (``postgresql+psycopg://``). Tables are created on
start with ``metadata.create_all``; schema migrations (Alembic) are future work.

The database, not any in-memory queue, is the source of truth for what was received
and what remains to be done: every state transition of a job is one transaction.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from overread.errors import ConfigError

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware.

    SQLite has no timezone type; without this, values read back naive and cannot be
    compared with :func:`utcnow`.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class StudyState(enum.StrEnum):
    """Where a study is in assembly."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    ROUTED = "routed"


class JobState(enum.StrEnum):
    """The job state machine.

    ``received -> queued -> running -> succeeded``; a failure with attempts left goes
    to ``failed`` (retryable, waiting for ``next_attempt_at``) and is claimed again;
    with no attempts left it goes to ``dead_lettered`` and stays visible.
    """

    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"


class JobKind(enum.StrEnum):
    """What a job does: run a model on a study, or send results to a destination."""

    INFER = "infer"
    EXPORT = "export"


class Base(DeclarativeBase):
    """Declarative base of the gateway's tables."""

    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Instance(Base):
    """One received SOP instance: where its bytes are and what routing needs."""

    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    view_position: Mapped[str] = mapped_column(String(16), default="")
    institution: Mapped[str] = mapped_column(String(128), default="")
    series_description: Mapped[str] = mapped_column(String(256), default="")
    calling_ae: Mapped[str] = mapped_column(String(16))
    peer_host: Mapped[str] = mapped_column(String(255), default="")
    object_key: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Study(Base):
    """A study being assembled from its instances."""

    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    state: Mapped[str] = mapped_column(String(16), default=StudyState.RECEIVING.value, index=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    first_instance_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(default=None)
    complete_reason: Mapped[str] = mapped_column(String(32), default="")


class Job(Base):
    """A unit of work with a lease; unique per (study, model version, kind, destination)."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint(
            "study_instance_uid",
            "model_name",
            "model_version",
            "kind",
            "destination",
            name="uq_job_identity",
        ),
        Index("ix_jobs_claim", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    destination: Mapped[str] = mapped_column(String(64), default="")
    route: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16), default=JobState.QUEUED.value)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=5)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128), default=None)
    lease_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class Result(Base):
    """A model's result on a study: written once per (study, model, version)."""

    __tablename__ = "results"
    __table_args__ = (
        UniqueConstraint(
            "study_instance_uid", "model_name", "model_version", name="uq_result_identity"
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifacts: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def _sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class Database:
    """An engine plus a session factory for one database URL.

    Parameters
    ----------
    url
        A SQLAlchemy URL: ``sqlite:///path/overread.db`` (WAL mode is switched on) or
        ``postgresql+psycopg://user@host:5432/db``.
    create
        Create missing tables (the default; what ``overread serve`` does on start).
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise ConfigError(f"invalid database URL {url!r}: {exc}") from None
        self.url = url
        self.dialect = parsed.get_backend_name()
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.dialect == "sqlite":
            database = parsed.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        self.engine: Engine = create_engine(url, **kwargs)
        if self.dialect == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        if create:
            self.create_tables()

    def create_tables(self) -> None:
        """Create any missing table (idempotent).

        Besides the gateway's own tables this creates the worklist tables (declared on
        the same ``Base`` by :mod:`overread.triage.schema`), the access-control tables
        and the audit chain, so that every action can be audited in its own transaction.
        """
        import overread.triage.schema  # noqa: F401  (registers the worklist tables on Base)
        from overread.security.schema import create_tables as create_security_tables

        Base.metadata.create_all(self.engine)
        create_security_tables(self.engine)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits on success and rolls back on error."""
        with self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()

    def __repr__(self) -> str:
        return f"Database({make_url(self.url).render_as_string(hide_password=True)!r})"


__all__ = [
    "Base",
    "Database",
    "Instance",
    "Job",
    "JobKind",
    "JobState",
    "Result",
    "Study",
    "StudyState",
    "utcnow",
]
