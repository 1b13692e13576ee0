"""Critical-finding alerts: raise once, deliver with retries, acknowledge, escalate, close.

An alert is raised when a study's findings reach their critical thresholds, one
alert per study with all of its critical findings; the same study and findings
within ``suppress_minutes`` of the first alert only count a duplicate. An
acknowledgement says who was told (closed-loop critical-result communication); the
alert closes when the study is read (a reader's verdict). Raising writes one pending delivery per level-0 channel; :func:`sweep`
(called periodically by the service, with its clock) attempts due deliveries,
retrying failures with exponential backoff until ``max_attempts``, and escalates an
alert nobody acknowledged within ``escalate_after_minutes`` to the next level's
channels. All state is in the database, so a restart loses nothing; a delivery is
attempted at least once per attempt slot (a crash between sending and committing
can repeat one message, never drop it).

Raising and acknowledging are audited (:func:`overread.audit.record_event`) in the
caller's transaction, so the audit tables must exist (``overread.audit.create_tables``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from overread.audit import AuditAction, record_event
from overread.db import Database
from overread.errors import ConfigError, ServiceError
from overread.triage.channels import AlertChannel, open_channel
from overread.triage.config import AlertSettings, TriageConfig
from overread.triage.schema import (
    Alert,
    AlertDelivery,
    AlertEvent,
    AlertFinding,
    AlertNote,
    AlertNotice,
    AlertSource,
    AlertState,
    DeliveryState,
    WorklistItem,
)
from overread.triage.score import StudyContext
from overread.triage.worklist import upsert_prediction

if TYPE_CHECKING:
    from overread.inference.result import Prediction

logger = logging.getLogger(__name__)

#: The actor recorded for what the system does by itself.
SYSTEM_ACTOR = "system:overread-triage"


def alert_findings(session: Session, alert: Alert) -> list[AlertFinding]:
    """Every critical finding of ``alert``, in the order they were raised."""
    return list(
        session.scalars(
            select(AlertFinding).where(AlertFinding.alert_id == alert.id).order_by(AlertFinding.id)
        ).all()
    )


def alert_notes(session: Session, alert: Alert) -> list[AlertNote]:
    """The acknowledgement and closure notes of ``alert``, oldest first."""
    return list(
        session.scalars(
            select(AlertNote).where(AlertNote.alert_id == alert.id).order_by(AlertNote.id)
        ).all()
    )


def next_level(level: int, levels: set[int]) -> int | None:
    """The escalation level after ``level``: the lowest configured one above it (levels
    need not be consecutive: with channels at 0 and 2 an alert goes from 0 to 2), or
    ``None`` at the top."""
    return min((other for other in levels if other > level), default=None)


def next_escalation_at(alert: Alert, settings: AlertSettings) -> datetime | None:
    """When an open alert escalates next, ``None`` if it cannot (closed, or no next level).

    An alert escalates ``escalate_after_minutes`` after it was raised or last
    escalated, while channels exist at the next level.
    """
    if alert.state != AlertState.OPEN.value:
        return None
    if next_level(alert.level, {c.level for c in settings.channels}) is None:
        return None
    since = alert.escalated_at or alert.raised_at
    return since + timedelta(minutes=settings.escalate_after_minutes)


#: What a channel's message of a monitoring alert says instead of the finding notice.
MONITORING_NOTICE = (
    "Monitoring alert about the AI model's operation (input drift or performance); "
    "it concerns no single patient's study and is not a critical finding."
)


def alert_message(
    alert: Alert,
    findings: list[AlertFinding] | None = None,
    notice: AlertNotice | None = None,
) -> dict[str, Any]:
    """The JSON-able message every channel delivers for an alert.

    ``findings`` lists every critical finding of the study's alert; the leading one
    is also given as ``finding`` (the form channels received before grouping).
    An alert with a :class:`AlertNotice` (a monitoring alert) is delivered as
    ``{"source": "monitoring", "kind", "subject", "message", ...}`` with no study,
    finding or probability, so no receiver can take it for a patient's finding.
    """
    if notice is not None:
        return {
            "alert_id": alert.id,
            "source": notice.source,
            "kind": notice.kind,
            "subject": notice.subject,
            "message": notice.message,
            "value": round(alert.probability, 6),
            "threshold": alert.threshold,
            "details": dict(notice.details or {}),
            "level": alert.level,
            "raised_at": alert.raised_at.isoformat(),
            "state": alert.state,
            "notice": MONITORING_NOTICE,
        }
    listed = findings or []
    return {
        "alert_id": alert.id,
        "study_instance_uid": alert.study_instance_uid,
        "finding": alert.finding,
        "probability": round(alert.probability, 4),
        "threshold": alert.threshold,
        "findings": [
            {"finding": f.finding, "probability": round(f.probability, 4), "threshold": f.threshold}
            for f in listed
        ]
        or [
            {
                "finding": alert.finding,
                "probability": round(alert.probability, 4),
                "threshold": alert.threshold,
            }
        ],
        "department": alert.department,
        "score": round(alert.score, 2),
        "level": alert.level,
        "raised_at": alert.raised_at.isoformat(),
        "state": alert.state,
        "notice": "AI second-reader finding, not verified; confirm on the images before acting.",
    }


def _queue_deliveries(
    session: Session, alert: Alert, settings: AlertSettings, now: datetime
) -> int:
    count = 0
    for channel in settings.channels:
        if channel.level == alert.level:
            session.add(
                AlertDelivery(
                    alert_id=alert.id,
                    channel=channel.name,
                    level=alert.level,
                    state=DeliveryState.PENDING.value,
                    next_attempt_at=now,
                    created_at=now,
                )
            )
            count += 1
    return count


def _critical_hits(item: WorklistItem, settings: AlertSettings) -> list[tuple[str, float, float]]:
    hits: list[tuple[str, float, float]] = []
    for data in item.findings:
        label = str(data["label"])
        threshold = settings.critical.get(label)
        probability = float(data["probability"])
        if threshold is None or not probability >= threshold:
            continue
        hits.append((label, probability, threshold))
    # The most probable first: it leads the alert.
    hits.sort(key=lambda h: (-h[1], h[0]))
    return hits


def raise_alerts(
    session: Session, item: WorklistItem, config: TriageConfig, *, now: datetime
) -> list[Alert]:
    """Raise one alert for a worklist study's critical findings; return new alerts.

    One study's critical findings share one alert (a reader is told once, of all of
    them). Within the suppression window, findings already alerted only bump the
    alert's ``duplicates`` and ``last_seen_at``; a new critical finding joins the
    study's open alert, or, when that alert was already acknowledged or closed,
    raises a new one (someone must be told of it).
    """
    settings = config.alerts
    hits = _critical_hits(item, settings)
    if not hits:
        return []
    window_start = now - timedelta(minutes=settings.suppress_minutes)
    recent = session.scalars(
        select(Alert)
        .where(
            Alert.study_instance_uid == item.study_instance_uid,
            Alert.raised_at >= window_start,
            Alert.finding != REVIEW_OVERDUE,
        )
        .order_by(Alert.raised_at.desc(), Alert.id.desc())
    ).all()
    known: dict[str, AlertFinding] = {}
    for alert in recent:
        for row in alert_findings(session, alert):
            known.setdefault(row.finding, row)
    fresh = [h for h in hits if h[0] not in known]
    for label, probability, _ in hits:
        if label in known:
            row = known[label]
            row.probability = max(row.probability, probability)
    open_alert = next((a for a in recent if a.state == AlertState.OPEN.value), None)
    if not fresh:
        latest = recent[0]
        latest.duplicates += 1
        latest.last_seen_at = now
        latest.probability = max(
            [latest.probability] + [p for label, p, _ in hits if label == latest.finding]
        )
        logger.info("alert %d: duplicate suppressed", latest.id)
        session.flush()
        return []
    if open_alert is not None:
        for label, probability, threshold in fresh:
            session.add(
                AlertFinding(
                    alert_id=open_alert.id,
                    finding=label,
                    probability=probability,
                    threshold=threshold,
                    added_at=now,
                )
            )
        open_alert.last_seen_at = now
        record_event(
            session,
            actor=SYSTEM_ACTOR,
            action=AuditAction.ALERT,
            object_uids=[item.study_instance_uid],
            details={
                "event": "findings-added",
                "alert_id": open_alert.id,
                "findings": [label for label, _, _ in fresh],
            },
        )
        session.flush()
        return []
    label, probability, threshold = fresh[0]
    alert = Alert(
        study_instance_uid=item.study_instance_uid,
        finding=label,
        probability=probability,
        threshold=threshold,
        department=item.department,
        score=item.score,
        state=AlertState.OPEN.value,
        level=0,
        raised_at=now,
        last_seen_at=now,
        duplicates=0,
    )
    session.add(alert)
    session.flush()
    for label_i, probability_i, threshold_i in fresh:
        session.add(
            AlertFinding(
                alert_id=alert.id,
                finding=label_i,
                probability=probability_i,
                threshold=threshold_i,
                added_at=now,
            )
        )
    channels = _queue_deliveries(session, alert, settings, now)
    if channels == 0:
        logger.warning("alert %d raised but no level-0 channel is configured", alert.id)
    record_event(
        session,
        actor=SYSTEM_ACTOR,
        action=AuditAction.ALERT,
        object_uids=[item.study_instance_uid],
        details={
            "event": "raised",
            "alert_id": alert.id,
            "finding": label,
            "findings": [f for f, _, _ in fresh],
            "probability": round(probability, 6),
            "threshold": threshold,
            "channels": channels,
        },
    )
    session.flush()
    return [alert]


def _cancel_pending(session: Session, alert: Alert, why: str) -> None:
    pending = session.scalars(
        select(AlertDelivery).where(
            AlertDelivery.alert_id == alert.id,
            AlertDelivery.state == DeliveryState.PENDING.value,
        )
    ).all()
    for delivery in pending:
        delivery.state = DeliveryState.CANCELLED.value
        delivery.last_error = f"cancelled: {why}"


#: The longest "who was told" and note an acknowledgement keeps.
COMMUNICATED_TO_MAX = 256
NOTE_MAX = 4000


#: The ``finding`` of an alert that says a held result waits past its review time-out.
REVIEW_OVERDUE = "Review overdue"


def raise_review_overdue(
    session: Session, study_instance_uid: str, config: TriageConfig, *, now: datetime
) -> Alert:
    """Raise a "review overdue" alert for a study whose results wait for a reader's
    review past their route's time-out.

    It goes out like a critical finding's alert: level-0 channels first, then up the
    escalation levels while nobody acknowledges it. One study has one open such alert.
    """
    existing = session.execute(
        select(Alert).where(
            Alert.study_instance_uid == study_instance_uid,
            Alert.finding == REVIEW_OVERDUE,
            Alert.state == AlertState.OPEN.value,
        )
    ).scalar_one_or_none()
    if existing is not None:
        existing.duplicates += 1
        existing.last_seen_at = now
        return existing
    item = session.execute(
        select(WorklistItem).where(WorklistItem.study_instance_uid == study_instance_uid)
    ).scalar_one_or_none()
    alert = Alert(
        study_instance_uid=study_instance_uid,
        finding=REVIEW_OVERDUE,
        probability=1.0,
        threshold=1.0,
        department="" if item is None else item.department,
        score=0.0 if item is None else item.score,
        state=AlertState.OPEN.value,
        level=0,
        raised_at=now,
        last_seen_at=now,
        duplicates=0,
    )
    session.add(alert)
    session.flush()
    channels = _queue_deliveries(session, alert, config.alerts, now)
    record_event(
        session,
        actor=SYSTEM_ACTOR,
        action=AuditAction.ALERT,
        object_uids=[study_instance_uid],
        details={
            "event": "raised",
            "alert_id": alert.id,
            "finding": REVIEW_OVERDUE,
            "channels": channels,
        },
    )
    session.flush()
    return alert


def raise_notice_alert(
    session: Session,
    config: TriageConfig,
    *,
    source: AlertSource,
    kind: str,
    subject: str,
    message: str,
    value: float,
    threshold: float,
    details: Mapping[str, Any] | None = None,
    now: datetime,
) -> Alert:
    """Raise an alert that concerns no study (a monitoring alert); return it.

    It is delivered by the level-0 channels, retried and escalated like any alert, and
    acknowledged the same way; its ``alerts`` row has no study and its ``finding``
    reads ``SOURCE:KIND``, while what it says lives in its :class:`AlertNotice`. The
    caller audits it (its own action) and decides against duplicates.
    """
    alert = Alert(
        study_instance_uid="",
        finding=f"{source.value}:{kind}"[:64],
        probability=float(value),
        threshold=float(threshold),
        department=source.value,
        score=0.0,
        state=AlertState.OPEN.value,
        level=0,
        raised_at=now,
        last_seen_at=now,
        duplicates=0,
    )
    session.add(alert)
    session.flush()
    session.add(
        AlertNotice(
            alert_id=alert.id,
            source=source.value,
            kind=kind[:32],
            subject=subject[:200],
            message=message,
            details=dict(details or {}),
        )
    )
    if _queue_deliveries(session, alert, config.alerts, now) == 0:
        logger.warning("alert %d raised but no level-0 channel is configured", alert.id)
    session.flush()
    return alert


def _uids(alert: Alert) -> list[str]:
    return [alert.study_instance_uid] if alert.study_instance_uid else []


def acknowledge(
    session: Session,
    alert_id: int,
    *,
    who: str,
    now: datetime,
    communicated_to: str,
    note: str = "",
    role: str = "",
) -> Alert:
    """Acknowledge an alert, recording whom the result was told to (closed loop).

    Critical-result communication is closed only when someone says who was told,
    so ``communicated_to`` is required; ``note`` is free text (what was said, a call
    back number). Both are stored and audited. Idempotent: the first acknowledgement
    is kept. Pending deliveries are cancelled: whoever acknowledged knows.

    Raises
    ------
    ConfigError
        No name of who acknowledged, or no one named as told.
    KeyError
        If the alert does not exist.
    """
    if not who:
        raise ConfigError("an acknowledgement needs the name of who acknowledged")
    told = " ".join(communicated_to.split())
    if not told:
        raise ConfigError("an acknowledgement needs who was told of the critical result")
    if len(told) > COMMUNICATED_TO_MAX:
        raise ConfigError(f"who was told is at most {COMMUNICATED_TO_MAX} characters")
    text = note.strip()
    if len(text) > NOTE_MAX:
        raise ConfigError(f"the note is at most {NOTE_MAX} characters")
    alert = session.get(Alert, alert_id)
    if alert is None:
        raise KeyError(f"alert {alert_id} does not exist")
    if alert.state != AlertState.OPEN.value:
        return alert
    alert.state = AlertState.ACKNOWLEDGED.value
    alert.acknowledged_by = who
    alert.acknowledged_at = now
    session.add(
        AlertNote(
            alert_id=alert.id,
            event=AlertEvent.ACKNOWLEDGED.value,
            actor=who,
            communicated_to=told,
            note=text,
            created_at=now,
        )
    )
    _cancel_pending(session, alert, f"acknowledged by {who}")
    record_event(
        session,
        actor=who,
        role=role,
        action=AuditAction.ALERT,
        object_uids=_uids(alert),
        details={
            "event": "acknowledged",
            "alert_id": alert.id,
            "finding": alert.finding,
            "communicated_to": told,
            "note": text,
            "seconds_to_acknowledge": round((now - alert.raised_at).total_seconds(), 3),
        },
    )
    session.flush()
    return alert


def close_study_alerts(
    session: Session, study_instance_uid: str, *, who: str, now: datetime, role: str = ""
) -> list[Alert]:
    """Close a study's open and acknowledged alerts: it was read (a reader's verdict).

    Pending deliveries and escalation stop; each closure is noted and audited.
    Returns the alerts closed (none when the study had none still open).
    """
    alerts = session.scalars(
        select(Alert).where(
            Alert.study_instance_uid == study_instance_uid,
            Alert.state.in_([AlertState.OPEN.value, AlertState.ACKNOWLEDGED.value]),
            # A review-overdue alert ends with the review, not with a verdict.
            Alert.finding != REVIEW_OVERDUE,
        )
    ).all()
    for alert in alerts:
        was = alert.state
        alert.state = AlertState.CLOSED.value
        session.add(
            AlertNote(
                alert_id=alert.id,
                event=AlertEvent.CLOSED.value,
                actor=who,
                note="study read",
                created_at=now,
            )
        )
        _cancel_pending(session, alert, f"study read by {who}")
        record_event(
            session,
            actor=who,
            role=role,
            action=AuditAction.ALERT,
            object_uids=[study_instance_uid],
            details={"event": "closed", "alert_id": alert.id, "was": was, "why": "study read"},
        )
    session.flush()
    return list(alerts)


def backoff(attempts: int, settings: AlertSettings) -> timedelta:
    """Wait before attempt ``attempts + 1``: doubling from ``backoff_seconds``, capped."""
    seconds = settings.backoff_seconds * (2 ** max(attempts - 1, 0))
    return timedelta(seconds=min(seconds, settings.max_backoff_seconds))


def triage_prediction(
    session: Session,
    prediction: Prediction,
    context: StudyContext,
    config: TriageConfig,
    *,
    now: datetime,
) -> tuple[WorklistItem, list[Alert]]:
    """Put a prediction's study on the worklist and raise its critical alerts.

    What the service calls when a result is stored, in the result's transaction.
    """
    item = upsert_prediction(session, prediction, context, config, now=now)
    return item, raise_alerts(session, item, config, now=now)


@dataclass
class SweepReport:
    """What one :func:`sweep` did."""

    escalated: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    retrying: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    errors: dict[int, str] = field(default_factory=dict)


def _level_failed(session: Session, alert: Alert) -> bool:
    # Every delivery at the alert's level failed for good: nobody can have been told.
    states = set(
        session.execute(
            select(AlertDelivery.state).where(
                AlertDelivery.alert_id == alert.id, AlertDelivery.level == alert.level
            )
        ).scalars()
    )
    return states == {DeliveryState.FAILED.value}


def escalate_due(
    session: Session, config: TriageConfig, *, now: datetime, report: SweepReport | None = None
) -> list[Alert]:
    """Escalate each open alert unacknowledged for ``escalate_after_minutes`` at its level.

    An alert moves to the next configured level per period while there is one, and
    at once when every delivery at its level has failed for good (nobody was told);
    the next level's deliveries are queued immediately.
    """
    settings = config.alerts
    report = report or SweepReport()
    levels = {c.level for c in settings.channels}
    cutoff = now - timedelta(minutes=settings.escalate_after_minutes)
    escalated: list[Alert] = []
    # Only alerts below the top configured level can move: the others are not loaded
    # (an open alert nobody acknowledges must not cost every sweep a row).
    open_alerts = (
        session.execute(
            select(Alert)
            .where(Alert.state == AlertState.OPEN.value, Alert.level < max(levels))
            .order_by(Alert.id)
        )
        .scalars()
        .all()
        if levels
        else []
    )
    for alert in open_alerts:
        target = next_level(alert.level, levels)
        if target is None:
            continue
        since = alert.escalated_at or alert.raised_at
        if since > cutoff and not _level_failed(session, alert):
            continue
        alert.level = target
        alert.escalated_at = now
        session.flush()
        channels = _queue_deliveries(session, alert, settings, now)
        record_event(
            session,
            actor=SYSTEM_ACTOR,
            action=AuditAction.ALERT,
            object_uids=_uids(alert),
            details={
                "event": "escalated",
                "alert_id": alert.id,
                "finding": alert.finding,
                "level": alert.level,
                "channels": channels,
            },
        )
        logger.warning(
            "alert %d (%s, %s) not acknowledged: escalated to level %d",
            alert.id,
            alert.study_instance_uid,
            alert.finding,
            alert.level,
        )
        escalated.append(alert)
        report.escalated.append(alert.id)
    session.flush()
    return escalated


def _claim_attempt(
    session: Session, delivery: AlertDelivery, settings: AlertSettings, now: datetime
) -> bool:
    """Count one attempt, conditional on nobody having counted it since we read the row.

    Concurrent sweepers may read the same due delivery (SQLite reads outside the write
    lock); the conditional update lets exactly one of them send it. The retry time is
    set at once, so an attempt cut short by a crash is retried after its backoff.
    """
    seen = delivery.attempts
    claimed = session.execute(
        update(AlertDelivery)
        .where(
            AlertDelivery.id == delivery.id,
            AlertDelivery.state == DeliveryState.PENDING.value,
            AlertDelivery.attempts == seen,
            AlertDelivery.next_attempt_at <= now,
        )
        .values(attempts=seen + 1, next_attempt_at=now + backoff(seen + 1, settings))
        .execution_options(synchronize_session=False)
    )
    if getattr(claimed, "rowcount", 0) != 1:
        session.expire(delivery)
        return False
    session.refresh(delivery)
    return True


@dataclass(frozen=True)
class _Attempt:
    delivery_id: int
    channel: str
    attempts: int
    message: dict[str, Any]


def _claim_due(session: Session, config: TriageConfig, now: datetime) -> list[_Attempt]:
    due = session.execute(
        select(AlertDelivery)
        .where(
            AlertDelivery.state == DeliveryState.PENDING.value,
            AlertDelivery.next_attempt_at <= now,
        )
        .order_by(AlertDelivery.next_attempt_at, AlertDelivery.id)
        # Concurrent sweepers on PostgreSQL skip each other's rows; SQLite ignores this
        # and relies on the conditional claim.
        .with_for_update(skip_locked=True)
    ).scalars()
    attempts: list[_Attempt] = []
    for delivery in list(due):
        alert = session.get(Alert, delivery.alert_id)
        if alert is None or alert.state != AlertState.OPEN.value:
            delivery.state = DeliveryState.CANCELLED.value
            continue
        if not _claim_attempt(session, delivery, config.alerts, now):
            continue  # another sweeper took this attempt
        notice = None if alert.study_instance_uid else session.get(AlertNotice, alert.id)
        attempts.append(
            _Attempt(
                delivery.id,
                delivery.channel,
                delivery.attempts,
                alert_message(alert, alert_findings(session, alert), notice),
            )
        )
    session.flush()
    return attempts


def _send(
    attempts: list[_Attempt],
    config: TriageConfig,
    channels: Mapping[str, AlertChannel] | None,
) -> list[tuple[_Attempt, str | None]]:
    by_name: dict[str, AlertChannel] = dict(channels or {})
    configured = {c.name: c for c in config.alerts.channels}
    outcomes: list[tuple[_Attempt, str | None]] = []
    for attempt in attempts:
        channel = by_name.get(attempt.channel)
        if channel is None and attempt.channel in configured:
            channel = by_name[attempt.channel] = open_channel(configured[attempt.channel])
        try:
            if channel is None:
                raise ServiceError(f"alert channel {attempt.channel!r} is no longer configured")
            channel.send(attempt.message)
        except ServiceError as exc:
            outcomes.append((attempt, str(exc)))
            continue
        outcomes.append((attempt, None))
    return outcomes


def _record(
    session: Session,
    config: TriageConfig,
    outcomes: list[tuple[_Attempt, str | None]],
    now: datetime,
    report: SweepReport,
) -> None:
    settings = config.alerts
    for attempt, error in outcomes:
        delivery = session.get(AlertDelivery, attempt.delivery_id)
        if delivery is None:
            continue
        if error is None:
            delivery.state = DeliveryState.SENT.value
            delivery.sent_at = now
            delivery.last_error = None
            report.sent.append(delivery.id)
            continue
        delivery.last_error = error
        report.errors[delivery.id] = error
        if attempt.attempts >= settings.max_attempts:
            delivery.state = DeliveryState.FAILED.value
            report.failed.append(delivery.id)
            logger.error("alert delivery %d failed for good: %s", delivery.id, error)
        else:
            report.retrying.append(delivery.id)
            logger.warning("alert delivery %d failed, will retry: %s", delivery.id, error)
    session.flush()


def deliver_due(
    session: Session,
    config: TriageConfig,
    *,
    now: datetime,
    channels: Mapping[str, AlertChannel] | None = None,
    report: SweepReport | None = None,
) -> SweepReport:
    """Attempt every pending delivery that is due, in the caller's transaction.

    A failed attempt is retried after :func:`backoff`; after ``max_attempts`` the
    delivery is ``failed``. The network is used while the transaction is open; with
    SQLite prefer :func:`run_sweep`, which sends between two short transactions.
    """
    report = report or SweepReport()
    outcomes = _send(_claim_due(session, config, now), config, channels)
    _record(session, config, outcomes, now, report)
    return report


def sweep(
    session: Session,
    config: TriageConfig,
    *,
    now: datetime,
    channels: Mapping[str, AlertChannel] | None = None,
) -> SweepReport:
    """Escalate overdue alerts, then attempt due deliveries, in one transaction.

    Parameters
    ----------
    session
        A session in a transaction; the caller commits.
    config
        Triage settings (channels, backoff, escalation).
    now
        The clock (injected, so escalation and backoff are testable).
    channels
        Channel objects by name; built from ``config`` where missing.
    """
    report = SweepReport()
    escalate_due(session, config, now=now, report=report)
    deliver_due(session, config, now=now, channels=channels, report=report)
    return report


def run_sweep(
    database: Database,
    config: TriageConfig,
    *,
    now: datetime,
    channels: Mapping[str, AlertChannel] | None = None,
) -> SweepReport:
    """:func:`sweep` for the service's periodic call: no transaction open on the network.

    Escalation and claiming commit in one short transaction, the messages are sent
    with no transaction open (a slow or dead peer does not hold SQLite's write lock
    or PostgreSQL row locks), and the outcomes commit in a second one. A crash while
    sending leaves the attempt counted and retried after its backoff.
    """
    report = SweepReport()
    with database.session() as session:
        escalate_due(session, config, now=now, report=report)
        attempts = _claim_due(session, config, now)
    outcomes = _send(attempts, config, channels)
    with database.session() as session:
        _record(session, config, outcomes, now, report)
    return report


__all__ = [
    "COMMUNICATED_TO_MAX",
    "MONITORING_NOTICE",
    "NOTE_MAX",
    "REVIEW_OVERDUE",
    "SYSTEM_ACTOR",
    "SweepReport",
    "acknowledge",
    "alert_findings",
    "alert_message",
    "alert_notes",
    "backoff",
    "close_study_alerts",
    "deliver_due",
    "escalate_due",
    "next_escalation_at",
    "next_level",
    "raise_alerts",
    "raise_notice_alert",
    "raise_review_overdue",
    "run_sweep",
    "sweep",
    "triage_prediction",
]
