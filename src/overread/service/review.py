"""The review gate: a reader accepts, edits or rejects AI results before they go out,
and corrects results that went out unverified.

A route with ``review = true`` holds its studies' results: the result is stored,
triaged and alerted (a critical finding raises its alert while the result waits),
and a ``result_reviews`` row says it is *pending*; no export job is queued. A reader
then

* **accepts** it: the SR is rebuilt ``VERIFIED`` (``FINAL``) with the reader as the
  Verifying Observer, and the exports are released (FHIR ``final``, HL7 ``F``);
* **edits** it: the same, with the reader's decisions for the findings they changed
  and their note in the SR, the FHIR report and the ORU;
* **rejects** it: nothing is ever sent; who, when and why are recorded.

Without review the result goes out ``UNVERIFIED`` as soon as it is stored. A reader
who later confirms or changes it sends a correction: a new SR (new SOP Instance UID,
the one sent before in its Predecessor Documents Sequence), FHIR ``final`` (confirmed)
or ``amended`` (changed), an HL7 ``F`` or ``C``. The export jobs that delivered the
old SR go again with the new SR only.

A held result that waits past its route's ``review_timeout_seconds`` raises a
"review overdue" alert through the triage channels (and their escalation); only
``review_on_timeout = "release-unverified"`` releases it unverified. Every step is
audited.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from io import BytesIO
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from overread.audit import AuditAction, record_event
from overread.errors import ServiceError
from overread.results import Decision, ModelRef, Prediction, ResultSummary
from overread.service.config import ReviewTimeout, Route, ServiceConfig
from overread.service.db import (
    Database,
    Instance,
    Job,
    JobKind,
    JobState,
    Result,
    ResultReview,
    ReviewState,
    utcnow,
)
from overread.service.jobs import JobQueue
from overread.service.payloads import (
    DicomExportPayload,
    FhirExportPayload,
    Hl7ExportPayload,
    InferPayload,
    StowExportPayload,
    export_payload,
)
from overread.service.rollout import not_shadow
from overread.service.store import ObjectStore
from overread.service.verification import (
    ReportStatus,
    Verification,
    reader_person_name,
    stored_decisions,
)

logger = logging.getLogger(__name__)

#: Prefixes of export job destinations (DICOM destinations have none).
FHIR_DESTINATION_PREFIX = "fhir:"
HL7_DESTINATION_PREFIX = "hl7:"
STOW_DESTINATION_PREFIX = "stow:"
#: SOP Class UID of the Comprehensive SR each X-ray result carries.
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
#: SOP Class UID of the Comprehensive 3D SR (TID 1500, nodules) of each CT series.
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
#: Key of a result's summary listing the SEGs a reader's negative decision withdrew
#: (not sent; a later positive decision issues them again as new instances).
WITHHELD_KEY = "withheld"
#: The SR classes a result's findings go out in (all reviewed, verified, superseded).
RESULT_SR_CLASSES = frozenset({COMPREHENSIVE_SR, COMPREHENSIVE_3D_SR})
#: SOP Class UID of the Secondary Captures the overlays are.
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: The actor of what the gateway does by itself (time-outs).
REVIEW_ACTOR = "system:overread-review"


class ReviewAction(StrEnum):
    """What a reader does with a result."""

    ACCEPT = "accept"
    EDIT = "edit"
    REJECT = "reject"


class ReviewError(ServiceError):
    """A review the gateway cannot do (no such result, nothing to review)."""


class ReviewConflictError(ReviewError):
    """The result is not in a state this action applies to (already rejected,
    already verified, reviewed by someone else meanwhile)."""


class ReviewStaleError(ReviewConflictError):
    """The study's results are no longer those the reader saw (a new result, a
    re-read, another reader's review): the verdict is not applied to any of them."""


