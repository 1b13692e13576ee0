"""What the pages show, as typed rows built from the database.

Rows are pydantic models so that :func:`overread.security.redact_phi` removes the
patient's identity (fields named in ``PHI_FIELD_NAMES``) for roles without
``view_phi`` before a template ever sees it: the templates test whether the field is
there, they never decide who may see it. The patient's name is not in the database
at all; it is read from the stored DICOM header of the study's first instance, and
only for viewers allowed to see it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from pydantic import BaseModel, Field, computed_field
from sqlalchemy import select
from sqlalchemy.orm import Session

from overread.imaging import read_metadata
from overread.results import Decision, FindingResult, calibration_statement
from overread.security import Permission, Principal, redact_phi
from overread.service.db import Instance, Job, JobState, Result, Study
from overread.service.outputs.volume import is_generated_warning
from overread.service.review import study_review_states
from overread.service.store import ObjectStore
from overread.triage import (
    Alert,
    AlertEvent,
    AlertFinding,
    AlertSettings,
    Feedback,
    Priority,
    StudyGate,
    WorklistItem,
    alert_findings,
    alert_notes,
    next_escalation_at,
    stored_findings,
)
from overread.web.api.worklist import study_gates

logger = logging.getLogger(__name__)

#: Findings shown in a worklist row's summary at most.
SUMMARY_FINDINGS = 3

#: How every page writes each decision: the same three words everywhere, so an
#: indeterminate call never reads as a bare "positive".
DECISION_TEXT = {
    Decision.POSITIVE: "positive",
    Decision.INDETERMINATE: "indeterminate (refer)",
    Decision.NEGATIVE: "negative",
}
#: The label of an AI call no reader has confirmed yet.
UNVERIFIED = "AI \u2014 not verified"


def decision_text(decision: Decision | str) -> str:
    """The words a page shows for a decision (``"indeterminate (refer)"``)."""
    return DECISION_TEXT[Decision.parse(decision)]


class AiCall(BaseModel):
    """One AI call as the worklist and alert pages show it."""

    label: str
    probability: float
    decision: str
    text: str


def _ai_calls(findings: list[FindingResult]) -> list[AiCall]:
    """Positive, then indeterminate calls, most probable first (negatives omitted)."""
    shown = sorted(
        (f for f in findings if f.decision != Decision.NEGATIVE and f.label != "No Finding"),
        key=lambda f: (-f.decision.severity, -f.probability, f.label),
    )
    return [
        AiCall(
            label=f.label,
            probability=round(f.probability, 2),
            decision=f.decision.value,
            text=decision_text(f.decision),
        )
        for f in shown
    ]


def study_readers(session: Session, uids: list[str]) -> dict[str, str]:
    """Who last gave a verdict on each study that has one: a reader confirmed its AI calls."""
    if not uids:
        return {}
    rows = session.execute(
        select(Feedback.study_instance_uid, Feedback.reader)
        .where(Feedback.study_instance_uid.in_(uids))
        .order_by(Feedback.created_at, Feedback.id)
    ).all()
    return {uid: reader for uid, reader in rows}


def waiting_text(since: datetime | None, now: datetime) -> str:
    """A short waiting time: ``"45 s"``, ``"12 min"``, ``"3 h 05 min"``, ``"2 d 4 h"``."""
    if since is None:
        return "-"
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _person_name(value: Any) -> str:
    """A DICOM Person Name as people read it: ``Family^Given`` -> ``Family, Given``."""
    text = str(value or "").strip()
    if not text:
        return ""
    parts = [p for p in text.split("=")[0].split("^") if p]
    return ", ".join(parts[:2]) + (" " + " ".join(parts[2:]) if len(parts) > 2 else "")


@dataclass(frozen=True)
class StudyHeader:
    """The identity and description of a study, from its first stored instance."""

    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    study_description: str = ""
    study_date: str = ""
    modality: str = ""
    body_part: str = ""
    view_position: str = ""


@lru_cache(maxsize=4096)
def _header_of_file(path: str) -> StudyHeader:
    try:
        meta = read_metadata(path)
    except Exception as exc:  # an unreadable file: show the study without its header
        logger.warning("cannot read the header of %s: %s", path, exc)
        return StudyHeader()
    return StudyHeader(
        patient_name=_person_name(meta.patient_name),
        patient_id=meta.patient_id or "",
        patient_birth_date=meta.patient_birth_date or "",
        patient_sex=meta.patient_sex or "",
        accession_number=meta.accession_number or "",
        study_description=meta.study_description or "",
        study_date=meta.study_date or "",
        modality=meta.modality or "",
        body_part=meta.body_part or "",
        view_position=meta.view_position or "",
    )


def study_instances(session: Session, study_instance_uid: str) -> list[Instance]:
    """The stored instances of a study, in series order."""
    return list(
        session.scalars(
            select(Instance)
            .where(Instance.study_instance_uid == study_instance_uid)
            .order_by(Instance.series_instance_uid, Instance.id)
        ).all()
    )


def study_header(
    session: Session, store: ObjectStore, item: WorklistItem
) -> tuple[StudyHeader, Instance | None]:
    """The header of the worklist study's reference image (else its first instance).

    Stored objects never change (their key is their SHA-256), so headers are cached
    per file.
    """
    instance: Instance | None = None
    if item.sop_instance_uid:
        instance = session.scalar(
            select(Instance).where(Instance.sop_instance_uid == item.sop_instance_uid)
        )
    if instance is None:
        instances = study_instances(session, item.study_instance_uid)
        instance = instances[0] if instances else None
    if instance is None:
        return StudyHeader(), None
    try:
        path = store.path(instance.object_key)
    except Exception:
        return StudyHeader(), instance
    return _header_of_file(str(path)), instance


#: Where the study page's trust badge turns from low to medium to high (display only).
TRUST_MEDIUM = 0.3
TRUST_HIGH = 0.6


class FindingView(BaseModel):
    """One finding of the model, with the reader's latest verdict on it."""

    label: str
    probability: float
    threshold: float | None
    positive: bool
    threshold_proximity: float
    critical: bool
    #: ``positive``, ``indeterminate`` or ``negative``; ``decision_text`` as pages write it.
    decision: str = "negative"
    decision_text: str = "negative"
    verdict: str | None = None
    verdict_by: str | None = None
    trust_score: float | None = None
    map_concentration: float | None = None
    deletion_drop: float | None = None
    entropy: float | None = None
    mutual_information: float | None = None
    conformal_set: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def trust_level(self) -> str:
        """``high`` (>= 0.6), ``medium`` (>= 0.3) or ``low``; ``""`` when not computed."""
        if self.trust_score is None:
            return ""
        if self.trust_score >= TRUST_HIGH:
            return "high"
        return "medium" if self.trust_score >= TRUST_MEDIUM else "low"


