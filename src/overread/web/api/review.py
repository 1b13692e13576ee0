"""Review routes: a reader accepts, edits or rejects a study's AI results.

``POST /api/studies/{uid}/review`` (permission ``verify_results``) applies the action
to the study's held results (released verified, or rejected and never sent), or, for
results that already went out unverified, sends the correction
(:mod:`overread.service.review`). ``GET`` the same path says where each result of the
study is in review.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Path
from pydantic import BaseModel, Field

from overread.results import Decision
from overread.security import Permission, Principal
from overread.service.review import (
    Reader,
    ReviewAction,
    ReviewConflictError,
    ReviewDesk,
    ReviewError,
    ReviewRequest,
)
from overread.web.api.guards import caller, context, invalid, not_found, route
from overread.web.api.schemas import UID_PATTERN
from overread.web.context import WebContext


class SeenResultIn(BaseModel):
    """One result as the reader saw it (``GET`` the review for both values)."""

    result_id: int
    version: str = Field(min_length=1, max_length=64)


class ReviewIn(BaseModel):
    """A reader's action on a study's results."""

    action: Literal["accept", "edit", "reject"]
    results: list[SeenResultIn] = Field(
        min_length=1,
        description="every result of the study as the reader saw it (result_id and "
        "version from GET .../review); the action is refused (409) when they changed",
    )
    findings: dict[str, Literal["positive", "indeterminate", "negative"]] = Field(
        default_factory=dict,
        description="edit only: the reader's decision per finding label they change (with "
        "accept or reject: refused, 422)",
    )
    note: str = Field(default="", max_length=2000)
    reason: str = Field(default="", max_length=2000, description="reject: why")


class ReviewResultOut(BaseModel):
    """Where one result of the study is in review."""

    result_id: int
    version: str = Field(description="what the reader sees of the result; a review names it")
    model: str
    state: str = Field(description="unreviewed, pending, accepted, edited, rejected, released")
    report_status: str = Field(description="preliminary, final or amended")
    reviewer: str | None = None
    reviewed_at: datetime | None = None
    due_at: datetime | None = None
    decisions: dict[str, str] = Field(default_factory=dict)
    note: str = ""
    reason: str = ""
    sr_sop_instance_uid: str | None = None
    superseded: list[str] = Field(default_factory=list)


class ReviewActionOut(BaseModel):
    """What a review did to each result it applied to."""

    result_id: int
    state: str
    report_status: str
    sr_sop_instance_uid: str | None
    superseded: list[str]
    exports: int


class ReviewOut(BaseModel):
    """A study's results in review."""

    study_instance_uid: str
    results: list[ReviewResultOut]


class ReviewedOut(BaseModel):
    """The answer to a review action."""

    study_instance_uid: str
    action: str
    results: list[ReviewActionOut]


def desk(ctx: WebContext) -> ReviewDesk:
    """The review desk of the running gateway."""
    service = ctx.service
    return ReviewDesk(service.config, service.database, service.store, service.queue)


def study_review(ctx: WebContext, study_instance_uid: str) -> ReviewOut:
    """Every result of the study with its review state (``unreviewed``: never held,
    sent unverified)."""
    from overread.service.review import RESULT_SR_CLASSES, result_version

    items = []
    for result, review in desk(ctx).results_of(study_instance_uid):
        sr = next(
            (a for a in result.artifacts or [] if a.get("sop_class_uid") in RESULT_SR_CLASSES),
            None,
        )
        items.append(
            ReviewResultOut(
                result_id=result.id,
                version=result_version(result, review),
                model=f"{result.model_name} {result.model_version}",
                state="unreviewed" if review is None else review.state,
                report_status="preliminary" if review is None else review.report_status,
                reviewer=(review.reviewer or None) if review is not None else None,
                reviewed_at=None if review is None else review.reviewed_at,
                due_at=None if review is None else review.due_at,
                decisions={} if review is None else dict(review.decisions or {}),
                note="" if review is None else review.note,
                reason="" if review is None else review.reason,
                sr_sop_instance_uid=None if sr is None else str(sr["sop_instance_uid"]),
                superseded=[]
                if review is None
                else [str(s["sop_instance_uid"]) for s in review.superseded or []],
            )
        )
    return ReviewOut(study_instance_uid=study_instance_uid, results=items)


def apply_review(
    ctx: WebContext, study_instance_uid: str, body: ReviewIn, who: Principal
) -> ReviewedOut:
    """Carry out ``body`` as ``who``; 404 without a result, 409 when it does not apply,
    422 for an unknown finding."""
    request = ReviewRequest(
        action=ReviewAction(body.action),
        seen={r.result_id: r.version for r in body.results},
        decisions={label: Decision(value) for label, value in body.findings.items()},
        note=body.note.strip(),
        reason=body.reason.strip(),
    )
    if request.action is not ReviewAction.EDIT and request.decisions:
        raise invalid("`findings` only go with `edit`")
    if request.action is ReviewAction.EDIT and not (request.decisions or request.note):
        raise invalid("an edit changes at least one finding's decision or adds a note")
    try:
        outcomes = desk(ctx).review(
            study_instance_uid, request, Reader(who.username, who.role.value)
        )
    except ReviewConflictError as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from None
    except ReviewError as exc:
        if "has no stored result" in str(exc):
            raise not_found(f"a result of study {study_instance_uid}") from None
        raise invalid(str(exc)) from None
    return ReviewedOut(
        study_instance_uid=study_instance_uid,
        action=request.action.value,
        results=[
            ReviewActionOut(
                result_id=o.result_id,
                state=o.state.value,
                report_status=o.report_status.value,
                sr_sop_instance_uid=o.sr_sop_instance_uid,
                superseded=list(o.superseded),
                exports=o.exports,
            )
            for o in outcomes
        ],
    )


router = APIRouter(prefix="/api", tags=["review"])


@route(
    router,
    "POST",
    "/studies/{study_instance_uid}/review",
    response_model=ReviewedOut,
    permission=Permission.VERIFY_RESULTS,
    responses={
        404: {"description": "The study has no stored result"},
        409: {
            "description": "The action does not apply (already rejected, already "
            "verified), or the study's results changed since the reader saw them"
        },
        422: {"description": "Unknown finding, or an edit that changes nothing"},
    },
)
def post_review(
    body: ReviewIn,
    study_instance_uid: str = Path(pattern=UID_PATTERN, description="Study Instance UID"),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> ReviewedOut:
    """Accept, edit or reject the study's results (audited). Held results are released
    verified or never sent; results already sent get a verified correction."""
    return apply_review(ctx, study_instance_uid, body, who)


@route(
    router,
    "GET",
    "/studies/{study_instance_uid}/review",
    response_model=ReviewOut,
    permission=Permission.VIEW_RESULTS,
)
def get_review(
    study_instance_uid: str = Path(pattern=UID_PATTERN, description="Study Instance UID"),
    ctx: WebContext = Depends(context),
) -> ReviewOut:
    """Where each result of the study is in review."""
    return study_review(ctx, study_instance_uid)


__all__ = ["ReviewIn", "ReviewOut", "ReviewedOut", "SeenResultIn", "apply_review", "study_review"]
