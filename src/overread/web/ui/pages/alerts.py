"""Open critical alerts, and acknowledging one."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from overread.audit import AuditAction
from overread.security import Permission
from overread.service.db import utcnow
from overread.triage import Alert, AlertState, acknowledge
from overread.web.ui.guard import Viewer, page, page_viewer
from overread.web.ui.site import UserInterface, ui_of
from overread.web.ui.views import alert_rows

router = APIRouter(include_in_schema=False)


@page(router, "GET", "/alerts", permission=Permission.VIEW_RESULTS)
def alerts(
    request: Request,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    now = utcnow()
    with ui.ctx.database.session() as session:
        open_alerts = session.scalars(
            select(Alert)
            # Monitoring alerts concern no study: the monitoring page lists them.
            .where(Alert.state == AlertState.OPEN.value, Alert.study_instance_uid != "")
            .order_by(Alert.score.desc(), Alert.raised_at)
            .limit(200)
        ).all()
        done = session.scalars(
            select(Alert)
            .where(Alert.state == AlertState.ACKNOWLEDGED.value, Alert.study_instance_uid != "")
            .order_by(Alert.acknowledged_at.desc())
            .limit(20)
        ).all()
        open_rows = alert_rows(list(open_alerts), now=now)
        done_rows = alert_rows(list(done), now=now)
    ui.ctx.access.record(
        viewer.principal,
        AuditAction.VIEW,
        object_uids=sorted({r.study_instance_uid for r in open_rows}),
        details={"page": "alerts"},
    )
    return ui.render(request, "alerts.html", viewer, open_alerts=open_rows, acknowledged=done_rows)


@page(router, "POST", "/alerts/{alert_id}/acknowledge", permission=Permission.GIVE_FEEDBACK)
async def acknowledge_alert(
    request: Request,
    alert_id: int,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    await ui.guard.form(request, viewer)
    try:
        with ui.ctx.database.session() as session:
            acknowledge(session, alert_id, who=viewer.username, role=viewer.role, now=utcnow())
    except KeyError:
        return ui.error_page(request, viewer, 404, "Alert not found", "No such alert.")
    return RedirectResponse("/alerts", status_code=303)


__all__ = ["router"]