class ScoreTermView(BaseModel):
    """One term of the priority score."""

    name: str
    contribution: float
    detail: str


class WorklistRow(BaseModel):
    """One study on the worklist page."""

    study_instance_uid: str
    score: float
    priority: str = "routine"
    calls: list[AiCall] = []
    #: The reader whose verdict confirmed the AI calls ("" = AI, not verified).
    verified_by: str = ""
    has_critical: bool
    critical_findings: list[str]
    summary: str
    department: str
    patient_age: float | None
    waiting: str
    received_at: str
    state: str
    reader: str
    modality: str = ""
    patient_name: str = ""
    patient_id: str = ""
    analysis: str = "analysed"
    #: Why the input gate did not analyse the study: free text that can quote a header
    #: value, so PHI (as in the API).
    gate_note: str = Field(default="", json_schema_extra={"phi": True})
    review: str = ""


class StudyView(BaseModel):
    """Everything the study page shows."""

    study_instance_uid: str
    score: float
    has_critical: bool
    critical_findings: list[str]
    department: str
    patient_age: float | None
    waiting: str
    received_at: str
    state: str
    reader: str
    model_name: str
    model_version: str
    findings: list[FindingView]
    breakdown: list[ScoreTermView]
    images: int
    #: False when the model is an onboarded one whose thresholds were never fitted here.
    model_calibrated: bool = True
    modality: str = ""
    body_part: str = ""
    view_position: str = ""
    study_description: str = ""
    study_date: str = ""
    patient_name: str = ""
    patient_id: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    accession_number: str = ""
    analysis: str = "analysed"
    gate_note: str = Field(default="", json_schema_extra={"phi": True})
    #: Which probability calibration decided the findings (a site's or the global one;
    #: "" when the service does not choose calibrations by site).
    calibration_note: str = ""
    #: The date the retention policy deleted the images ("" while they are kept).
    images_purged_on: str = ""
    #: The warnings the pipeline generates (an implausible airway share, a candidate
    #: cap: :func:`overread.service.outputs.volume.is_generated_warning`): numbers and
    #: fixed words, shown to every role.
    model_warnings: list[str] = Field(default_factory=list)
    #: The run's other warnings. PHI: they include the DICOM reader's messages, which
    #: can echo header values.
    other_warnings: list[str] = Field(default_factory=list, json_schema_extra={"phi": True})


