"""Worklist routes: the prioritised list, one study's score breakdown, claim, read state.

The worklist carries the Patient ID, so every view is audited and the ID is removed
for roles without ``view_phi``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.responses import JSONResponse
from sqlalchemy import exists, func, select
from sqlalchemy.orm import Session

from overread.audit import AuditAction
from overread.errors import OverreadError
from overread.results import ResultSummary
from overread.security import Permission, Principal, redact_phi
from overread.service.db import Instance, Result, utcnow
from overread.service.review import study_review_states
from overread.triage import StudyGate, study_gate
from overread.triage.schema import Priority, PrioritySource, ReadState, WorklistItem
from overread.triage.worklist import (
    claim_next,
    get_item,
    set_priority,
    set_read_state,
    stored_findings,
    worklist_order,
)
from overread.web.api.guards import caller, context, invalid, not_found, page_params, route
from overread.web.api.schemas import (
    UID_PATTERN,
    ClaimRequest,
    FindingOut,
    Page,
    PriorityRequest,
    ReadStateRequest,
    ScoreTermOut,
    WorklistItemOut,
)
from overread.web.context import WebContext


def study_gates(session: Session, items: Sequence[WorklistItem]) -> dict[str, StudyGate]:
    """The input gate's word on each row's study, from its stored result."""
    uids = [item.study_instance_uid for item in items]
    if not uids:
        return {}
    models = {(i.study_instance_uid, i.model_name, i.model_version) for i in items}
    gates: dict[str, StudyGate] = {}
    for result in session.scalars(
        select(Result).where(Result.study_instance_uid.in_(uids)).order_by(Result.id)
    ):
        if (result.study_instance_uid, result.model_name, result.model_version) in models:
            gates[result.study_instance_uid] = study_gate(ResultSummary.from_dict(result.summary))
    return gates


def item_out(item: WorklistItem, gate: StudyGate | None = None) -> WorklistItemOut:
    """The API view of a worklist row (with its study's gate verdict when given)."""
    gate = gate or StudyGate()
    return WorklistItemOut(
        analysis=gate.analysis,
        gate_status=gate.status,
        gate_reasons=list(gate.reasons),
        gate_note=gate.note,
        study_instance_uid=item.study_instance_uid,
        patient_id=item.patient_id,
        department=item.department,
        patient_age=item.patient_age,
        received_at=item.received_at,
        score=item.score,
        breakdown=[ScoreTermOut.model_validate(t) for t in item.breakdown or []],
        findings=[FindingOut.of(f) for f in stored_findings(item)],
        has_critical=item.has_critical,
        critical_findings=[str(f) for f in item.critical_findings or []],
        model_name=item.model_name,
        model_version=item.model_version,
        state=item.state,
        reader=item.reader,
        scored_at=item.scored_at,
        updated_at=item.updated_at,
        priority=Priority(item.priority or 0).text,
        priority_source=item.priority_source or "",
    )


def _uid() -> Any:
    return Path(pattern=UID_PATTERN, description="Study Instance UID")


router = APIRouter(prefix="/api/worklist", tags=["worklist"])


def _view(ctx: WebContext, who: Principal, uids: list[str], view: str) -> None:
    ctx.access.record(
        who,
        AuditAction.VIEW,
        object_uids=uids,
        details={"view": view, "phi": who.can(Permission.VIEW_PHI)},
    )


@route(router, "GET", "", response_model=Page[WorklistItemOut], permission=Permission.VIEW_WORKLIST)
def list_worklist(
    state: list[ReadState] | None = Query(default=None, description="Reading state(s)"),
    critical: bool | None = Query(default=None, description="Only with/without a critical finding"),
    min_score: float | None = Query(default=None, ge=0, le=1e9, description="Lowest score"),
    department: str | None = Query(default=None, max_length=64),
    modality: str | None = Query(default=None, max_length=16, description="e.g. CR, DX"),
    page: tuple[int, int] = Depends(page_params(50)),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> JSONResponse:
    """The worklist as readers see it: band first, then score, then longest waiting."""
    limit, offset = page
    conditions: list[Any] = []
    if state:
        conditions.append(WorklistItem.state.in_([s.value for s in state]))
    if critical is not None:
        conditions.append(WorklistItem.has_critical.is_(critical))
    if min_score is not None:
        conditions.append(WorklistItem.score >= min_score)
    if department:
        conditions.append(func.lower(WorklistItem.department) == department.strip().lower())
    if modality:
        conditions.append(
            exists().where(
                Instance.study_instance_uid == WorklistItem.study_instance_uid,
                func.upper(Instance.modality) == modality.strip().upper(),
            )
        )
    with ctx.database.session() as session:
        total = session.scalar(select(func.count()).select_from(WorklistItem).where(*conditions))
        rows = session.scalars(
            select(WorklistItem)
            .where(*conditions)
            .order_by(*worklist_order())
            .limit(limit)
            .offset(offset)
        ).all()
        gates = study_gates(session, rows)
        reviews = study_review_states(session, [r.study_instance_uid for r in rows])
        items = [
            item_out(r, gates.get(r.study_instance_uid)).model_copy(
                update={"review": reviews.get(r.study_instance_uid)}
            )
            for r in rows
        ]
    page_out = Page[WorklistItemOut](items=items, total=int(total or 0), limit=limit, offset=offset)
    if items:
        _view(ctx, who, [i.study_instance_uid for i in items], "worklist")
    return JSONResponse(redact_phi(page_out, who))


@route(
    router,
    "POST",
    "/claim",
    response_model=WorklistItemOut,
    permission=Permission.GIVE_FEEDBACK,
    responses={204: {"description": "Nothing unread matches"}},
)
def claim(
    body: ClaimRequest | None = None,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> Response:
    """Take the highest-priority unread study and mark it in progress for the caller."""
    body = body or ClaimRequest()
    with ctx.database.session() as session:
        item = claim_next(
            session,
            reader=who.username,
            now=utcnow(),
            department=body.department,
            has_critical=body.critical,
        )
        out = item_out(item) if item is not None else None
    if out is None:
        return Response(status_code=204)
    _view(ctx, who, [out.study_instance_uid], "claim")
    return JSONResponse(redact_phi(out, who))


@route(
    router,
    "GET",
    "/{study_instance_uid}",
    response_model=WorklistItemOut,
    permission=Permission.VIEW_WORKLIST,
)
def get_worklist_item(
    study_instance_uid: str = _uid(),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> JSONResponse:
    """One study's worklist entry with its score breakdown and findings."""
    with ctx.database.session() as session:
        try:
            row = get_item(session, study_instance_uid)
            out = item_out(row, study_gates(session, [row]).get(study_instance_uid))
            out.review = study_review_states(session, [study_instance_uid])[study_instance_uid]
        except KeyError:
            raise not_found(f"study {study_instance_uid} on the worklist") from None
    _view(ctx, who, [study_instance_uid], "worklist-item")
    return JSONResponse(redact_phi(out, who))


@route(
    router,
    "PUT",
    "/{study_instance_uid}/state",
    response_model=WorklistItemOut,
    permission=Permission.GIVE_FEEDBACK,
)
def put_state(
    body: ReadStateRequest,
    study_instance_uid: str = _uid(),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> JSONResponse:
    """Move a study to unread, in-progress or read, recording the caller as reader."""
    with ctx.database.session() as session:
        try:
            item = set_read_state(
                session, study_instance_uid, body.state, reader=who.username, now=utcnow()
            )
        except KeyError:
            raise not_found(f"study {study_instance_uid} on the worklist") from None
        except OverreadError as exc:
            raise invalid(str(exc)) from None
        out = item_out(item)
    _view(ctx, who, [study_instance_uid], f"state:{body.state}")
    return JSONResponse(redact_phi(out, who))


@route(
    router,
    "PUT",
    "/{study_instance_uid}/priority",
    response_model=WorklistItemOut,
    permission=Permission.GIVE_FEEDBACK,
)
def put_priority(
    body: PriorityRequest,
    study_instance_uid: str = _uid(),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> JSONResponse:
    """Set a study's reading band as a reader (or an order) gives it (audited).

    The AI never lowers the band set here when it scores the study again.
    """
    with ctx.database.session() as session:
        try:
            item = set_priority(
                session,
                study_instance_uid,
                body.priority,
                source=PrioritySource(body.source),
                who=who.username,
                role=who.role.value,
                now=utcnow(),
            )
        except KeyError:
            raise not_found(f"study {study_instance_uid} on the worklist") from None
        except OverreadError as exc:
            raise invalid(str(exc)) from None
        out = item_out(item)
    _view(ctx, who, [study_instance_uid], f"priority:{body.priority}")
    return JSONResponse(redact_phi(out, who))


__all__ = ["item_out", "study_gates"]
