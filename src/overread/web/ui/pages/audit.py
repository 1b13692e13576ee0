"""The audit trail: the chain's verification and the latest events."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import func, select

from overread.audit import (
    AuditAction,
    AuditEvent,
    checkpoint_dir,
    load_checkpoints,
    load_verification_ring,
    missing_checkpoints,
    verify_chain,
)
from overread.errors import OverreadError
from overread.security import Permission
from overread.web.context import WebContext
from overread.web.ui.guard import Viewer, page, page_viewer
from overread.web.ui.site import UserInterface, ui_of
from overread.web.ui.views import Pager

router = APIRouter(include_in_schema=False)

#: Audit events per page of the audit page, by default and at most.
AUDIT_ROWS = 100
AUDIT_ROWS_MAX = 500


def verification(ctx: WebContext) -> dict[str, Any]:
    """The chain's verification against the signed checkpoints, as ``overread audit verify``."""
    root = Path(ctx.service.config.data_dir)
    directory = checkpoint_dir(root)
    engine = ctx.database.engine
    try:
        has_checkpoints = directory.is_dir() and any(directory.glob("checkpoint-*.json"))
        checkpoints = (
            load_checkpoints(directory, load_verification_ring(root)) if has_checkpoints else []
        )
    except OverreadError as exc:
        return {"ok": False, "summary": f"BROKEN: {exc}"}
    result = verify_chain(engine, checkpoints=checkpoints)
    outcome: dict[str, Any] = {"ok": result.ok, "summary": result.summary(), **result.as_dict()}
    if result.ok:
        gone = missing_checkpoints(engine, directory)
        if gone:
            seq, name = gone[0]
            outcome.update(
                ok=False,
                summary=f"BROKEN: checkpoint {name} (recorded at record {seq}) is missing",
            )
    return outcome


@page(router, "GET", "/audit", permission=Permission.READ_AUDIT)
def audit(
    request: Request,
    action: str = "",
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    actions = [a.value for a in AuditAction]
    chosen = action if action in actions else ""
    checked = verification(ui.ctx)
    with ui.ctx.database.session() as session:
        counted = select(func.count()).select_from(AuditEvent)
        if chosen:
            counted = counted.where(AuditEvent.action == chosen)
        matching = session.scalar(counted) or 0
        pager = Pager.of(request.query_params, matching, default=AUDIT_ROWS, most=AUDIT_ROWS_MAX)
        query = (
            select(AuditEvent)
            .order_by(AuditEvent.seq.desc())
            .limit(pager.limit)
            .offset(pager.offset)
        )
        if chosen:
            query = query.where(AuditEvent.action == chosen)
        events = [
            {
                "seq": e.seq,
                "timestamp": e.timestamp,
                "actor": e.actor,
                "role": e.role,
                "action": e.action,
                "object_uids": list(e.object_uids or []),
                "details": dict(e.details or {}),
            }
            for e in session.scalars(query).all()
        ]
        total = session.scalar(select(func.count()).select_from(AuditEvent)) or 0
    ui.ctx.access.record(
        viewer.principal, AuditAction.VIEW, details={"page": "audit", "action": chosen}
    )
    return ui.render(
        request,
        "audit.html",
        viewer,
        events=events,
        total=total,
        verification=checked,
        actions=actions,
        chosen=chosen,
        pager=pager,
    )


__all__ = ["AUDIT_ROWS", "AUDIT_ROWS_MAX", "router", "verification"]