def _findings_summary(item: WorklistItem) -> str:
    shown = _ai_calls(stored_findings(item))
    if not shown:
        return "no positive or indeterminate finding"
    text = ", ".join(f"{c.label} {c.probability:.2f} {c.text}" for c in shown[:SUMMARY_FINDINGS])
    more = len(shown) - SUMMARY_FINDINGS
    return text + (f" (+{more})" if more > 0 else "")


def _iso(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment is not None else ""


def worklist_rows(
    session: Session,
    store: ObjectStore,
    items: list[WorklistItem],
    viewer: Principal,
    *,
    now: datetime,
) -> list[dict[str, Any]]:
    """The worklist page's rows, redacted for ``viewer``."""
    with_phi = viewer.can(Permission.VIEW_PHI)
    rows: list[dict[str, Any]] = []
    gates = study_gates(session, items)
    readers = study_readers(session, [i.study_instance_uid for i in items])
    reviews = study_review_states(session, [item.study_instance_uid for item in items])
    for item in items:
        gate = gates.get(item.study_instance_uid) or StudyGate()
        header = StudyHeader()
        if with_phi:
            header, _ = study_header(session, store, item)
        row = WorklistRow(
            study_instance_uid=item.study_instance_uid,
            score=round(item.score, 1),
            priority=Priority(item.priority or 0).text,
            calls=_ai_calls(stored_findings(item))[:SUMMARY_FINDINGS],
            verified_by=readers.get(item.study_instance_uid, ""),
            has_critical=item.has_critical,
            critical_findings=[str(c) for c in item.critical_findings or []],
            summary=(gate.note if with_phi else gate.analysis)
            if gate.analysis == "not analysed"
            else _findings_summary(item),
            department=item.department,
            patient_age=item.patient_age,
            waiting=waiting_text(item.received_at, now),
            received_at=_iso(item.received_at),
            state=item.state,
            reader=item.reader,
            modality=header.modality,
            patient_name=header.patient_name,
            patient_id=header.patient_id or item.patient_id,
            analysis=gate.analysis,
            gate_note=gate.note,
            review=reviews.get(item.study_instance_uid, ""),
        )
        rows.append(redact_phi(row, viewer))
    return rows


def latest_verdicts(session: Session, study_instance_uid: str) -> dict[str, Feedback]:
    """The newest feedback row per finding of a study."""
    rows = session.scalars(
        select(Feedback)
        .where(Feedback.study_instance_uid == study_instance_uid)
        .order_by(Feedback.created_at, Feedback.id)
    ).all()
    return {row.finding: row for row in rows}


def _latest_summary(session: Session, item: WorklistItem) -> dict[str, Any]:
    """The stored summary of the study's latest result of the worklist's model."""
    summary = session.scalar(
        select(Result.summary)
        .where(
            Result.study_instance_uid == item.study_instance_uid,
            Result.model_name == item.model_name,
            Result.model_version == item.model_version,
        )
        .order_by(Result.id.desc())
        .limit(1)
    )
    return dict(summary or {})


def _model_calibrated(summary: dict[str, Any]) -> bool:
    """False when the study's latest result came from an uncalibrated onboarded model."""
    instances = summary.get("instances") or []
    return all(
        (entry.get("model") or {}).get("calibrated", True) is not False
        for entry in instances
        if isinstance(entry, dict)
    )


def _model_warnings(summary: dict[str, Any]) -> list[str]:
    """The warnings of the study's latest result (each once, in their order)."""
    found: list[str] = []
    for entry in summary.get("instances") or []:
        if isinstance(entry, dict):
            for warning in entry.get("warnings") or []:
                if str(warning) not in found:
                    found.append(str(warning))
    return found


def study_view(
    session: Session,
    store: ObjectStore,
    item: WorklistItem,
    viewer: Principal,
    *,
    now: datetime,
) -> dict[str, Any]:
    """The study page's content, redacted for ``viewer``."""
    header = StudyHeader()
    if viewer.can(Permission.VIEW_PHI):
        header, _ = study_header(session, store, item)
    else:  # the description fields are not identifying; read them without the name
        full, _ = study_header(session, store, item)
        header = StudyHeader(
            study_description=full.study_description,
            modality=full.modality,
            body_part=full.body_part,
            view_position=full.view_position,
        )
    verdicts = latest_verdicts(session, item.study_instance_uid)
    critical = {str(c) for c in item.critical_findings or []}
    stored = sorted(stored_findings(item), key=lambda f: -f.probability)
    findings = [
        FindingView(
            label=f.label,
            probability=f.probability,
            threshold=f.known_threshold,
            positive=f.positive,
            threshold_proximity=f.threshold_proximity or 0.0,
            critical=f.label in critical,
            decision=f.decision.value,
            decision_text=decision_text(f.decision),
            verdict=verdicts[f.label].verdict if f.label in verdicts else None,
            verdict_by=verdicts[f.label].reader if f.label in verdicts else None,
            **f.trust_dict(),
        )
        for f in stored
    ]
    breakdown = [
        ScoreTermView(
            name=str(t.get("name", "")),
            contribution=float(t.get("contribution", 0.0)),
            detail=str(t.get("detail", "")),
        )
        for t in item.breakdown or []
    ]
    images = len(study_instances(session, item.study_instance_uid))
    purged = session.scalar(
        select(Study.images_purged_at).where(Study.study_instance_uid == item.study_instance_uid)
    )
    gate = study_gates(session, [item]).get(item.study_instance_uid) or StudyGate()
    summary = _latest_summary(session, item)
    warnings = _model_warnings(summary)
    view = StudyView(
        study_instance_uid=item.study_instance_uid,
        score=round(item.score, 1),
        has_critical=item.has_critical,
        critical_findings=sorted(critical),
        department=item.department,
        patient_age=item.patient_age,
        waiting=waiting_text(item.received_at, now),
        received_at=_iso(item.received_at),
        state=item.state,
        reader=item.reader,
        model_name=item.model_name,
        model_version=item.model_version,
        model_calibrated=_model_calibrated(summary),
        calibration_note=calibration_statement(summary.get("calibration")),
        findings=findings,
        breakdown=breakdown,
        images=images,
        modality=header.modality,
        body_part=header.body_part,
        view_position=header.view_position,
        study_description=header.study_description,
        study_date=header.study_date,
        patient_name=header.patient_name,
        patient_id=header.patient_id or item.patient_id,
        patient_birth_date=header.patient_birth_date,
        patient_sex=header.patient_sex,
        accession_number=header.accession_number,
        analysis=gate.analysis,
        gate_note=gate.note,
        images_purged_on=purged.date().isoformat() if purged is not None else "",
        model_warnings=[w for w in warnings if is_generated_warning(w)],
        other_warnings=[w for w in warnings if not is_generated_warning(w)],
    )
    return redact_phi(view, viewer)


class AlertRow(BaseModel):
    """One alert on the alerts page: the study's critical findings and the loop's state.

    The patient's name and ID are PHI fields, removed for roles without ``view_phi``.
    """

    id: int
    study_instance_uid: str
    finding: str
    probability: float
    threshold: float
    department: str
    score: float
    state: str
    level: int
    raised_at: str
    waiting: str
    duplicates: int
    acknowledged_by: str | None
    acknowledged_at: str
    calls: list[AiCall] = []
    verified_by: str = ""
    next_escalation_at: str = ""
    next_escalation_in: str = ""
    communicated_to: str = ""
    note: str = ""
    closed_by: str = ""
    closed_at: str = ""
    patient_name: str = ""
    patient_id: str = ""


def _until(moment: datetime, now: datetime) -> str:
    """``"in 12 min"``, or ``"due"`` once it has passed."""
    if moment <= now:
        return "due"
    return "in " + waiting_text(now, moment)


def alert_rows(
    session: Session,
    store: ObjectStore,
    alerts: list[Alert],
    viewer: Principal,
    settings: AlertSettings,
    *,
    now: datetime,
) -> list[dict[str, Any]]:
    """Alerts as page rows, redacted for ``viewer``.

    Each row lists every critical finding of the study's alert with the model's
    decision for it, whether a reader has confirmed the study yet, the escalation
    state and, once acknowledged, who was told.
    """
    with_phi = viewer.can(Permission.VIEW_PHI)
    uids = sorted({a.study_instance_uid for a in alerts})
    items = {
        i.study_instance_uid: i
        for i in session.scalars(
            select(WorklistItem).where(WorklistItem.study_instance_uid.in_(uids))
        ).all()
    }
    readers = study_readers(session, uids)
    rows: list[dict[str, Any]] = []
    for a in alerts:
        item = items.get(a.study_instance_uid)
        model = {f.label: f for f in stored_findings(item)} if item is not None else {}
        calls: list[AiCall] = []
        listed = alert_findings(session, a) or [
            AlertFinding(finding=a.finding, probability=a.probability, threshold=a.threshold)
        ]
        for row in listed:
            known = model.get(row.finding)
            decision = known.decision if known is not None else Decision.POSITIVE
            calls.append(
                AiCall(
                    label=row.finding,
                    probability=round(row.probability, 2),
                    decision=decision.value,
                    text=decision_text(decision),
                )
            )
        notes = {n.event: n for n in alert_notes(session, a)}
        told = notes.get(AlertEvent.ACKNOWLEDGED.value)
        closed = notes.get(AlertEvent.CLOSED.value)
        due = next_escalation_at(a, settings)
        header = StudyHeader()
        if with_phi and item is not None:
            header, _ = study_header(session, store, item)
        view = AlertRow(
            id=a.id,
            study_instance_uid=a.study_instance_uid,
            finding=a.finding,
            probability=a.probability,
            threshold=a.threshold,
            department=a.department,
            score=round(a.score, 1),
            state=a.state,
            level=a.level,
            raised_at=_iso(a.raised_at),
            waiting=waiting_text(a.raised_at, now),
            duplicates=a.duplicates,
            acknowledged_by=a.acknowledged_by,
            acknowledged_at=_iso(a.acknowledged_at),
            calls=calls,
            verified_by=readers.get(a.study_instance_uid, ""),
            next_escalation_at=_iso(due),
            next_escalation_in=_until(due, now) if due is not None else "",
            communicated_to=told.communicated_to if told else "",
            note=told.note if told else "",
            closed_by=closed.actor if closed else "",
            closed_at=_iso(closed.created_at) if closed else "",
            patient_name=header.patient_name,
            patient_id=header.patient_id or (item.patient_id if item is not None else ""),
        )
        rows.append(redact_phi(view, viewer))
    return rows


class Pager(BaseModel):
    """Where a long table's page is: limit, offset, total, and the neighbouring pages."""

    limit: int
    offset: int
    total: int

    @classmethod
    def of(cls, params: Mapping[str, str], total: int, *, default: int, most: int) -> Pager:
        """The page the query string asks for (``limit``, ``offset``), kept in range."""
        try:
            limit = int(params.get("limit", default))
        except ValueError:
            limit = default
        try:
            offset = int(params.get("offset", 0))
        except ValueError:
            offset = 0
        limit = max(1, min(limit, most))
        offset = max(0, min(offset, max(total - 1, 0)))
        return cls(limit=limit, offset=offset, total=total)

    @property
    def first(self) -> int:
        """The 1-based number of the first row shown (0 when none)."""
        return self.offset + 1 if self.total else 0

    @property
    def last(self) -> int:
        """The 1-based number of the last row shown."""
        return min(self.offset + self.limit, self.total)

    @property
    def previous_offset(self) -> int | None:
        """The previous page's offset; ``None`` on the first page."""
        return max(self.offset - self.limit, 0) if self.offset > 0 else None

    @property
    def next_offset(self) -> int | None:
        """The next page's offset; ``None`` on the last page."""
        return self.offset + self.limit if self.offset + self.limit < self.total else None


class JobRow(BaseModel):
    """One job on the admin page."""

    id: int
    study_instance_uid: str
    kind: str
    model: str
    destination: str
    state: str
    attempts: int
    max_attempts: int
    error: str
    updated_at: str
    requeueable: bool


def job_rows(jobs: list[Job]) -> list[JobRow]:
    """Jobs as page rows; failed and dead-lettered ones can be requeued."""
    return [
        JobRow(
            id=j.id,
            study_instance_uid=j.study_instance_uid,
            kind=j.kind,
            model=f"{j.model_name} {j.model_version}".strip(),
            destination=j.destination,
            state=j.state,
            attempts=j.attempts,
            max_attempts=j.max_attempts,
            error=(j.error or "")[:400],
            updated_at=_iso(j.updated_at),
            requeueable=j.state in (JobState.DEAD_LETTERED.value, JobState.FAILED.value),
        )
        for j in jobs
    ]


def overlay_artifacts(
    session: Session, study_instance_uid: str
) -> list[tuple[Result, dict[str, Any]]]:
    """The stored Secondary Capture overlays of a study's results, newest result first."""
    results = session.scalars(
        select(Result)
        .where(Result.study_instance_uid == study_instance_uid)
        .order_by(Result.id.desc())
    ).all()
    found: list[tuple[Result, dict[str, Any]]] = []
    for result in results:
        for artifact in result.artifacts or []:
            if str(artifact.get("sop_class_uid", "")).startswith(SECONDARY_CAPTURE_PREFIX):
                found.append((result, dict(artifact)))
    return found


#: Secondary Capture Image Storage and its multi-frame variants.
SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"


__all__ = [
    "DECISION_TEXT",
    "SECONDARY_CAPTURE_PREFIX",
    "UNVERIFIED",
    "AiCall",
    "AlertRow",
    "FindingView",
    "JobRow",
    "Pager",
    "ScoreTermView",
    "StudyHeader",
    "StudyView",
    "WorklistRow",
    "alert_rows",
    "decision_text",
    "job_rows",
    "latest_verdicts",
    "overlay_artifacts",
    "study_header",
    "study_instances",
    "study_readers",
    "study_view",
    "waiting_text",
    "worklist_rows",
]
