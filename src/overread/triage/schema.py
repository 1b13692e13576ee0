"""The triage tables, on the one declarative base of :mod:`overread.db`.

``worklist_items`` holds one row per study with its band, score and the breakdown
that explains it; ``alerts`` one row per study episode with critical findings (its
findings in ``alert_findings``, acknowledgement and closure in ``alert_notes``), with
``alert_deliveries`` recording each channel's delivery attempts; ``feedback`` the
readers' verdicts on each finding. They are created with every other table by the
schema migrations and run on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from overread.db import Base, utcnow


class ReadState(enum.StrEnum):
    """Where a study is in reading."""

    UNREAD = "unread"
    IN_PROGRESS = "in-progress"
    READ = "read"


class AlertState(enum.StrEnum):
    """An alert is open until someone acknowledges it or the study is read.

    ``CLOSED``: a reader gave a verdict on the study (it was read), so the loop is
    closed whether or not anyone acknowledged the alert first.
    """

    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"


class AlertEvent(enum.StrEnum):
    """What an :class:`AlertNote` records."""

    ACKNOWLEDGED = "acknowledged"
    CLOSED = "closed"


class Priority(enum.IntEnum):
    """A study's reading band: the worklist orders by band first, then by score.

    The AI sets a band from its findings (a site setting says which finding sets
    which); an order (the RIS) or a reader may set one too; the AI never lowers the
    band a study already has.
    """

    ROUTINE = 0
    URGENT = 1
    CRITICAL = 2

    @property
    def text(self) -> str:
        """The band's name as settings and pages write it (``"critical"``)."""
        return self.name.lower()

    @classmethod
    def parse(cls, value: object) -> Priority:
        """The band ``value`` names (a name such as ``"urgent"`` or its number).

        Raises
        ------
        ValueError
            If ``value`` names no band.
        """
        if isinstance(value, Priority):
            return value
        text = str(value).strip().lower()
        for band in cls:
            if text in (band.text, str(band.value)):
                return band
        known = ", ".join(b.text for b in cls)
        raise ValueError(f"unknown priority {value!r} (known: {known})")


class PrioritySource(enum.StrEnum):
    """Who set a study's current band."""

    NONE = ""
    AI = "ai"
    ORDER = "order"
    READER = "reader"


class DeliveryState(enum.StrEnum):
    """One channel's delivery of one alert: retried until sent or out of attempts.

    A delivery still pending when its alert is acknowledged is cancelled.
    """

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    CANCELLED = "cancelled"


class AlertSource(enum.StrEnum):
    """What an alert is about: a study's critical finding, or the system's operation.

    A monitoring alert (drift, performance) concerns no patient: it has no study, and
    channels deliver it with its own message shape (see
    :func:`overread.triage.alerts.alert_message`), never as a critical finding.
    """

    STUDY = "study"
    MONITORING = "monitoring"


class Verdict(enum.StrEnum):
    """A reader's verdict on one finding of the model."""

    AGREE = "agree"
    DISAGREE = "disagree"
    UNCERTAIN = "uncertain"
    LABEL = "label"


