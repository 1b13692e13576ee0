"""Alert routes: critical-finding alerts, filtered, and their acknowledgement."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from sqlalchemy import func, select

from overread.errors import OverreadError
from overread.security import Permission, Principal
from overread.service.db import utcnow
from overread.triage.alerts import acknowledge
from overread.triage.schema import Alert, AlertState
from overread.web.api.guards import caller, context, invalid, not_found, page_params, route
from overread.web.api.schemas import UID_PATTERN, AlertOut, Page
from overread.web.context import WebContext


def alert_out(alert: Alert) -> AlertOut:
    """The API view of an alert row."""
    return AlertOut(
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


router = APIRouter(prefix="/api/alerts", tags=["alerts"])


@route(router, "GET", "", response_model=Page[AlertOut], permission=Permission.VIEW_WORKLIST)
def list_alerts(
    state: AlertState | None = Query(default=None, description="open or acknowledged"),
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
        items = [alert_out(a) for a in rows]
    return Page[AlertOut](items=items, total=int(total or 0), limit=limit, offset=offset)


@route(
    router,
    "POST",
    "/{alert_id}/acknowledge",
    response_model=AlertOut,
    permission=Permission.GIVE_FEEDBACK,
)
def acknowledge_alert(
    alert_id: int = Path(ge=1, le=2**31 - 1),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> AlertOut:
    """Acknowledge an alert: pending deliveries stop and escalation ends (audited)."""
    with ctx.database.session() as session:
        try:
            alert = acknowledge(
                session, alert_id, who=who.username, role=who.role.value, now=utcnow()
            )
        except KeyError:
            raise not_found(f"alert {alert_id}") from None
        except OverreadError as exc:
            raise invalid(str(exc)) from None
        return alert_out(alert)


__all__ = ["alert_out"]