def result_version(result: Result, review: ResultReview | None) -> str:
    """What a reader saw of one result, as a short token: it changes when the result
    is re-read (rewritten in place), re-verified, rejected or released, and differs
    between two results that happen to share an id."""
    parts = [
        str(result.id),
        str(result.job_id),
        result.created_at.isoformat() if result.created_at else "",
        str(next((a.get("sop_instance_uid") for a in result.artifacts or [] if a), "")),
        "" if review is None else f"{review.id}:{review.state}:{review.version or 0}",
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ReviewRequest:
    """A reader's action on a study's result.

    ``seen``: the study's results as the reader saw them, result id to
    :func:`result_version`; the verdict applies only while the study's results are
    still exactly these (a new result, a re-read or another reader's review since
    refuses it). ``decisions`` (edit): the reader's decision per finding label;
    ``note``: free text kept with the verification; ``reason``: why a result is
    rejected.
    """

    action: ReviewAction
    seen: Mapping[int, str] = field(default_factory=dict)
    decisions: Mapping[str, Decision] = field(default_factory=dict)
    note: str = ""
    reason: str = ""


@dataclass(frozen=True)
class Reader:
    """Who acts: the signed-in user's name and role."""

    username: str
    role: str = ""


@dataclass(frozen=True)
class ReviewOutcome:
    """What a review did to one result."""

    study_instance_uid: str
    result_id: int
    state: ReviewState
    report_status: ReportStatus
    sr_sop_instance_uid: str | None
    superseded: tuple[str, ...]
    exports: int

    def to_dict(self) -> dict[str, Any]:
        """The JSON the REST API answers with."""
        return {
            "study_instance_uid": self.study_instance_uid,
            "result_id": self.result_id,
            "state": self.state.value,
            "report_status": self.report_status.value,
            "sr_sop_instance_uid": self.sr_sop_instance_uid,
            "superseded": list(self.superseded),
            "exports": self.exports,
        }


def reviewing_routes(config: ServiceConfig, route_names: str) -> list[Route]:
    """The routes among a job's (``"a,b"``) that require review."""
    names = {n for n in route_names.split(",") if n}
    return [r for r in config.routes if r.name in names and r.review]


def hold_result(
    session: Session,
    result: Result,
    routes: Sequence[Route],
    *,
    now: datetime,
    actor: str,
) -> ResultReview:
    """Hold a just-stored result for review (its exports are not queued): a pending
    review row, due after the shortest of the routes' time-outs; audited."""
    timeouts = [r.review_timeout_seconds for r in routes if r.review_timeout_seconds]
    due = now + timedelta(seconds=min(timeouts)) if timeouts else None
    review = session.scalar(select(ResultReview).where(ResultReview.result_id == result.id))
    if review is None:
        review = ResultReview(result_id=result.id, created_at=now)
        session.add(review)
    review.study_instance_uid = result.study_instance_uid
    review.route = ",".join(r.name for r in routes)[:128]
    review.state = ReviewState.PENDING.value
    review.held = True
    review.report_status = ReportStatus.PRELIMINARY.value
    review.due_at = due
    review.escalated_at = None
    review.decisions = {}
    review.superseded = review.superseded or []
    review.updated_at = now
    session.flush()
    record_event(
        session,
        actor=actor,
        role="service",
        action=AuditAction.REVIEW_HOLD,
        object_uids=[result.study_instance_uid],
        details={
            "result_id": result.id,
            "routes": [r.name for r in routes],
            "due_at": None if due is None else due.isoformat(),
        },
    )
    return review


#: Review states of a result whose objects went out (or were queued to): verified by a
#: reader, or released unverified after its time-out. A result without a review row
#: went out unverified as soon as it was stored.
SENT_STATES = frozenset(
    {ReviewState.ACCEPTED.value, ReviewState.EDITED.value, ReviewState.RELEASED.value}
)


def went_out(review: ResultReview | None) -> bool:
    """Whether a result's SRs went out: no review row (never held), or a review that
    verified or released it; a pending or rejected result's SR never did."""
    return review is None or review.state in SENT_STATES


def sent_predecessors(
    result: Result, review: ResultReview | None, *, current: bool = True
) -> list[dict[str, Any]]:
    """The SRs that a new SR of ``result`` supersedes: those that went out before it,
    oldest first, each once.

    They are the SRs of earlier reads of the study that went out (the result's
    ``superseded``, kept by the re-read that made it), the SRs earlier corrections
    superseded (its review's ``superseded``) and, with ``current``, the result's own
    SRs when they went out (:func:`went_out`). An SR that was held or rejected never
    reached anyone and is never named. Both the X-ray and the CT outputs take their
    Predecessor Documents from here."""
    chain: list[dict[str, Any]] = [dict(r) for r in (result.summary or {}).get("superseded") or ()]
    if review is not None:
        chain.extend(dict(r) for r in review.superseded or ())
    if current and went_out(review):
        chain.extend(_reference(sr) for sr in _sr_entries(result.artifacts or []))
    seen: set[str] = set()
    unique: list[dict[str, Any]] = []
    for reference in chain:
        uid = str(reference.get("sop_instance_uid") or "")
        if uid and uid not in seen:
            seen.add(uid)
            unique.append(reference)
    return unique


def reopen_review(session: Session, result: Result, *, now: datetime, actor: str) -> bool:
    """Before a re-read replaces ``result`` in place: a review that verified or released
    it no longer speaks for the new read, which starts unreviewed (preliminary, no
    reader decisions, an UNVERIFIED SR; a route that requires review holds it again).
    The review row is removed and the step audited; returns whether there was one.
    A pending or rejected review is left to the hold that follows."""
    review = session.scalar(select(ResultReview).where(ResultReview.result_id == result.id))
    if review is None or review.state not in SENT_STATES:
        return False
    record_event(
        session,
        actor=actor,
        role="service",
        action=AuditAction.REVIEW_REOPEN,
        object_uids=[result.study_instance_uid],
        details={
            "result_id": result.id,
            "previous_state": review.state,
            "previous_reviewer": review.reviewer or "",
            "previous_report_status": review.report_status,
            "at": now.isoformat(),
        },
    )
    session.delete(review)
    session.flush()
    return True


def held(session: Session, result_id: int) -> bool:
    """Whether a result's exports are held (pending review, or rejected)."""
    state = session.scalar(select(ResultReview.state).where(ResultReview.result_id == result_id))
    return state in (ReviewState.PENDING.value, ReviewState.REJECTED.value)


#: Of a study's results' review states, the one that speaks for the study.
_STUDY_STATE_ORDER = (
    ReviewState.PENDING.value,
    ReviewState.REJECTED.value,
    ReviewState.RELEASED.value,
    ReviewState.EDITED.value,
    ReviewState.ACCEPTED.value,
)
#: The review state of a study none of whose results was held or verified.
UNREVIEWED = "unreviewed"


def study_review_states(session: Session, study_uids: Sequence[str]) -> dict[str, str]:
    """Each study's review state for the worklist: ``pending`` while any result waits
    for a reader, else ``rejected``, ``released``, ``edited``, ``accepted``; studies
    without a review are ``unreviewed`` (their results went out unverified)."""
    if not study_uids:
        return {}
    found: dict[str, set[str]] = {}
    for uid, state in session.execute(
        select(ResultReview.study_instance_uid, ResultReview.state).where(
            ResultReview.study_instance_uid.in_(list(study_uids))
        )
    ):
        found.setdefault(str(uid), set()).add(str(state))
    return {
        uid: next((s for s in _STUDY_STATE_ORDER if s in found.get(uid, set())), UNREVIEWED)
        for uid in study_uids
    }


def queue_exports(
    session: Session,
    queue: JobQueue,
    config: ServiceConfig,
    *,
    job: Job,
    result: Result,
    destinations: Sequence[Any],
    analysed: bool,
    dicom_jobs: list[int] | None = None,
) -> int:
    """Queue one export job per destination of a result (FHIR and HL7 for an analysed
    study, STOW-RS and DICOM when it has objects to send); return how many are new.
    Existing export jobs of the result are left as they are. ``dicom_jobs``, when
    given, receives the ids of the new DICOM exports (the worker sends them at once)."""
    has_artifacts = bool(result.artifacts)
    common: dict[str, Any] = {
        "study_instance_uid": job.study_instance_uid,
        "model_name": job.model_name,
        "model_version": job.model_version,
        "kind": JobKind.EXPORT,
        "route": job.route,
        "priority": job.priority,
    }
    created = 0
    for endpoint in config.fhir_endpoints if analysed else ():
        _, new = queue.enqueue(
            session,
            destination=f"{FHIR_DESTINATION_PREFIX}{endpoint.name}",
            payload=FhirExportPayload(endpoint.name, result.id).to_dict(),
            **common,
        )
        created += new
    for hl7 in config.hl7_endpoints if analysed else ():
        _, new = queue.enqueue(
            session,
            destination=f"{HL7_DESTINATION_PREFIX}{hl7.name}",
            payload=Hl7ExportPayload(hl7.name, result.id).to_dict(),
            **common,
        )
        created += new
    for stow in config.stow_endpoints if has_artifacts else ():
        _, new = queue.enqueue(
            session,
            destination=f"{STOW_DESTINATION_PREFIX}{stow.name}",
            payload=StowExportPayload(stow.name, result.id).to_dict(),
            **common,
        )
        created += new
    for dest in destinations if has_artifacts else ():
        job_id, new = queue.enqueue(
            session,
            destination=dest.name,
            payload=DicomExportPayload(dest, result.id).to_dict(),
            **common,
        )
        created += new
        if new and dicom_jobs is not None:
            dicom_jobs.append(job_id)
    return created


def _sr_entries(artifacts: Sequence[Any]) -> list[dict[str, Any]]:
    """A result's SRs: the X-ray's one, or one Comprehensive 3D SR per CT series."""
    return [a for a in artifacts if a.get("sop_class_uid") in RESULT_SR_CLASSES]


def _sr_entry(artifacts: Sequence[Any]) -> dict[str, Any] | None:
    return next(iter(_sr_entries(artifacts)), None)


class ReviewDesk:
    """Carries out readers' reviews and the review time-outs on the gateway's stores.

    Parameters
    ----------
    config
        The service configuration (routes, destinations, endpoints, organisation).
    database, store, queue
        Where results, their objects and the export jobs are.
    """

    def __init__(
        self, config: ServiceConfig, database: Database, store: ObjectStore, queue: JobQueue
    ) -> None:
        self.config = config
        self.database = database
        self.store = store
        self.queue = queue

    # -- looking --------------------------------------------------------------------
    def results_of(self, study_instance_uid: str) -> list[tuple[Result, ResultReview | None]]:
        """The study's results, newest first, each with its review row (if any); a
        shadow model's results are never reviewed (nor sent) and are left out, and so
        are a rolled-back canary's (not sent; the study went to the active version)."""
        from overread.service.rollout import RolloutStore

        with self.database.session() as session:
            rows = session.scalars(
                select(Result)
                .where(Result.study_instance_uid == study_instance_uid, not_shadow())
                .order_by(Result.created_at.desc(), Result.id.desc())
            ).all()
            rolled_back = RolloutStore(self.database, critical={}).rolled_back_result_ids(
                session, study_instance_uid
            )
            rows = [row for row in rows if row.id not in rolled_back]
            reviews = {
                r.result_id: r
                for r in session.scalars(
                    select(ResultReview).where(
                        ResultReview.study_instance_uid == study_instance_uid
                    )
                ).all()
            }
            return [(row, reviews.get(row.id)) for row in rows]

    # -- acting ---------------------------------------------------------------------
    def review(
        self, study_instance_uid: str, request: ReviewRequest, reader: Reader
    ) -> list[ReviewOutcome]:
        """Apply a reader's action to every result of the study it applies to.

        A held study: each pending result. A study whose results went out: each
        result that was sent (accept/edit send a correction; reject is refused).
        The request names the results the reader saw (``seen``); the action is
        applied only when the study's results are exactly those, in those versions.

        Raises
        ------
        ReviewError
            If the study has no stored result, the request names no result, or an
            edit names an unknown finding.
        ReviewStaleError
            If the study's results changed since the reader saw them.
        ReviewConflictError
            If no result of the study is in a state the action applies to.
        """
        if not reader.username:
            raise ReviewError("a review needs the name of the reader")
        results = self.results_of(study_instance_uid)
        if not results:
            raise ReviewError(f"study {study_instance_uid} has no stored result")
        if not request.seen:
            raise ReviewError(
                "a review names the results it is about (their result_id and version "
                "as GET /api/studies/{uid}/review gives them)"
            )
        stale_reason = _stale(results, request.seen)
        if stale_reason:
            raise ReviewStaleError(
                f"study {study_instance_uid}: its results changed since they were shown "
                f"({stale_reason}); nothing was applied; reload the study and review again"
            )
        pending: list[tuple[Result, ResultReview | None]] = [
            (r, v) for r, v in results if v is not None and v.state == ReviewState.PENDING.value
        ]
        if pending:
            targets = pending
        else:
            # Results already out (never held, released after a time-out, or verified);
            # a study the model did not analyse has nothing to verify.
            targets = [
                (r, v)
                for r, v in results
                if (v is None or v.state != ReviewState.REJECTED.value)
                and ResultSummary.from_dict(r.summary or {}).usable()
            ]
        if not targets:
            raise ReviewConflictError(
                f"study {study_instance_uid}: its results were rejected; nothing to review"
            )
        # A study-level edit: each decision goes to the results that have its label.
        per_result = _split_decisions(study_instance_uid, targets, request)
        outcomes: list[ReviewOutcome] = []
        # One transaction for every target: a result that cannot take the verdict (a
        # conflict, a stale read) leaves the others as they were, as the error says.
        with self.database.session() as session:
            for (result, review), own in zip(targets, per_result, strict=True):
                if own is None:
                    continue  # verified already, and the edit is about other findings
                if own.action is ReviewAction.REJECT:
                    if review is None or review.state != ReviewState.PENDING.value:
                        raise ReviewConflictError(
                            f"study {study_instance_uid}: result {result.id} already went "
                            "out; edit it to send a correction instead"
                        )
                    outcomes.append(self._reject(result, review, own, reader, session))
                else:
                    waiting = review is not None and review.state == ReviewState.PENDING.value
                    outcomes.append(
                        self._verify(result, review, own, reader, session, correction=not waiting)
                    )
        return outcomes

    def _reject(
        self,
        result: Result,
        review: ResultReview,
        request: ReviewRequest,
        reader: Reader,
        session: Session,
    ) -> ReviewOutcome:
        now = utcnow()
        changed = session.execute(
            update(ResultReview)
            .where(
                ResultReview.id == review.id,
                ResultReview.state == ReviewState.PENDING.value,
                ResultReview.version == review.version,
            )
            .values(
                state=ReviewState.REJECTED.value,
                reviewer=reader.username,
                reviewer_role=reader.role,
                reviewed_at=now,
                reason=request.reason or request.note,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise ReviewConflictError(f"result {result.id} was reviewed by someone else meanwhile")
        record_event(
            session,
            actor=reader.username,
            role=reader.role,
            action=AuditAction.REVIEW_REJECT,
            object_uids=[result.study_instance_uid],
            details={
                "result_id": result.id,
                "reason": (request.reason or request.note)[:1000],
            },
        )
        logger.info(
            "study %s: result %d rejected by %s",
            result.study_instance_uid,
            result.id,
            reader.username,
        )
        return ReviewOutcome(
            study_instance_uid=result.study_instance_uid,
            result_id=result.id,
            state=ReviewState.REJECTED,
            report_status=ReportStatus.PRELIMINARY,
            sr_sop_instance_uid=None,
            superseded=(),
            exports=0,
        )

    def _verify(
        self,
        result: Result,
        review: ResultReview | None,
        request: ReviewRequest,
        reader: Reader,
        session: Session,
        *,
        correction: bool,
    ) -> ReviewOutcome:
        """Accept or edit one result: rebuild its SR verified, release or correct (in
        the caller's transaction)."""
        now = utcnow()
        summary = ResultSummary.from_dict(result.summary or {})
        labels = {f.label for _, p in summary.usable() for f in p.findings}
        unknown = sorted(set(request.decisions) - labels)
        if unknown:
            raise ReviewError(
                f"result {result.id} has no finding {', '.join(map(repr, unknown))} "
                f"(it has: {', '.join(sorted(labels))})"
            )
        if not summary.usable():
            raise ReviewConflictError(
                f"result {result.id}: the study was not analysed; there is nothing to verify"
            )
        was_verified = review is not None and review.state in (
            ReviewState.ACCEPTED.value,
            ReviewState.EDITED.value,
        )
        previous = stored_decisions(review.decisions or {}) if was_verified and review else {}
        decisions = dict(previous)
        if request.action is ReviewAction.EDIT:
            decisions.update(request.decisions)
        # Only what differs from the model's call is a change (for the study as a whole).
        model_calls = _study_decisions(summary)
        decisions = {k: v for k, v in decisions.items() if model_calls.get(k) is not v}
        if correction:
            if was_verified and request.action is ReviewAction.ACCEPT:
                raise ReviewConflictError(
                    f"result {result.id} is verified already; edit it to correct it"
                )
            changed = decisions != previous or (
                was_verified and request.note and request.note != (review.note if review else "")
            )
            if was_verified and not changed:
                raise ReviewConflictError(
                    f"result {result.id} is verified already with these findings and note"
                )
            amends = bool(changed and (decisions or was_verified))
            status = ReportStatus.AMENDED if amends else ReportStatus.FINAL
        else:
            status = ReportStatus.FINAL
        edited = request.action is ReviewAction.EDIT
        state = ReviewState.EDITED if (edited or decisions) else ReviewState.ACCEPTED
        artifacts = list(result.artifacts or [])
        old_sr = _sr_entry(artifacts)
        organization = self.config.verifying_organization or ""
        headers = self._headers(result, summary)
        if not organization:
            organization = (
                next(
                    (
                        str(h.get("InstitutionName", ""))
                        for h in headers.values()
                        if h.get("InstitutionName")
                    ),
                    "",
                )
                or self.config.ae_title
            )
        verification = Verification(
            status=status,
            observer_name=reader_person_name(reader.username),
            organization=organization[:64],
            verified_at=now,
            decisions=decisions,
            note=request.note,
        )
        superseded = list(review.superseded or []) if review is not None else []
        # What went out before: what a correction or a reviewed re-read supersedes.
        earlier = sent_predecessors(result, review, current=False)
        new_sr: dict[str, Any] | None = None
        if old_sr is not None and old_sr.get("sop_class_uid") == COMPREHENSIVE_SR:
            predecessors = [*earlier, _reference(old_sr)] if correction else earlier
            new_sr = self._verified_sr(result, summary, headers, verification, old_sr, predecessors)
            artifacts = [new_sr if a is old_sr else a for a in artifacts]
            if correction:
                superseded.append(_reference(old_sr))
        new_srs = [] if new_sr is None else [new_sr]
        # A CT result: each series' Comprehensive 3D SR rebuilt verified (its SEG kept).
        volume_srs = [a for a in artifacts if a.get("sop_class_uid") == COMPREHENSIVE_3D_SR]
        # SEGs withdrawn by an earlier negative decision, kept (not sent) for a later
        # positive one to issue again.
        held_back = [dict(w) for w in (result.summary or {}).get(WITHHELD_KEY) or ()]
        before = [w.get("sop_instance_uid") for w in held_back]
        for old in volume_srs:
            rebuilt, withheld, restored = self._verified_volume_sr(
                result,
                summary,
                verification,
                old,
                artifacts,
                [*earlier, _reference(old)] if correction else earlier,
                held_back,
            )
            # A SEG showing nodules the reader decided negative is not sent (again).
            for a in artifacts:
                if a.get("sop_instance_uid") in withheld:
                    held_back.append(
                        {**_reference(a), "source_series": withheld[a["sop_instance_uid"]]}
                    )
            artifacts = [
                rebuilt if a is old else a
                for a in artifacts
                if a.get("sop_instance_uid") not in withheld
            ]
            if restored is not None:
                # Positive again: the SEG goes out again as a new instance.
                seg_entry, replaced = restored
                held_back = [w for w in held_back if w.get("sop_instance_uid") != replaced]
                artifacts.append(seg_entry)
            new_srs.append(rebuilt)
            if correction:
                superseded.append(_reference(old))
        new_sr = next(iter(new_srs), None)
        # The PDF report and the overlays state the verification too (rebuilt, new UIDs).
        artifacts = self._verified_documents(result, summary, headers, verification, artifacts)
        # A radiograph's SEG (a planar package's, with no SR of its own) of a finding the
        # reader decided negative is not sent (again) either; a SEG that went out and is
        # withdrawn now is rejected at the destinations by a KOS sent after it.
        artifacts, held_back = self._withdraw_planar_segs(
            result, verification, artifacts, held_back
        )
        rejection = (
            self._rejection_note(result, reader, verification, artifacts) if correction else None
        )
        if rejection is not None:
            artifacts.append(rejection[0])
        row = session.get(Result, result.id)
        if row is None:
            raise ReviewError(f"result {result.id} no longer exists")
        if row.created_at != result.created_at or row.job_id != result.job_id:
            raise ReviewStaleError(
                f"result {result.id} was read again meanwhile; nothing was applied; "
                "reload the study and review again"
            )
        # Locked (PostgreSQL): a second reader acting at once waits, then sees this one.
        current = session.scalar(
            select(ResultReview).where(ResultReview.result_id == result.id).with_for_update()
        )
        expected = None if review is None else review.state
        if (None if current is None else current.state) != expected or (
            current is not None and review is not None and current.version != review.version
        ):
            raise ReviewConflictError(f"result {result.id} was reviewed by someone else meanwhile")
        if current is None:
            current = ResultReview(
                result_id=result.id,
                study_instance_uid=result.study_instance_uid,
                held=False,
                created_at=now,
                released_at=result.created_at,
            )
            session.add(current)
        current.state = state.value
        current.report_status = status.value
        current.reviewer = reader.username
        current.reviewer_role = reader.role
        current.organization = organization[:64]
        current.reviewed_at = now
        current.decisions = {k: v.value for k, v in decisions.items()}
        current.note = request.note
        current.superseded = superseded
        current.version = (current.version or 0) + 1
        current.updated_at = now
        row.artifacts = artifacts
        if [w.get("sop_instance_uid") for w in held_back] != before:
            kept = {k: v for k, v in (row.summary or {}).items() if k != WITHHELD_KEY}
            row.summary = {**kept, WITHHELD_KEY: held_back} if held_back else kept
        if correction:
            exports = self._requeue_corrections(session, row, new_sr)
        else:
            current.released_at = now
            exports = self._release(session, row)
        session.flush()
        record_event(
            session,
            actor=reader.username,
            role=reader.role,
            action=AuditAction.REVIEW_EDIT if edited else AuditAction.REVIEW_ACCEPT,
            object_uids=[
                result.study_instance_uid,
                *(str(sr["sop_instance_uid"]) for sr in new_srs),
            ],
            details={
                "result_id": result.id,
                "report_status": status.value,
                "correction": correction,
                "decisions": {k: v.value for k, v in request.decisions.items()},
                "note": request.note[:1000],
                "sr": None if new_sr is None else new_sr["sop_instance_uid"],
                "srs": [str(sr["sop_instance_uid"]) for sr in new_srs],
                "superseded": [s["sop_instance_uid"] for s in superseded],
                "exports": exports,
            },
        )
        if rejection is not None:
            note, rejected = rejection
            record_event(
                session,
                actor=reader.username,
                role=reader.role,
                action=AuditAction.REVIEW_WITHDRAW,
                object_uids=[result.study_instance_uid, str(note["sop_instance_uid"]), *rejected],
                details={
                    "result_id": result.id,
                    "rejection_note": note["sop_instance_uid"],
                    "title": "113001 Rejected for Quality Reasons",
                    "rejected": rejected,
                    "exports": exports,
                },
            )
        logger.info(
            "study %s: result %d %s by %s (%s), %d export(s)",
            result.study_instance_uid,
            result.id,
            state.value,
            reader.username,
            status.value,
            exports,
        )
        return ReviewOutcome(
            study_instance_uid=result.study_instance_uid,
            result_id=result.id,
            state=state,
            report_status=status,
            sr_sop_instance_uid=None if new_sr is None else str(new_sr["sop_instance_uid"]),
            superseded=tuple(str(s["sop_instance_uid"]) for s in superseded),
            exports=exports,
        )

    # -- building ---------------------------------------------------------------------
    def _headers(self, result: Result, summary: ResultSummary) -> dict[str, Dataset]:
        """The stored headers of the result's images, by SOP Instance UID."""
        from overread.imaging import read_dataset

        wanted = set(summary.sop_instance_uids)
        with self.database.session() as session:
            rows = session.scalars(
                select(Instance).where(Instance.study_instance_uid == result.study_instance_uid)
            ).all()
            keys = {r.sop_instance_uid: r.object_key for r in rows if r.sop_instance_uid in wanted}
        headers: dict[str, Dataset] = {}
        for uid, key in keys.items():
            try:
                headers[uid] = read_dataset(self.store.path(key), pixels=False)
            except Exception as exc:  # a lost image cannot be referenced; say which
                raise ReviewError(f"stored image {uid} cannot be read: {exc}") from exc
        return headers

    def _verified_sr(
        self,
        result: Result,
        summary: ResultSummary,
        headers: Mapping[str, Dataset],
        verification: Verification,
        old_sr: Mapping[str, Any],
        predecessors: Sequence[Mapping[str, Any]],
    ) -> dict[str, Any]:
        """Build, store and describe the result's SR as the reader verified it."""
        from overread.service.outputs import build_study_sr

        model = ModelRef(name=str(result.model_name), version=str(result.model_version))
        readings: list[tuple[Prediction, Dataset]] = []
        for index, prediction in summary.usable():
            uid = summary.sop_instance_uid(index)
            if uid not in headers:
                raise ReviewError(f"result {result.id}: image {uid} is no longer stored")
            own = prediction.model
            prediction.model = ModelRef(
                name=own.name or model.name,
                version=own.version or model.version,
                sha256=own.sha256 or model.sha256,
            )
            readings.append((prediction, headers[uid]))
        left_out = [
            p for p in summary.instances if not p.ok and p.gate is not None and p.gate.refused
        ]
        previous = self._stored_header(old_sr)
        sr = build_study_sr(
            readings,
            not_analysed=left_out,
            verification=verification,
            calibration=summary.calibration,
            predecessors=[
                self._stored_header(p) or _reference_dataset(p, result.study_instance_uid)
                for p in predecessors
            ],
            series_instance_uid=None if previous is None else str(previous.SeriesInstanceUID),
            instance_number=1 + (0 if previous is None else int(previous.InstanceNumber or 1)),
        )
        buffer = BytesIO()
        pydicom.dcmwrite(buffer, sr, enforce_file_format=True)
        stored = self.store.put(buffer.getvalue())
        return {
            "key": stored.key,
            "sop_class_uid": str(sr.SOPClassUID),
            "sop_instance_uid": str(sr.SOPInstanceUID),
            "series_instance_uid": str(sr.SeriesInstanceUID),
            "modality": "SR",
        }

    def _verified_volume_sr(
        self,
        result: Result,
        summary: ResultSummary,
        verification: Verification,
        old_sr: Mapping[str, Any],
        artifacts: Sequence[Mapping[str, Any]],
        superseding: Sequence[Mapping[str, Any]],
        held_back: Sequence[Mapping[str, Any]] = (),
    ) -> tuple[dict[str, Any], dict[str, list[str]], tuple[dict[str, Any], str] | None]:
        """Build, store and describe one CT series' Comprehensive 3D SR as the reader
        verified it: the same nodules and measurements, the same source slices and SEG
        segments as the SR it replaces (read from the stored objects), in that SR's
        series with the next Instance Number. The new SR supersedes ``superseding``
        (Predecessor Documents Sequence: the SRs that went out, see
        :func:`sent_predecessors`).

        Nodules of a label the reader decided negative are left out of it, and so is
        the SEG that shows them: its SOP Instance UID is returned with the SR, mapped to
        the SR's source series (the SEG is then not sent, nor sent again, but kept).
        When the reader calls them positive again and the SR it replaces has no SEG,
        the SEG withdrawn before for this series (``held_back``) is issued again as a
        new instance (new SOP Instance UID, next Instance Number) and referenced by the
        new SR: returned as (its artifact, the SOP Instance UID it replaces)."""
        from overread.imaging import read_dataset
        from overread.service.outputs.volume import (
            SEGMENTATION,
            build_volume_sr,
            evidence_of,
            reader_withdrawn,
            region_segments,
            source_series,
        )

        previous = self._stored_header(old_sr)
        if previous is None:
            raise ReviewError(
                f"result {result.id}: its SR {old_sr.get('sop_instance_uid')} cannot be read"
            )
        evidence = evidence_of(previous)
        series = source_series(previous)
        slices = [uid for _, cls, uid in evidence if cls != SEGMENTATION]
        seg_uids = {uid for _, cls, uid in evidence if cls == SEGMENTATION}
        with self.database.session() as session:
            rows = session.scalars(
                select(Instance).where(Instance.study_instance_uid == result.study_instance_uid)
            ).all()
            keys = {r.sop_instance_uid: r.object_key for r in rows}
            series_of = {r.sop_instance_uid: r.series_instance_uid for r in rows}
        missing = [uid for uid in slices if uid not in keys]
        if missing or not slices:
            raise ReviewError(
                f"result {result.id}: {len(missing) or 'the'} source slice(s) of its CT SR "
                "are no longer stored"
            )
        try:
            sources = [read_dataset(self.store.path(keys[uid]), pixels=False) for uid in slices]
        except Exception as exc:  # a lost slice cannot be referenced; say so
            raise ReviewError(f"result {result.id}: a source slice cannot be read: {exc}") from exc
        prediction = next(
            (
                p
                for i, p in summary.usable()
                if series_of.get(summary.sop_instance_uid(i)) in series
            ),
            None,
        )
        if prediction is None:
            raise ReviewError(f"result {result.id}: no stored reading of series {sorted(series)}")
        model = ModelRef(name=str(result.model_name), version=str(result.model_version))
        own = prediction.model
        prediction.model = ModelRef(
            name=own.name or model.name,
            version=own.version or model.version,
            sha256=own.sha256 or model.sha256,
        )
        withdrawn = reader_withdrawn(verification.decisions)
        withheld: dict[str, list[str]] = {}
        restored: tuple[dict[str, Any], str] | None = None
        if any(r.label in withdrawn for r in prediction.regions or []):
            withheld = {uid: sorted(series) for uid in seg_uids}
            seg_uids = set()
            seg = None
        elif not seg_uids and prediction.regions:
            seg = None
            earlier_seg = next(
                (w for w in held_back if set(w.get("source_series") or ()) & series), None
            )
            if earlier_seg is not None:
                seg, restored = self._reissued_seg(result, earlier_seg)
        else:
            seg_entry = next((a for a in artifacts if a.get("sop_instance_uid") in seg_uids), None)
            seg = None if seg_entry is None else self._stored_header(seg_entry)
            if seg_uids and seg is None:
                raise ReviewError(
                    f"result {result.id}: the SEG its CT SR references cannot be read"
                )
        # The SRs that went out before (an earlier read's, an earlier correction's, the
        # one it replaces when that went out) of this series.
        predecessors = []
        for reference in superseding:
            if reference.get("sop_instance_uid") == old_sr.get("sop_instance_uid"):
                predecessors.append(previous)
                continue
            header = self._stored_header(reference) if reference.get("key") else None
            if header is not None and source_series(header) and not source_series(header) & series:
                continue  # another series' SR
            predecessors.append(header or _reference_dataset(reference, result.study_instance_uid))
        sr = build_volume_sr(
            prediction,
            sources,
            seg=seg,
            segments=None if seg is None else region_segments(seg, prediction.regions or []),
            series_instance_uid=str(previous.SeriesInstanceUID),
            instance_number=1 + int(previous.get("InstanceNumber") or 1),
            verification=verification,
            predecessors=predecessors,
        )
        return self._store_dataset(sr, "SR"), withheld, restored

    def _reissued_seg(
        self, result: Result, withdrawn: Mapping[str, Any]
    ) -> tuple[Dataset, tuple[dict[str, Any], str]]:
        """A withdrawn SEG issued again: the same segments and frames, in the same series,
        with a new SOP Instance UID and the next Instance Number; stored. Returns it and
        (its artifact, the SOP Instance UID of the SEG it replaces)."""
        try:
            seg = pydicom.dcmread(self.store.path(str(withdrawn["key"])))
        except (KeyError, OSError, pydicom.errors.InvalidDicomError) as exc:
            raise ReviewError(
                f"result {result.id}: the SEG withdrawn before cannot be read: {exc}"
            ) from exc
        uid = generate_uid()
        seg.SOPInstanceUID = uid
        seg.file_meta.MediaStorageSOPInstanceUID = uid
        seg.InstanceNumber = 1 + int(seg.get("InstanceNumber") or 1)
        stamp = utcnow()
        seg.ContentDate = stamp.strftime("%Y%m%d")
        seg.ContentTime = stamp.strftime("%H%M%S")
        entry = self._store_dataset(seg, "SEG")
        return seg, (entry, str(withdrawn.get("sop_instance_uid") or ""))

    def _withdraw_planar_segs(
        self,
        result: Result,
        verification: Verification,
        artifacts: Sequence[dict[str, Any]],
        held_back: Sequence[dict[str, Any]] = (),
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """``artifacts`` less each SEG of a planar (radiograph) segmentation package
        whose segments the reader all decided negative, and the SEGs withheld after
        this decision (``held_back`` with those added, less those issued again).

        Only a segmentation package's SEG (series 9914) is withdrawn, and only when
        every one of its segments is labelled exactly with a finding decided negative
        (the finding's name, as the SEG was built with it): a SEG still showing a
        finding kept is sent. A classifier's SEG (its CAM regions, an explanation of its
        SR's positive findings) is left as it is, and so is a CT result's SEG (its SRs'
        own, see :meth:`_verified_volume_sr`). A planar SEG withdrawn by an earlier
        decision whose findings are no longer all decided negative is issued again
        (a new instance, :meth:`_reissued_seg`) and goes out with the result."""
        from overread.service.outputs.volume import (
            PLANAR_SEG_SERIES_NUMBER,
            SEGMENTATION,
            reader_withdrawn,
        )

        held = [dict(w) for w in held_back]
        if any(a.get("sop_class_uid") == COMPREHENSIVE_3D_SR for a in artifacts):
            return list(artifacts), held
        withdrawn = {label[:64] for label in reader_withdrawn(verification.decisions)}
        kept: list[dict[str, Any]] = []
        newly: list[dict[str, Any]] = []
        for artifact in artifacts:
            if withdrawn and artifact.get("sop_class_uid") == SEGMENTATION:
                header = self._stored_header(artifact)
                if header is None:
                    raise ReviewError(
                        f"the SEG {artifact.get('sop_instance_uid')} cannot be read to withdraw it"
                    )
                package_seg = int(header.get("SeriesNumber") or 0) == PLANAR_SEG_SERIES_NUMBER
                labels = {str(s.get("SegmentLabel", "")) for s in header.get("SegmentSequence", [])}
                if package_seg and labels and labels <= withdrawn:
                    newly.append({**_reference(artifact), "segment_labels": sorted(labels)})
                    continue
            kept.append(artifact)
        still: list[dict[str, Any]] = []
        for entry in held:
            labels = set(entry.get("segment_labels") or ())
            if labels and not labels <= withdrawn:
                _, (seg_entry, _replaced) = self._reissued_seg(result, entry)
                kept.append(seg_entry)
            else:
                still.append(entry)
        return kept, [*still, *newly]

    def _rejection_note(
        self,
        result: Result,
        reader: Reader,
        verification: Verification,
        artifacts: Sequence[Mapping[str, Any]],
    ) -> tuple[dict[str, Any], list[str]] | None:
        """For a result that went out: a KOS "Rejected for Quality Reasons" (IHE IOCM)
        listing its SEGs that the reader's decisions withdrew (in the result before,
        not in ``artifacts``), stored; with their SOP Instance UIDs. ``None`` when none
        was withdrawn."""
        from overread.service.outputs.rejection import build_rejection_note
        from overread.service.outputs.volume import SEGMENTATION, reader_withdrawn

        now = {a.get("sop_instance_uid") for a in artifacts}
        gone = [
            a
            for a in result.artifacts or []
            if a.get("sop_class_uid") == SEGMENTATION and a.get("sop_instance_uid") not in now
        ]
        if not gone:
            return None
        headers = [self._stored_header(a) for a in gone]
        found = [h for h in headers if h is not None]
        if len(found) != len(gone):
            raise ReviewError(f"result {result.id}: a SEG it sent cannot be read to reject it")
        negative = ", ".join(sorted(reader_withdrawn(verification.decisions)))
        reason = f"withdrawn: the reader decided {negative or 'the finding'} negative"
        if verification.note:
            reason += f" ({verification.note})"
        note = build_rejection_note(found, reader=verification.observer_name, reason=reason)
        return self._store_dataset(note, "KO"), [str(a["sop_instance_uid"]) for a in gone]

    def _store_dataset(self, dataset: Dataset, modality: str) -> dict[str, Any]:
        buffer = BytesIO()
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
        stored = self.store.put(buffer.getvalue())
        return {
            "key": stored.key,
            "sop_class_uid": str(dataset.SOPClassUID),
            "sop_instance_uid": str(dataset.SOPInstanceUID),
            "series_instance_uid": str(dataset.SeriesInstanceUID),
            "modality": modality,
        }

    def _verified_documents(
        self,
        result: Result,
        summary: ResultSummary,
        headers: Mapping[str, Dataset],
        verification: Verification,
        artifacts: Sequence[dict[str, Any]],
    ) -> list[dict[str, Any]]:
        """``artifacts`` with the result's overlays and PDF report rebuilt as verified.

        Each overlay is issued again with the verification burned in below it; one
        whose finding the reader decided negative is left out (its caption calls it
        positive or referred). The PDF report is rendered again with the reader's
        decisions, who verified it and when, and the verified overlays as thumbnails,
        flagged ``VERIFIED``. Other objects (the SR, a SEG) are kept as they are."""
        from overread.service.outputs.overlay import overlay_finding, verified_overlay
        from overread.service.outputs.pdf import (
            ENCAPSULATED_PDF_STORAGE,
            OverlayThumbnail,
            ReportContext,
            build_pdf_report,
        )
        from overread.service.outputs.prediction import checked_findings
        from overread.service.outputs.sr import image_label

        if not any(
            a.get("sop_class_uid") in (SECONDARY_CAPTURE, ENCAPSULATED_PDF_STORAGE)
            for a in artifacts
        ):
            return list(artifacts)
        model = ModelRef(name=str(result.model_name), version=str(result.model_version))
        usable = list(summary.usable())
        verified: dict[str, tuple[int, Prediction]] = {}
        for position, (index, prediction) in enumerate(usable):
            own = prediction.model
            prediction.model = ModelRef(
                name=own.name or model.name,
                version=own.version or model.version,
                sha256=own.sha256 or model.sha256,
            )
            verified[summary.sop_instance_uid(index)] = (position, verification.apply(prediction))
        series = generate_uid()
        kept: list[dict[str, Any]] = []
        thumbnails: list[Any] = []
        for artifact in artifacts:
            if artifact.get("sop_class_uid") != SECONDARY_CAPTURE:
                kept.append(artifact)
                continue
            stored = pydicom.dcmread(self.store.path(str(artifact["key"])))
            label = overlay_finding(stored)
            sources = [
                str(r.ReferencedSOPInstanceUID) for r in stored.get("SourceImageSequence", [])
            ]
            found = next((verified[u] for u in sources if u in verified), None)
            if label is None or found is None:
                kept.append(artifact)
                continue
            position, prediction = found
            finding = next((f for f in checked_findings(prediction) if f.label == label), None)
            if finding is None or finding.decision is Decision.NEGATIVE:
                continue  # the reader says there is nothing to show
            overlay = verified_overlay(
                stored,
                label,
                finding.decision,
                verification,
                series_instance_uid=series,
                instance_number=len(thumbnails) + 1,
            )
            kept.append(self._store_dataset(overlay, "OT"))
            source = headers.get(sources[0]) if sources else None
            view = "" if source is None else image_label(source, position, len(usable))
            thumbnails.append(OverlayThumbnail.from_overlay(overlay, finding, view))
        pdf = next((a for a in kept if a.get("sop_class_uid") == ENCAPSULATED_PDF_STORAGE), None)
        if pdf is None:
            return kept
        readings = [
            (prediction, headers[uid])
            for uid, (_, prediction) in verified.items()
            if uid in headers
        ]
        readings += [
            (p, headers[summary.sop_instance_uid(i)])
            for i, p in enumerate(summary.instances)
            if not p.ok
            and p.gate is not None
            and p.gate.refused
            and summary.sop_instance_uid(i) in headers
        ]
        previous = self._stored_header(pdf)
        report = build_pdf_report(
            readings,
            ReportContext(
                card=self._card(model),
                critical=frozenset(self._critical(usable)),
                thumbnails=thumbnails,
                verification=verification,
                calibration=summary.calibration,
            ),
            series_instance_uid=None if previous is None else str(previous.SeriesInstanceUID),
            instance_number=1 + (0 if previous is None else int(previous.InstanceNumber or 1)),
        )
        entry = self._store_dataset(report, "DOC")
        return [entry if a is pdf else a for a in kept]

    def _card(self, model: ModelRef) -> Any:
        """The model card summary of the result's package for the verified report, read
        from the model registry; ``None`` (the report then says "not for diagnosis", as
        when the card is unknown) when the package is no longer there or fails to load."""
        from overread.models.card import ModelCardSummary
        from overread.models.registry import Registry
        from overread.service.runtime import read_signing_key

        try:
            registry = Registry.from_settings()
            key_file = self.config.model_signing_key_file
            if key_file is not None:
                registry = Registry(
                    registry.root,
                    include_bundled=registry.include_bundled,
                    key=read_signing_key(key_file),
                )
            package = registry.load(f"{model.name}@{model.version}")
        except Exception as exc:  # a missing card must not stop the report
            logger.warning(
                "model card of %s %s not available for the verified report: %s",
                model.name,
                model.version,
                exc,
            )
            return None
        return ModelCardSummary.from_package(package)

    def _critical(self, usable: Sequence[tuple[int, Prediction]]) -> set[str]:
        """The findings at their critical-alert thresholds (the model's probabilities)."""
        from overread.triage import critical_findings
        from overread.triage.config import TriageConfig

        alerts = TriageConfig.model_validate(self.config.triage).alerts
        return {
            label
            for _, prediction in usable
            for label, _, _ in critical_findings(prediction.findings, alerts)
        }

    def _stored_header(self, artifact: Mapping[str, Any]) -> Dataset | None:
        path = self.store.path(str(artifact["key"]))
        try:
            return pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError):
            return None

    # -- releasing ----------------------------------------------------------------------
    def _release(self, session: Session, result: Result) -> int:
        """Queue the exports of a result that was held (its infer job's destinations);
        return how many export jobs the result now has waiting.

        Export jobs the study and model already had (a "not analysed" report sent
        before a reader had the study analysed anyway) go again, with this result."""
        job = session.get(Job, result.job_id)
        if job is None:
            raise ReviewError(f"result {result.id}: its infer job {result.job_id} is gone")
        payload = InferPayload.from_dict(job.payload or {}, default_alias=job.model_name)
        queue_exports(
            session,
            self.queue,
            self.config,
            job=job,
            result=result,
            destinations=payload.destinations,
            analysed=bool(ResultSummary.from_dict(result.summary or {}).usable()),
        )
        return self.queue.requeue_exports(
            session,
            study_instance_uid=result.study_instance_uid,
            model_name=result.model_name,
            model_version=result.model_version,
        )

    def _requeue_corrections(
        self, session: Session, result: Result, new_sr: Mapping[str, Any] | None
    ) -> int:
        """Send the corrected result again on every export job of it: a DICOM or STOW-RS
        export sends every object the result has now (the new SR, the verified PDF
        report and overlays, the SEG), as much as the destination takes of them; FHIR
        and HL7 send the corrected report. Returns how many jobs were queued."""
        now = utcnow()
        jobs = session.scalars(
            select(Job).where(
                Job.kind == JobKind.EXPORT.value,
                Job.study_instance_uid == result.study_instance_uid,
                Job.model_name == result.model_name,
                Job.model_version == result.model_version,
                # Only jobs sent or given up on: a running one is its worker's, a held one
                # waits for its switch, a cancelled one was not to be sent.
                Job.state.in_(
                    [
                        JobState.SUCCEEDED.value,
                        JobState.FAILED.value,
                        JobState.DEAD_LETTERED.value,
                    ]
                ),
            )
        ).all()
        for job in jobs:
            payload = export_payload(job.payload or {})
            if isinstance(payload, DicomExportPayload | StowExportPayload):
                data = dict(job.payload or {})
                data.pop("objects", None)
                job.payload = data
            job.state = JobState.QUEUED.value
            job.attempts = 0
            job.next_attempt_at = now
            job.started_at = None
            job.finished_at = None
            job.lease_owner = None
            job.lease_expires_at = None
            job.error = None
            job.updated_at = now
        return len(jobs)

    # -- time-outs ----------------------------------------------------------------------
    @staticmethod
    def _still_pending(session: Session, review_id: int, **values: Any) -> bool:
        """Set ``values`` on a review only if it is still pending; whether it was."""
        values.setdefault("updated_at", utcnow())
        changed = session.execute(
            update(ResultReview)
            .where(
                ResultReview.id == review_id,
                ResultReview.state == ReviewState.PENDING.value,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            return False
        session.expire_all()  # the ORM objects loaded before must not write over it
        return True

    def sweep(self, triage: Any, *, now: datetime | None = None) -> list[int]:
        """Handle held results past their time-out; return their result ids.

        Each raises a "review overdue" alert (once) through the triage channels; a
        route with ``review_on_timeout = "release-unverified"`` also releases the
        result's exports unverified. ``triage`` is the triage configuration.
        """
        from overread.triage.alerts import raise_review_overdue

        moment = now or utcnow()
        done: list[int] = []
        with self.database.session() as session:
            overdue = session.scalars(
                select(ResultReview).where(
                    ResultReview.state == ReviewState.PENDING.value,
                    ResultReview.due_at.is_not(None),
                    ResultReview.due_at <= moment,
                    ResultReview.escalated_at.is_(None),
                )
            ).all()
            for review in overdue:
                # Compare-and-set: a reader who acted meanwhile (accept, edit, reject in
                # another transaction) wins, and the time-out does nothing to the result.
                if not self._still_pending(session, review.id, escalated_at=moment):
                    continue
                routes = reviewing_routes(self.config, review.route)
                release = bool(routes) and all(
                    r.review_on_timeout is ReviewTimeout.RELEASE_UNVERIFIED for r in routes
                )
                alert = raise_review_overdue(session, review.study_instance_uid, triage, now=moment)
                record_event(
                    session,
                    actor=REVIEW_ACTOR,
                    role="service",
                    action=AuditAction.REVIEW_OVERDUE,
                    object_uids=[review.study_instance_uid],
                    details={
                        "result_id": review.result_id,
                        "alert_id": alert.id,
                        "release": release,
                    },
                )
                if release:
                    result = session.get(Result, review.result_id)
                    if result is not None and self._still_pending(
                        session,
                        review.id,
                        state=ReviewState.RELEASED.value,
                        released_at=moment,
                    ):
                        exports = self._release(session, result)
                        record_event(
                            session,
                            actor=REVIEW_ACTOR,
                            role="service",
                            action=AuditAction.REVIEW_RELEASE,
                            object_uids=[review.study_instance_uid],
                            details={
                                "result_id": review.result_id,
                                "exports": exports,
                                "report_status": ReportStatus.PRELIMINARY.value,
                            },
                        )
                done.append(review.result_id)
        if done:
            logger.warning("%d held result(s) past their review time-out", len(done))
        return done


def _stale(results: Sequence[tuple[Result, ResultReview | None]], seen: Mapping[int, str]) -> str:
    """How the study's results differ from those a reader saw ("" when they do not)."""
    current = {result.id: result_version(result, review) for result, review in results}
    why: list[str] = []
    new = sorted(set(current) - set(seen))
    if new:
        why.append("new result " + ", ".join(map(str, new)))
    gone = sorted(set(seen) - set(current))
    if gone:
        why.append("result " + ", ".join(map(str, gone)) + " no longer stored")
    changed = sorted(i for i in set(current) & set(seen) if current[i] != seen[i])
    if changed:
        why.append(
            "result "
            + ", ".join(map(str, changed))
            + " read again or reviewed by someone else since"
        )
    return "; ".join(why)


def _split_decisions(
    study_instance_uid: str,
    targets: Sequence[tuple[Result, ResultReview | None]],
    request: ReviewRequest,
) -> list[ReviewRequest | None]:
    """What a study-level request asks of each of its results (``None``: nothing).

    An edit's decisions go each to the results that have a finding of that label (a
    study read by the classifier and a segmentation package has its labels split
    between two results); a label that no result of the study has is refused. A held
    result the edit does not concern is accepted as it is (with the reader's note); a
    result already verified that it does not concern is left as it is, and one sent
    unverified is too (a correction of one model's finding does not verify another's).

    Only an edit carries decisions: an accept or a reject applies to every result it
    names as it is, and one that carries decisions is refused (it is not split, so a
    reject never becomes another result's accept).
    """
    if request.action is not ReviewAction.EDIT:
        if request.decisions:
            raise ReviewError(
                f"a finding's decision goes only with an edit, not with {request.action.value}"
            )
        return [request] * len(targets)
    if not request.decisions:
        return [request] * len(targets)
    labels = [
        {f.label for _, p in ResultSummary.from_dict(r.summary or {}).usable() for f in p.findings}
        for r, _ in targets
    ]
    known = set().union(*labels)
    unknown = sorted(set(request.decisions) - known)
    if unknown:
        raise ReviewError(
            f"study {study_instance_uid} has no finding {', '.join(map(repr, unknown))} "
            f"(its results have: {', '.join(sorted(known)) or 'none'})"
        )
    split: list[ReviewRequest | None] = []
    for (_, review), own_labels in zip(targets, labels, strict=True):
        own = {k: v for k, v in request.decisions.items() if k in own_labels}
        if own:
            split.append(replace(request, decisions=own))
        elif review is not None and review.state == ReviewState.PENDING.value:
            split.append(replace(request, action=ReviewAction.ACCEPT, decisions={}))
        else:
            split.append(None)
    return split


def _study_decisions(summary: ResultSummary) -> dict[str, Decision]:
    """The model's decision per finding for the study: the strongest of its images'
    (positive, then indeterminate, then negative), as the SR's summary merges them."""
    calls: dict[str, Decision] = {}
    for _, prediction in summary.usable():
        for finding in prediction.findings:
            current = calls.get(finding.label)
            if current is None or finding.decision.severity > current.severity:
                calls[finding.label] = finding.decision
    return calls


def _reference(artifact: Mapping[str, Any]) -> dict[str, Any]:
    """What is kept of an SR that a newer one supersedes."""
    return {
        "key": artifact.get("key"),
        "sop_class_uid": artifact.get("sop_class_uid"),
        "sop_instance_uid": artifact.get("sop_instance_uid"),
        "series_instance_uid": artifact.get("series_instance_uid"),
    }


def _reference_dataset(reference: Mapping[str, Any], study_uid: str = "") -> Dataset:
    """A header standing for an earlier SR in the Predecessor Documents Sequence."""
    ds = Dataset()
    ds.SOPClassUID = str(reference.get("sop_class_uid") or COMPREHENSIVE_SR)
    ds.SOPInstanceUID = str(reference["sop_instance_uid"])
    ds.SeriesInstanceUID = str(reference.get("series_instance_uid") or "")
    ds.StudyInstanceUID = study_uid
    return ds


__all__ = [
    "COMPREHENSIVE_3D_SR",
    "COMPREHENSIVE_SR",
    "RESULT_SR_CLASSES",
    "REVIEW_ACTOR",
    "UNREVIEWED",
    "Reader",
    "ReviewAction",
    "ReviewConflictError",
    "ReviewDesk",
    "ReviewError",
    "ReviewOutcome",
    "ReviewRequest",
    "ReviewStaleError",
    "held",
    "hold_result",
    "queue_exports",
    "reopen_review",
    "result_version",
    "reviewing_routes",
    "sent_predecessors",
    "study_review_states",
]
