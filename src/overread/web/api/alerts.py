"""Alert routes: critical-finding alerts, filtered, and their acknowledgement."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from overread.errors import OverreadError
from overread.security import Permission, Principal
from overread.service.db import utcnow
from overread.triage.alerts import acknowledge, alert_findings, alert_notes, next_escalation_at
from overread.triage.config import AlertSettings, TriageConfig
from overread.triage.schema import Alert, AlertEvent, AlertState
from overread.web.api.guards import caller, context, invalid, not_found, page_params, route
from overread.web.api.schemas import (
    UID_PATTERN,
    AcknowledgeRequest,
    AlertFindingOut,
    AlertOut,
    Page,
)
from overread.web.context import WebContext


def alert_out(session: Session, alert: Alert, settings: AlertSettings) -> AlertOut:
    """The API view of an alert row, with its findings, notes and escalation."""
    notes = {n.event: n for n in alert_notes(session, alert)}
    acknowledged = notes.get(AlertEvent.ACKNOWLEDGED.value)
    closed = notes.get(AlertEvent.CLOSED.value)
    return AlertOut(
        findings=[
            AlertFindingOut(finding=f.finding, probability=f.probability, threshold=f.threshold)
            for f in alert_findings(session, alert)
        ],
        next_escalation_at=next_escalation_at(alert, settings),
        communicated_to=acknowledged.communicated_to if acknowledged else None,
        note=acknowledged.note if acknowledged else None,
        closed_at=closed.created_at if closed else None,
        closed_by=closed.actor if closed else None,
        id=alert.id,
        study_instance_uid=alert.study_instance_uid,
        finding=alert.finding,
        probability=alert.probability,
        threshold=alert.threshold,
        department=alert.department,
        score=alert.score,
        state=alert.state,
        level=alert.level,
        raised_at=alert.raised_at,
        last_seen_at=alert.last_seen_at,
        duplicates=alert.duplicates,
        escalated_at=alert.escalated_at,
        acknowledged_by=alert.acknowledged_by,
        acknowledged_at=alert.acknowledged_at,
    )


def alert_settings(ctx: WebContext) -> AlertSettings:
    """The service's alert settings (escalation period and channel levels)."""
    return TriageConfig.model_validate(ctx.service.config.triage).alerts


router = APIRouter(prefix="/api/alerts", tags=["alerts"])


@route(router, "GET", "", response_model=Page[AlertOut], permission=Permission.VIEW_WORKLIST)
def list_alerts(
    state: AlertState | None = Query(default=None, description="open, acknowledged or closed"),
    study: str | None = Query(default=None, pattern=UID_PATTERN),
    finding: str | None = Query(default=None, max_length=64),
    min_level: int | None = Query(default=None, ge=0, le=9, description="Escalation level"),
    page: tuple[int, int] = Depends(page_params(100)),
    ctx: WebContext = Depends(context),
) -> Page[AlertOut]:
    """Alerts, newest first."""
    limit, offset = page
    conditions: list[Any] = []
    if state is not None:
        conditions.append(Alert.state == state.value)
    if study:
        conditions.append(Alert.study_instance_uid == study)
    if finding:
        conditions.append(Alert.finding == finding)
    if min_level is not None:
        conditions.append(Alert.level >= min_level)
    with ctx.database.session() as session:
        total = session.scalar(select(func.count()).select_from(Alert).where(*conditions))
        rows = session.scalars(
            select(Alert)
            .where(*conditions)
            .order_by(Alert.raised_at.desc(), Alert.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        settings = alert_settings(ctx)
        items = [alert_out(session, a, settings) for a in rows]
    return Page[AlertOut](items=items, total=int(total or 0), limit=limit, offset=offset)


@route(
    router,
    "POST",
    "/{alert_id}/acknowledge",
    response_model=AlertOut,
    permission=Permission.GIVE_FEEDBACK,
)
def acknowledge_alert(
    body: AcknowledgeRequest,
    alert_id: int = Path(ge=1, le=2**31 - 1),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> AlertOut:
    """Acknowledge an alert, saying who was told: deliveries stop, escalation ends (audited)."""
    with ctx.database.session() as session:
        try:
            alert = acknowledge(
                session,
                alert_id,
                who=who.username,
                role=who.role.value,
                communicated_to=body.communicated_to,
                note=body.note,
                now=utcnow(),
            )
        except KeyError:
            raise not_found(f"alert {alert_id}") from None
        except OverreadError as exc:
            raise invalid(str(exc)) from None
        return alert_out(session, alert, alert_settings(ctx))


__all__ = ["alert_out", "alert_settings"]
