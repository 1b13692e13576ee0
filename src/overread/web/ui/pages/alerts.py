"""Critical alerts: open ones with escalation state, acknowledging (who was told), closed."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from sqlalchemy import select

from overread.audit import AuditAction
from overread.errors import ConfigError
from overread.security import Permission
from overread.service.db import utcnow
from overread.triage import Alert, AlertState, acknowledge
from overread.triage.alerts import COMMUNICATED_TO_MAX, NOTE_MAX
from overread.web.api.alerts import alert_settings
from overread.web.ui.guard import Viewer, page, page_viewer
from overread.web.ui.site import UserInterface, ui_of
from overread.web.ui.views import alert_rows

router = APIRouter(include_in_schema=False)

#: Acknowledged and closed alerts listed under the open ones.
RECENT_ALERTS = 20


@page(router, "GET", "/alerts", permission=Permission.VIEW_RESULTS)
def alerts(
    request: Request,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    now = utcnow()
    settings = alert_settings(ui.ctx)
    store = ui.ctx.service.store
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
            .where(
                Alert.state.in_([AlertState.ACKNOWLEDGED.value, AlertState.CLOSED.value]),
                Alert.study_instance_uid != "",
            )
            .order_by(Alert.last_seen_at.desc(), Alert.id.desc())
            .limit(RECENT_ALERTS)
        ).all()
        open_rows = alert_rows(
            session, store, list(open_alerts), viewer.principal, settings, now=now
        )
        done_rows = alert_rows(session, store, list(done), viewer.principal, settings, now=now)
    ui.ctx.access.record(
        viewer.principal,
        AuditAction.VIEW,
        object_uids=sorted({r["study_instance_uid"] for r in open_rows + done_rows}),
        details={"page": "alerts"},
    )
    return ui.render(
        request,
        "alerts.html",
        viewer,
        open_alerts=open_rows,
        acknowledged=done_rows,
        communicated_to_max=COMMUNICATED_TO_MAX,
        note_max=NOTE_MAX,
    )


@page(router, "POST", "/alerts/{alert_id}/acknowledge", permission=Permission.GIVE_FEEDBACK)
async def acknowledge_alert(
    request: Request,
    alert_id: int,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    form = await ui.guard.form(request, viewer)
    told = str(form.get("communicated_to", ""))
    note = str(form.get("note", ""))
    try:
        with ui.ctx.database.session() as session:
            acknowledge(
                session,
                alert_id,
                who=viewer.username,
                role=viewer.role,
                communicated_to=told,
                note=note,
                now=utcnow(),
            )
    except KeyError:
        return ui.error_page(request, viewer, 404, "Alert not found", "No such alert.")
    except ConfigError as exc:
        return ui.error_page(request, viewer, 400, "Not acknowledged", f"{exc}.")
    return RedirectResponse("/alerts", status_code=303)


__all__ = ["RECENT_ALERTS", "router"]
