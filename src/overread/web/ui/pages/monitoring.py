"""Monitoring: the daily summary, its charts and the open monitoring alerts."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy import select

from overread.audit import AuditAction
from overread.db import utcnow
from overread.security import Permission
from overread.service.monitor.plots import Chart
from overread.service.monitor.summary import daily_summary
from overread.triage.schema import Alert, AlertNotice, AlertState
from overread.web.ui.guard import Viewer, page, page_viewer
from overread.web.ui.site import UserInterface, ui_of

router = APIRouter(include_in_schema=False)


@page(router, "GET", "/monitoring", permission=Permission.VIEW_RESULTS)
def monitoring(
    request: Request,
    date: str = "",
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    try:
        day = dt.date.fromisoformat(date) if date else utcnow().date()
    except ValueError:
        return ui.error_page(request, viewer, 422, "Bad date", f"{date!r} is not YYYY-MM-DD.")
    summary = daily_summary(ui.ctx.database, day).to_dict()
    with ui.ctx.database.session() as session:
        rows = session.execute(
            select(Alert, AlertNotice)
            .join(AlertNotice, AlertNotice.alert_id == Alert.id)
            .where(Alert.state == AlertState.OPEN.value)
            .order_by(Alert.raised_at.desc())
            .limit(100)
        ).all()
        open_alerts = [
            {
                "id": alert.id,
                "kind": notice.kind,
                "subject": notice.subject,
                "message": notice.message,
                "level": alert.level,
                "raised_at": alert.raised_at.isoformat(timespec="minutes"),
            }
            for alert, notice in rows
        ]
    ui.ctx.access.record(viewer.principal, AuditAction.VIEW, details={"page": "monitoring"})
    return ui.render(
        request,
        "monitoring.html",
        viewer,
        summary=summary,
        day=day.isoformat(),
        charts=[c.value for c in Chart],
        open_alerts=open_alerts,
    )


__all__ = ["router"]
