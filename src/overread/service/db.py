"""The gateway's tables: instances, studies, jobs, results, result reviews and HL7 orders.

SQLAlchemy 2 typed declarative models on the one :class:`overread.db.Base`, over one
schema that runs on SQLite (WAL, ``synchronous=FULL``) and PostgreSQL. The schema is
versioned by the migrations in :mod:`overread.db.migrations`; :class:`Database`
(from :mod:`overread.db`, re-exported here) creates a new database at the current
version and refuses one at another.

The database, not any in-memory queue, is the source of truth for what was received
and what remains to be done: every state transition of a job is one transaction.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from overread.db import Base, Database, UTCDateTime, utcnow


class StudyState(enum.StrEnum):
    """Where a study is in assembly."""

    RECEIVING = "receiving"
    COMPLETE = "complete"
    ROUTED = "routed"


class JobState(enum.StrEnum):
    """The job state machine.

    ``received -> queued -> running -> succeeded``; a failure with attempts left goes
    to ``failed`` (retryable, waiting for ``next_attempt_at``) and is claimed again;
    with no attempts left it goes to ``dead_lettered`` and stays visible. An export of
    a model whose kill switch is engaged waits in ``held`` until the switch is released.
    """

    RECEIVED = "received"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD_LETTERED = "dead_lettered"
    #: An export of a model whose kill switch is engaged: kept, not sent, until released.
    HELD = "held"
    #: A job of a rolled-back rollout candidate that will never run (its study was sent
    #: to the active version instead); kept for the record, never claimed or requeued.
    CANCELLED = "cancelled"


class JobKind(enum.StrEnum):
    """What a job does: run a model on a study, or send results to a destination."""

    INFER = "infer"
    EXPORT = "export"


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
    #: When retention deleted the study's received images (the row, its results and
    #: its worklist entry stay, so the study says why its images are gone).
    images_purged_at: Mapped[datetime | None] = mapped_column(default=None)
    #: When retention deleted the study's model results and their SR/SEG objects.
    results_purged_at: Mapped[datetime | None] = mapped_column(default=None)


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
        # SQLite: a deleted row's id is never handed out again (AUTOINCREMENT); ids
        # are referenced after their rows go (results, audit details, the UI).
        {"sqlite_autoincrement": True},
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
        # SQLite: a deleted result's id is never reused, so nothing that names the
        # id (a review, a reader's verdict, an export payload) can reach a newer one.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(Integer, index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column(default=dict)
    artifacts: Mapped[list[Any]] = mapped_column(default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReviewState(enum.StrEnum):
    """Where a result is in a reader's review (see :mod:`overread.service.review`).

    ``pending``: held by a route that requires review, nothing exported yet;
    ``accepted``/``edited``: a reader verified it (as is, or with changes) and its
    exports were released; ``rejected``: nothing is ever sent; ``released``: the
    review timed out and a route setting released it unverified.
    """

    PENDING = "pending"
    ACCEPTED = "accepted"
    EDITED = "edited"
    REJECTED = "rejected"
    RELEASED = "released"


class ResultReview(Base):
    """A reader's review of one result: the gate's state, who acted, when and what
    changed, and the SR versions that went out before the current one.

    A result without a row was never held and never verified (it went out
    unverified); a row is made when a route holds the result, or when a reader
    later confirms or corrects a result that already went out.
    """

    __tablename__ = "result_reviews"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(Integer, unique=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    route: Mapped[str] = mapped_column(String(128), default="")
    state: Mapped[str] = mapped_column(String(16), default=ReviewState.PENDING.value, index=True)
    held: Mapped[bool] = mapped_column(default=False)
    report_status: Mapped[str] = mapped_column(String(16), default="preliminary")
    due_at: Mapped[datetime | None] = mapped_column(default=None)
    escalated_at: Mapped[datetime | None] = mapped_column(default=None)
    reviewer: Mapped[str] = mapped_column(String(128), default="")
    reviewer_role: Mapped[str] = mapped_column(String(32), default="")
    organization: Mapped[str] = mapped_column(String(64), default="")
    reviewed_at: Mapped[datetime | None] = mapped_column(default=None)
    decisions: Mapped[dict[str, Any]] = mapped_column(default=dict)
    note: Mapped[str] = mapped_column(Text, default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    released_at: Mapped[datetime | None] = mapped_column(default=None)
    superseded: Mapped[list[Any]] = mapped_column(default=list)
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class OrderMatch(enum.StrEnum):
    """Whether an HL7 order is linked to a study.

    ``mismatch``: a study with the order's accession number names another
    patient (or the order names another study); the two are never linked, and the
    study's results are not sent by HL7.
    """

    WAITING = "waiting"
    MATCHED = "matched"
    MISMATCH = "mismatch"
    CANCELLED = "cancelled"


class HL7Order(Base):
    """An imaging order received by HL7 (ORM^O01 or OMI^O23), one row per accession
    number; a later message for the same accession (a change, a cancel) updates it."""

    __tablename__ = "hl7_orders"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    accession_number: Mapped[str] = mapped_column(String(64), unique=True)
    patient_id: Mapped[str] = mapped_column(String(64))
    issuer_of_patient_id: Mapped[str] = mapped_column(String(64), default="")
    patient_name: Mapped[str] = mapped_column(String(256), default="")
    placer_order_number: Mapped[str] = mapped_column(String(64), default="")
    filler_order_number: Mapped[str] = mapped_column(String(64), default="")
    order_control: Mapped[str] = mapped_column(String(4), default="")
    service_code: Mapped[str] = mapped_column(String(256), default="")
    message_type: Mapped[str] = mapped_column(String(16))
    control_id: Mapped[str] = mapped_column(String(199), default="")
    sending_application: Mapped[str] = mapped_column(String(128), default="")
    sending_facility: Mapped[str] = mapped_column(String(128), default="")
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), default=None, index=True)
    match: Mapped[str] = mapped_column(String(24), default=OrderMatch.WAITING.value)
    match_note: Mapped[str] = mapped_column(Text, default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    matched_at: Mapped[datetime | None] = mapped_column(default=None)


__all__ = [
    "Base",
    "Database",
    "HL7Order",
    "Instance",
    "Job",
    "JobKind",
    "JobState",
    "OrderMatch",
    "Result",
    "ResultReview",
    "ReviewState",
    "Study",
    "StudyState",
    "UTCDateTime",
    "utcnow",
]
