"""The worklist: one scored row per study, and the queries a reading room needs.

A study's row is written when its result arrives (:func:`triage_study`), rescored as
it waits (:func:`refresh_scores`, only the rows whose score changed), and moved
through unread -> in-progress -> read by readers (:func:`set_read_state`). The stored breakdown is what the UI shows next to
the score; the stored findings are what feedback and rescoring read back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from overread.audit import AuditAction, record_event
from overread.errors import ConfigError, ServiceError
from overread.results import FindingResult
from overread.triage.config import AlertSettings, TriageConfig
from overread.triage.schema import Priority, PrioritySource, ReadState, WorklistItem
from overread.triage.score import StudyContext, score_changes_at, score_study

if TYPE_CHECKING:
    from overread.inference.result import Prediction

logger = logging.getLogger(__name__)

# A claim retries when another reader took its candidate first.
_CLAIM_TRIES = 20


def critical_findings(
    findings: Sequence[FindingResult], alerts: AlertSettings
) -> list[tuple[str, float, float]]:
    """``(label, probability, threshold)`` of each finding at or over its alert threshold."""
    hits: list[tuple[str, float, float]] = []
    for finding in findings:
        threshold = alerts.critical.get(finding.label)
        if threshold is not None and float(finding.probability) >= threshold:
            hits.append((finding.label, float(finding.probability), threshold))
    return hits


def ai_priority(findings: Sequence[FindingResult], config: TriageConfig) -> Priority:
    """The band the findings call for: the highest band one finding reaches.

    A finding sets a band when its calibrated probability is at or over that band's
    threshold for it (``[triage.priority]``; the critical band defaults to the alert
    thresholds). A NaN probability reaches nothing.
    """
    bands = config.band_thresholds()
    best = Priority.ROUTINE
    for finding in findings:
        probability = float(finding.probability)
        for band in (Priority.CRITICAL, Priority.URGENT):
            threshold = bands[band.text].get(finding.label)
            if threshold is not None and probability >= threshold and band > best:
                best = band
    return best


def worklist_order() -> tuple[Any, ...]:
    """The worklist's order: band, then score, then longest waiting, then oldest row."""
    return (
        WorklistItem.priority.desc(),
        WorklistItem.score.desc(),
        WorklistItem.received_at.asc(),
        WorklistItem.id.asc(),
    )


def set_priority(
    session: Session,
    study_instance_uid: str,
    priority: Priority | str | int,
    *,
    source: PrioritySource,
    who: str,
    now: datetime,
    role: str = "",
) -> WorklistItem:
    """Set a study's band as an order (the RIS) or a reader gives it (audited).

    Unlike the AI's band, this may lower the band: a reader decides. The AI, scoring
    the study again later, never puts it below the band set here.

    Raises
    ------
    ConfigError
        An unknown band, no name of who set it, or the AI named as the source.
    KeyError
        If the study is not on the worklist.
    """
    if source in (PrioritySource.AI, PrioritySource.NONE):
        raise ConfigError("only an order or a reader sets a band by hand")
    if not who:
        raise ConfigError("setting a band needs the name of who set it")
    try:
        band = Priority.parse(priority)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    item = get_item(session, study_instance_uid)
    before = Priority(item.priority or 0)
    item.priority = int(band)
    item.priority_source = source.value
    item.updated_at = now
    session.flush()
    record_event(
        session,
        actor=who,
        role=role,
        action=AuditAction.CONFIG_CHANGE,
        object_uids=[study_instance_uid],
        details={
            "event": "priority-set",
            "priority": band.text,
            "before": before.text,
            "source": source.value,
        },
    )
    return item


def stored_findings(item: WorklistItem) -> list[FindingResult]:
    """A worklist row's findings (``worklist_items.findings``), read back."""
    return [FindingResult.from_dict(d) for d in item.findings or []]


def _context(item: WorklistItem) -> StudyContext:
    return StudyContext(item.department, item.patient_age, item.received_at)


def _locked(session: Session, study_instance_uid: str) -> WorklistItem | None:
    return session.execute(
        select(WorklistItem)
        .where(WorklistItem.study_instance_uid == study_instance_uid)
        .with_for_update()
    ).scalar_one_or_none()


def _lock_or_create(session: Session, study_instance_uid: str) -> WorklistItem:
    """The study's row, locked until the transaction ends; created if missing.

    The lock serialises concurrent triage of one study (two model versions, a re-run),
    so alert suppression sees the other's alert. Creation is ``INSERT ... ON CONFLICT
    DO NOTHING`` on SQLite and PostgreSQL, so two transactions creating the same row
    do not fail: the second waits for the first and then locks its row.
    """
    dialect = session.get_bind().dialect.name
    if dialect in ("sqlite", "postgresql"):
        insert = sqlite_insert if dialect == "sqlite" else postgresql_insert
        session.execute(
            insert(WorklistItem)
            .values(study_instance_uid=study_instance_uid, state=ReadState.UNREAD.value)
            .on_conflict_do_nothing(index_elements=["study_instance_uid"])
        )
    item = _locked(session, study_instance_uid)
    if item is None:
        item = WorklistItem(study_instance_uid=study_instance_uid, state=ReadState.UNREAD.value)
        session.add(item)
    return item


