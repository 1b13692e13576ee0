"""Audit routes: read the trail (``read_audit``), export it (``export_audit``), verify it.

Exporting is itself audited (``audit-export``), as from the command line.
Verification recomputes the whole chain and checks the signed checkpoints in the
data directory, exactly as ``overread audit verify`` does.
"""

from __future__ import annotations

import io
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import PlainTextResponse
from sqlalchemy import String, cast, func, select

from overread.audit import (
    AuditAction,
    AuditEvent,
    checkpoint_dir,
    export_events,
    load_checkpoints,
    load_verification_ring,
    missing_checkpoints,
    parse_time,
    verify_chain,
)
from overread.audit.chain import format_timestamp
from overread.errors import AuditError
from overread.security import Permission, Principal
from overread.service.db import utcnow
from overread.web.api.guards import caller, context, invalid, page_params, route
from overread.web.api.schemas import UID_PATTERN, AuditEventOut, Page, VerifyOut
from overread.web.context import WebContext

_TIME = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([T ][0-9:.]+)?(Z|[+-][0-9]{2}:?[0-9]{2})?$"


def _time(text: str | None, default: datetime | None) -> datetime | None:
    if text is None:
        return default
    try:
        return parse_time(text)
    except AuditError as exc:
        raise invalid(str(exc)) from None


router = APIRouter(prefix="/api/audit", tags=["audit"])


@route(
    router, "GET", "/events", response_model=Page[AuditEventOut], permission=Permission.READ_AUDIT
)
def list_events(
    start: str | None = Query(
        default=None, alias="from", pattern=_TIME, description="ISO 8601, inclusive"
    ),
    end: str | None = Query(
        default=None, alias="to", pattern=_TIME, description="ISO 8601, exclusive"
    ),
    actor: str | None = Query(default=None, max_length=128),
    action: AuditAction | None = Query(default=None),
    study: str | None = Query(default=None, pattern=UID_PATTERN, description="Object UID"),
    page: tuple[int, int] = Depends(page_params(100)),
    ctx: WebContext = Depends(context),
) -> Page[AuditEventOut]:
    """Audit records in chain order, filtered by time, actor, action or object UID."""
    limit, offset = page
    conditions: list[Any] = []
    since, until = _time(start, None), _time(end, None)
    if since is not None:
        conditions.append(AuditEvent.timestamp >= format_timestamp(since))
    if until is not None:
        conditions.append(AuditEvent.timestamp < format_timestamp(until))
    if actor:
        conditions.append(AuditEvent.actor == actor)
    if action is not None:
        conditions.append(AuditEvent.action == action.value)
    if study:
        conditions.append(cast(AuditEvent.object_uids, String).like(f'%"{study}"%'))
    with ctx.database.session() as session:
        total = session.scalar(select(func.count()).select_from(AuditEvent).where(*conditions))
        rows = session.scalars(
            select(AuditEvent)
            .where(*conditions)
            .order_by(AuditEvent.seq)
            .limit(limit)
            .offset(offset)
        ).all()
        items = [
            AuditEventOut(
                seq=r.seq,
                timestamp=r.timestamp,
                actor=r.actor,
                role=r.role,
                action=r.action,
                object_uids=[str(u) for u in r.object_uids or []],
                details=dict(r.details or {}),
                prev_hash=r.prev_hash,
                hash=r.hash,
            )
            for r in rows
        ]
    return Page[AuditEventOut](items=items, total=int(total or 0), limit=limit, offset=offset)


@route(
    router,
    "GET",
    "/export",
    response_class=PlainTextResponse,
    permission=Permission.EXPORT_AUDIT,
    responses={
        200: {
            "content": {
                "application/x-ndjson": {"schema": {"type": "string"}},
                "text/csv": {"schema": {"type": "string"}},
            }
        }
    },
)
def export(
    start: str = Query(alias="from", pattern=_TIME, description="ISO 8601, inclusive"),
    end: str | None = Query(
        default=None, alias="to", pattern=_TIME, description="ISO 8601, exclusive (default now)"
    ),
    fmt: Literal["jsonl", "csv"] = Query(default="jsonl", alias="format"),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> PlainTextResponse:
    """The records in ``[from, to)`` for compliance (the export is audited)."""
    since = _time(start, None)
    until = _time(end, utcnow())
    assert since is not None and until is not None
    out = io.StringIO()
    try:
        with ctx.database.session() as session:
            export_events(
                session,
                out,
                start=since,
                end=until,
                fmt=fmt,
                actor=who.username,
                role=who.role.value,
                destination="http",
            )
    except AuditError as exc:
        raise invalid(str(exc)) from None
    media = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
    return PlainTextResponse(
        out.getvalue(),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="audit.{fmt}"'},
    )


@route(router, "GET", "/verify", response_model=VerifyOut, permission=Permission.READ_AUDIT)
def verify(ctx: WebContext = Depends(context)) -> VerifyOut:
    """Recompute the chain and check the signed checkpoints; ``ok`` false names the break."""
    root = Path(ctx.service.config.data_dir)
    directory = checkpoint_dir(root)
    try:
        checkpoints = (
            load_checkpoints(directory, load_verification_ring(root))
            if directory.is_dir() and any(directory.glob("checkpoint-*.json"))
            else []
        )
    except AuditError as exc:
        raise HTTPException(status_code=409, detail=f"checkpoint invalid: {exc}") from None
    result = verify_chain(ctx.database.engine, checkpoints=checkpoints)
    data = result.as_dict()
    if result.ok:
        gone = missing_checkpoints(ctx.database.engine, directory)
        if gone:
            seq, name = gone[0]
            data.update(
                ok=False,
                reason="checkpoint-missing",
                broken_seq=seq,
                message=f"checkpoint {name} (recorded at record {seq}) is missing",
            )
    return VerifyOut.model_validate(data)


__all__ = ["router"]