class WorklistItem(Base):
    """One study on the worklist: its score, why, and its reading state."""

    __tablename__ = "worklist_items"
    # The worklist's own order (band, score, then longest waiting) within a state,
    # so "unread, highest first" pages and claims read the index in order.
    __table_args__ = (
        Index(
            "ix_worklist_order",
            "state",
            text("priority DESC"),
            text("score DESC"),
            "received_at",
            "id",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), default="")
    path: Mapped[str] = mapped_column(String(1024), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    department: Mapped[str] = mapped_column(String(64), default="", index=True)
    patient_age: Mapped[float | None] = mapped_column(Float, default=None)
    received_at: Mapped[datetime | None] = mapped_column(default=None)
    score: Mapped[float] = mapped_column(Float, default=0.0, index=True)
    breakdown: Mapped[list[Any]] = mapped_column(default=list)
    findings: Mapped[list[Any]] = mapped_column(default=list)
    has_critical: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    critical_findings: Mapped[list[Any]] = mapped_column(default=list)
    model_name: Mapped[str] = mapped_column(String(128), default="")
    model_version: Mapped[str] = mapped_column(String(64), default="")
    state: Mapped[str] = mapped_column(String(16), default=ReadState.UNREAD.value)
    reader: Mapped[str] = mapped_column(String(128), default="")
    scored_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The reading band (:class:`Priority`); ordered before the score.
    priority: Mapped[int] = mapped_column(Integer, default=int(Priority.ROUTINE))
    #: Who set the band (:class:`PrioritySource`).
    priority_source: Mapped[str] = mapped_column(String(16), default="")
    #: When the score next changes with waiting time (``None``: never, the wait is
    #: capped); the periodic rescoring reads only the rows due by then.
    rescore_at: Mapped[datetime | None] = mapped_column(default=None, index=True)


class Alert(Base):
    """A study's critical findings, raised once per suppression window.

    ``finding``, ``probability`` and ``threshold`` are those of the leading finding
    (the first raised); every finding of the alert is in ``alert_findings``.
    """

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_identity", "study_instance_uid", "finding", "raised_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64))
    finding: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    department: Mapped[str] = mapped_column(String(64), default="")
    score: Mapped[float] = mapped_column(Float, default=0.0)
    state: Mapped[str] = mapped_column(String(16), default=AlertState.OPEN.value, index=True)
    level: Mapped[int] = mapped_column(Integer, default=0)
    raised_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    duplicates: Mapped[int] = mapped_column(Integer, default=0)
    escalated_at: Mapped[datetime | None] = mapped_column(default=None)
    acknowledged_by: Mapped[str | None] = mapped_column(String(128), default=None)
    acknowledged_at: Mapped[datetime | None] = mapped_column(default=None)


class AlertFinding(Base):
    """One critical finding of an alert: one study's findings share one alert."""

    __tablename__ = "alert_findings"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    finding: Mapped[str] = mapped_column(String(64))
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    added_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlertNote(Base):
    """Closing the loop on an alert: who acknowledged it, whom they told, and a note.

    Critical-result communication must record who was told; an acknowledgement
    without it is refused. Closing the alert (the study was read) is noted too.
    """

    __tablename__ = "alert_notes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    event: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    communicated_to: Mapped[str] = mapped_column(String(256), default="")
    note: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlertDelivery(Base):
    """One channel's delivery of one alert, with its retry state."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_due", "state", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    channel: Mapped[str] = mapped_column(String(64))
    level: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default=DeliveryState.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    sent_at: Mapped[datetime | None] = mapped_column(default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Feedback(Base):
    """A reader's verdict on one finding, with the model's output it judged."""

    __tablename__ = "feedback"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    finding: Mapped[str] = mapped_column(String(64))
    verdict: Mapped[str] = mapped_column(String(16))
    label: Mapped[float] = mapped_column(Float)
    probability: Mapped[float | None] = mapped_column(Float, default=None)
    threshold: Mapped[float | None] = mapped_column(Float, default=None)
    # Stored in the column named before the rename ("uncertainty").
    threshold_proximity: Mapped[float | None] = mapped_column("uncertainty", Float, default=None)
    reader: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AlertNotice(Base):
    """What a non-study alert says (its ``alerts`` row has no study and no finding).

    ``kind`` is the alert's own coded kind (for monitoring, an
    :class:`overread.monitoring.AlertKind` value), ``subject`` what it is about
    (``"site NGH"``), ``message`` one line for a person and ``details`` the figures.
    """

    __tablename__ = "alert_notices"

    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), primary_key=True)
    source: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(200))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)


__all__ = [
    "Alert",
    "AlertDelivery",
    "AlertEvent",
    "AlertFinding",
    "AlertNote",
    "AlertNotice",
    "AlertSource",
    "AlertState",
    "DeliveryState",
    "Feedback",
    "Priority",
    "PrioritySource",
    "ReadState",
    "Verdict",
    "WorklistItem",
]