def upsert_study(
    session: Session,
    study_instance_uid: str,
    findings: Sequence[FindingResult],
    context: StudyContext,
    config: TriageConfig,
    *,
    now: datetime,
    sop_instance_uid: str = "",
    path: str = "",
    patient_id: str = "",
    model_name: str = "",
    model_version: str = "",
) -> WorklistItem:
    """Score a study and write (or update) its worklist row; return the row.

    A study scored again (a new model version, or a re-run) keeps its reading state.
    Its band is the higher of the band it has (the AI's earlier one, or one an order
    or a reader set) and the band the findings call for: the AI never lowers it.
    """
    if not study_instance_uid:
        raise ConfigError("a worklist entry needs a Study Instance UID")
    stored = list(findings)
    item = _lock_or_create(session, study_instance_uid)
    item.sop_instance_uid = sop_instance_uid or item.sop_instance_uid or ""
    item.path = path or item.path or ""
    item.patient_id = patient_id or item.patient_id or ""
    item.department = context.department
    item.patient_age = context.patient_age
    item.received_at = context.received_at or item.received_at or now
    # Scored from what the row keeps, as every later rescoring is (a study given no
    # arrival time waits from the time stored for it, not from nowhere).
    context = _context(item)
    score = score_study(stored, context, config.weights, now=now)
    critical = critical_findings(stored, config.alerts)
    item.score = score.total
    item.breakdown = score.breakdown()
    item.findings = [f.to_worklist_dict() for f in stored]
    item.has_critical = bool(critical)
    item.critical_findings = [label for label, _, _ in critical]
    band = ai_priority(stored, config)
    if item.priority is None or band > item.priority:
        item.priority = int(band)
        item.priority_source = PrioritySource.AI.value
    elif not item.priority_source:
        item.priority_source = PrioritySource.NONE.value
    item.model_name = model_name
    item.model_version = model_version
    item.scored_at = now
    item.rescore_at = score_changes_at(context, config.weights, now)
    item.updated_at = now
    session.flush()
    logger.info(
        "worklist %s: score %.1f%s",
        study_instance_uid,
        score.total,
        f", critical {', '.join(item.critical_findings)}" if critical else "",
        extra={"study_instance_uid": study_instance_uid, "score": score.total},
    )
    return item


def refresh_scores(
    session: Session, config: TriageConfig, *, now: datetime, full: bool = False
) -> int:
    """Rescore the studies not yet read whose score has changed by ``now``; return how many.

    Only the clock changes a stored score between two writes of its row (waiting time
    grows, in steps), and each row keeps when that next happens (``rescore_at``, set
    whenever it is scored; empty once waiting is capped). So only rows due by ``now``
    are written; a clock that went back (``now`` before a row's ``scored_at``)
    rescores that row too. The rows left alone hold what rescoring them would write.
    ``full`` rescores every row not yet read: after the score weights changed (a
    gateway does so on its first pass and then hourly, since worker processes score
    with their own settings). The rows are locked while rescored (on PostgreSQL; rows
    another transaction holds are skipped), so a result stored meanwhile is not
    overwritten with a score from the findings before it.
    """
    query = (
        select(WorklistItem)
        .where(WorklistItem.state != ReadState.READ.value)
        .with_for_update(skip_locked=True)
    )
    if not full:
        query = query.where(or_(WorklistItem.rescore_at <= now, WorklistItem.scored_at > now))
    count = 0
    for item in session.execute(query).scalars():
        context = _context(item)
        score = score_study(stored_findings(item), context, config.weights, now=now)
        item.score = score.total
        item.breakdown = score.breakdown()
        item.scored_at = now
        item.rescore_at = score_changes_at(context, config.weights, now)
        count += 1
    session.flush()
    return count


