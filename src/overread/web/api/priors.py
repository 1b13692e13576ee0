"""Prior studies: the patient's earlier studies, and a study compared with one of them.

``GET /api/studies/{uid}/priors`` lists the same patient's earlier studies (matched
on Patient ID and its issuer, never on the name); ``GET
/api/studies/{uid}/compare/{prior_uid}`` returns both studies' AI summaries and what
changed per finding. A prior of another patient is refused with ``409``. Both views
are audited.
"""

from __future__ import annotations

from datetime import date
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from overread.audit import AuditAction
from overread.results import Decision
from overread.security import Permission, Principal, redact_phi
from overread.service.priors import (
    AISummary,
    GatewayPriors,
    PacsPriors,
    PatientMismatchError,
    PriorSource,
    PriorStudy,
    StudyComparison,
    StudyFacts,
    compare_studies,
    list_priors,
    merge_priors,
    study_facts,
)
from overread.triage.comparison import DEFAULT_MARGIN, ChangeKind, FindingChange
from overread.triage.worklist import get_item
from overread.web.api.guards import caller, context, not_found, route
from overread.web.api.schemas import UID_PATTERN
from overread.web.context import WebContext


class SummaryOut(BaseModel):
    """A study's AI calls in brief."""

    text: str
    positive: list[str]
    indeterminate: list[str]
    critical: list[str]
    model: str

    @classmethod
    def of(cls, summary: AISummary) -> SummaryOut:
        return cls(
            text=summary.text,
            positive=list(summary.positive),
            indeterminate=list(summary.indeterminate),
            critical=list(summary.critical),
            model=summary.model,
        )


class PriorOut(BaseModel):
    """One earlier study of the patient."""

    study_instance_uid: str
    study_date: date | None
    source: PriorSource
    held: bool
    modality: str
    description: str
    summary: SummaryOut | None
    compare_url: str | None

    @classmethod
    def of(cls, current_uid: str, prior: PriorStudy) -> PriorOut:
        return cls(
            study_instance_uid=prior.study_instance_uid,
            study_date=prior.study_date,
            source=prior.source,
            held=prior.held,
            modality=prior.modality,
            description=prior.description,
            summary=SummaryOut.of(prior.summary) if prior.summary else None,
            compare_url=compare_url(current_uid, prior.study_instance_uid) if prior.held else None,
        )


class PriorsOut(BaseModel):
    """A study and its patient's earlier studies, newest first."""

    study_instance_uid: str
    study_date: date | None
    priors: list[PriorOut]


class ChangeOut(BaseModel):
    """How one finding changed from the prior to the current study."""

    label: str
    change: ChangeKind
    current_probability: float | None
    prior_probability: float | None
    current_decision: Decision | None
    prior_decision: Decision | None
    probability_delta: float | None
    probability_moved: bool

    @classmethod
    def of(cls, change: FindingChange) -> ChangeOut:
        return cls(
            label=change.label,
            change=change.kind,
            current_probability=change.current_probability,
            prior_probability=change.prior_probability,
            current_decision=change.current_decision,
            prior_decision=change.prior_decision,
            probability_delta=change.probability_delta,
            probability_moved=change.probability_moved,
        )


class ComparedStudyOut(BaseModel):
    """One side of a comparison."""

    study_instance_uid: str
    study_date: date | None
    modality: str
    description: str
    summary: SummaryOut


class ComparisonOut(BaseModel):
    """A study, one prior, and the change list (``margin``: the probability move that counts)."""

    current: ComparedStudyOut
    prior: ComparedStudyOut
    margin: float
    changes: list[ChangeOut]

    @classmethod
    def of(cls, comparison: StudyComparison) -> ComparisonOut:
        def side(facts: StudyFacts, summary: AISummary) -> ComparedStudyOut:
            return ComparedStudyOut(
                study_instance_uid=facts.study_instance_uid,
                study_date=facts.study_date,
                modality=facts.modality,
                description=facts.description,
                summary=SummaryOut.of(summary),
            )

        return cls(
            current=side(comparison.current, comparison.current_summary),
            prior=side(comparison.prior, comparison.prior_summary),
            margin=comparison.margin,
            changes=[ChangeOut.of(c) for c in comparison.changes],
        )


def compare_url(current_uid: str, prior_uid: str) -> str:
    """The comparison page of ``current_uid`` beside ``prior_uid``."""
    return f"/studies/{quote(current_uid, safe='')}/compare/{quote(prior_uid, safe='')}"


def _uid(description: str) -> Any:
    return Path(pattern=UID_PATTERN, description=description)


router = APIRouter(prefix="/api/studies", tags=["priors"])

_CONFLICT = {409: {"description": "The studies are not known to belong to the same patient"}}


@route(
    router,
    "GET",
    "/{study_instance_uid}/priors",
    response_model=PriorsOut,
    permission=Permission.VIEW_RESULTS,
)
def get_priors(
    study_instance_uid: str = _uid("Study Instance UID"),
    pacs: bool = Query(
        default=False, description="Also ask the configured query peers (C-FIND; slower)"
    ),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> JSONResponse:
    """The same patient's earlier studies the gateway holds (and, with ``pacs``, the
    query peers hold), newest first."""
    with ctx.database.session() as session:
        try:
            item = get_item(session, study_instance_uid)
        except KeyError:
            raise not_found(f"study {study_instance_uid} on the worklist") from None
        facts = study_facts(session, ctx.service.store, item)
        held = list_priors(facts, [GatewayPriors(session, ctx.service.store)])
    groups = [held]
    if pacs:  # outside the database session: C-FIND may take a while
        groups.append(PacsPriors(config=ctx.service.config).priors_of(facts))
    priors = merge_priors(groups)
    out = PriorsOut(
        study_instance_uid=study_instance_uid,
        study_date=facts.study_date,
        priors=[PriorOut.of(study_instance_uid, p) for p in priors],
    )
    ctx.access.record(
        who,
        AuditAction.VIEW,
        object_uids=[study_instance_uid, *(p.study_instance_uid for p in priors)],
        details={"view": "priors"},
    )
    return JSONResponse(redact_phi(out, who))


@route(
    router,
    "GET",
    "/{study_instance_uid}/compare/{prior_instance_uid}",
    response_model=ComparisonOut,
    permission=Permission.VIEW_RESULTS,
    responses=_CONFLICT,
)
def get_comparison(
    study_instance_uid: str = _uid("Study Instance UID of the current study"),
    prior_instance_uid: str = _uid("Study Instance UID of the prior"),
    margin: float = Query(
        default=DEFAULT_MARGIN, ge=0, lt=1, description="Probability move that counts"
    ),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> JSONResponse:
    """Both studies' AI findings and what changed per finding (new, resolved, up, down...)."""
    with ctx.database.session() as session:
        try:
            comparison = compare_studies(
                session,
                ctx.service.store,
                study_instance_uid,
                prior_instance_uid,
                margin=margin,
            )
        except KeyError:
            raise not_found("study on the worklist") from None
        except PatientMismatchError as exc:
            raise HTTPException(status_code=status.HTTP_409_CONFLICT, detail=str(exc)) from None
    ctx.access.record(
        who,
        AuditAction.VIEW,
        object_uids=[study_instance_uid, prior_instance_uid],
        details={"view": "comparison"},
    )
    return JSONResponse(redact_phi(ComparisonOut.of(comparison), who))


__all__ = ["ComparisonOut", "PriorsOut", "compare_url", "router"]