def claim_next(
    session: Session,
    *,
    reader: str,
    now: datetime,
    department: str | None = None,
    has_critical: bool | None = None,
) -> WorklistItem | None:
    """Give a reader the highest-priority unread study and mark it in progress.

    Two readers claiming at once get different studies: the row is taken with a
    conditional update (still unread), and on PostgreSQL candidates another
    transaction holds are skipped (``FOR UPDATE SKIP LOCKED``). ``None`` when nothing
    unread matches.
    """
    if not reader:
        raise ConfigError("claiming a study needs the name of the reader")
    conditions: list[Any] = [WorklistItem.state == ReadState.UNREAD.value]
    if department:
        conditions.append(func.lower(WorklistItem.department) == department.strip().lower())
    if has_critical is not None:
        conditions.append(WorklistItem.has_critical.is_(has_critical))
    order = worklist_order()
    for _ in range(_CLAIM_TRIES):
        candidate = session.execute(
            select(WorklistItem.id)
            .where(*conditions)
            .order_by(*order)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).scalar_one_or_none()
        if candidate is None:
            return None
        # Conditional on still being unread: a reader who took it meanwhile wins.
        taken = session.execute(
            update(WorklistItem)
            .where(WorklistItem.id == candidate, WorklistItem.state == ReadState.UNREAD.value)
            .values(state=ReadState.IN_PROGRESS.value, reader=reader, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if getattr(taken, "rowcount", 0) == 1:
            return session.get(WorklistItem, candidate, populate_existing=True)
    raise ServiceError(f"could not claim a study for {reader} in {_CLAIM_TRIES} tries")


def set_read_state(
    session: Session, study_instance_uid: str, state: ReadState | str, *, reader: str, now: datetime
) -> WorklistItem:
    """Move a study to unread, in-progress or read, recording who."""
    try:
        new_state = ReadState(state)
    except ValueError:
        known = ", ".join(s.value for s in ReadState)
        raise ConfigError(f"unknown reading state {state!r} (known: {known})") from None
    item = get_item(session, study_instance_uid)
    item.state = new_state.value
    item.reader = reader
    item.updated_at = now
    session.flush()
    return item


def get_item(session: Session, study_instance_uid: str) -> WorklistItem:
    """The worklist row of a study.

    Raises
    ------
    KeyError
        If the study is not on the worklist.
    """
    item = session.execute(
        select(WorklistItem).where(WorklistItem.study_instance_uid == study_instance_uid)
    ).scalar_one_or_none()
    if item is None:
        raise KeyError(f"study {study_instance_uid} is not on the worklist")
    return item


@dataclass(frozen=True)
class WorklistPage:
    """One page of the ordered worklist and the number of rows matching in all."""

    items: list[WorklistItem]
    total: int
    offset: int
    limit: int


def query_worklist(
    session: Session,
    *,
    state: ReadState | str | Sequence[ReadState | str] | None = None,
    department: str | None = None,
    min_score: float | None = None,
    has_critical: bool | None = None,
    limit: int = 50,
    offset: int = 0,
) -> WorklistPage:
    """The worklist, highest band first, then highest score (ties: longest waiting).

    Parameters
    ----------
    state
        One reading state or several; ``None`` for all.
    department
        Requesting department, matched case-insensitively.
    min_score
        Only studies scoring at least this.
    has_critical
        Only studies with (``True``) or without (``False``) a critical finding.
    limit, offset
        Pagination.
    """
    if limit < 1 or offset < 0:
        raise ConfigError(f"invalid page: limit {limit} must be >= 1 and offset {offset} >= 0")
    conditions: list[Any] = []
    if state is not None:
        states = [state] if isinstance(state, str) else list(state)
        conditions.append(WorklistItem.state.in_([ReadState(s).value for s in states]))
    if department:
        conditions.append(func.lower(WorklistItem.department) == department.strip().lower())
    if min_score is not None:
        conditions.append(WorklistItem.score >= min_score)
    if has_critical is not None:
        conditions.append(WorklistItem.has_critical.is_(has_critical))
    total = session.execute(
        select(func.count()).select_from(WorklistItem).where(*conditions)
    ).scalar_one()
    rows = (
        session.execute(
            select(WorklistItem)
            .where(*conditions)
            .order_by(*worklist_order())
            .limit(limit)
            .offset(offset)
        )
        .scalars()
        .all()
    )
    return WorklistPage(items=list(rows), total=int(total), offset=offset, limit=limit)


def upsert_prediction(
    session: Session,
    prediction: Prediction,
    context: StudyContext,
    config: TriageConfig,
    *,
    now: datetime,
) -> WorklistItem:
    """:func:`upsert_study` for an :class:`overread.inference.Prediction`.

    The study, instance, patient and model come from the prediction; department,
    age and time received from ``context`` (the image header does not say them
    reliably; the RIS or the study record does).

    Raises
    ------
    ConfigError
        If the prediction failed (``ok`` false) or names no study.
    """
    if not prediction.ok:
        raise ConfigError(
            f"{prediction.path}: prediction failed ({prediction.error}); nothing to triage"
        )
    metadata = prediction.metadata
    study_uid = prediction.study_instance_uid or ""
    if not study_uid:
        raise ConfigError(f"{prediction.path}: prediction has no Study Instance UID")
    return upsert_study(
        session,
        study_uid,
        list(prediction.findings),
        context,
        config,
        now=now,
        sop_instance_uid=prediction.sop_instance_uid or "",
        path=str(prediction.path or ""),
        patient_id=(metadata.patient_id if metadata is not None else "") or "",
        model_name=prediction.model.name,
        model_version=prediction.model.version,
    )


__all__ = [
    "WorklistPage",
    "ai_priority",
    "claim_next",
    "critical_findings",
    "get_item",
    "query_worklist",
    "refresh_scores",
    "set_priority",
    "set_read_state",
    "stored_findings",
    "upsert_prediction",
    "upsert_study",
    "worklist_order",
]
