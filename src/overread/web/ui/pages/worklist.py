"""The worklist (the home page) and the rows its script refreshes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Request, Response

from overread.audit import AuditAction
from overread.security import Permission
from overread.service.db import utcnow
from overread.triage import ReadState, query_worklist
from overread.web.ui.guard import Viewer, page, page_viewer
from overread.web.ui.site import UserInterface, ui_of
from overread.web.ui.views import worklist_rows

router = APIRouter(include_in_schema=False)

#: Seconds between the worklist page's refreshes.
REFRESH_SECONDS = 5
#: Rows per worklist page.
PAGE_SIZE = 50
#: Which reading states each worklist filter shows.
STATE_FILTERS: dict[str, list[str] | None] = {
    "open": [ReadState.UNREAD.value, ReadState.IN_PROGRESS.value],
    "unread": [ReadState.UNREAD.value],
    "in-progress": [ReadState.IN_PROGRESS.value],
    "read": [ReadState.READ.value],
    "all": None,
}


@dataclass(frozen=True)
class WorklistFilter:
    """The worklist's filters, from the query string."""

    state: str = "open"
    critical: bool = False
    department: str = ""
    page: int = 1

    @classmethod
    def of(cls, request: Request) -> WorklistFilter:
        """Read (and sanitise) the filters of ``request``."""
        params = request.query_params
        state = params.get("state", "open")
        if state not in STATE_FILTERS:
            state = "open"
        try:
            page = max(1, min(int(params.get("page", "1")), 10_000))
        except ValueError:
            page = 1
        return cls(
            state=state,
            critical=params.get("critical", "") in ("1", "on", "true"),
            department=params.get("department", "").strip()[:64],
            page=page,
        )

    def query(self, **changes: Any) -> str:
        """The query string of these filters (with ``changes``)."""
        values = {
            "state": self.state,
            "critical": "1" if self.critical else "",
            "department": self.department,
            "page": str(self.page),
            **{k: str(v) for k, v in changes.items()},
        }
        return urlencode({k: v for k, v in values.items() if v and not (k == "page" and v == "1")})


def _worklist(
    ui: UserInterface, filters: WorklistFilter, viewer: Viewer
) -> tuple[list[dict[str, Any]], int]:
    now = utcnow()
    with ui.ctx.database.session() as session:
        page = query_worklist(
            session,
            state=STATE_FILTERS[filters.state],
            department=filters.department or None,
            has_critical=True if filters.critical else None,
            limit=PAGE_SIZE,
            offset=(filters.page - 1) * PAGE_SIZE,
        )
        rows = worklist_rows(session, ui.ctx.service.store, page.items, viewer.principal, now=now)
    return rows, page.total


@page(router, "GET", "/", permission=Permission.VIEW_WORKLIST)
def worklist(
    request: Request,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    filters = WorklistFilter.of(request)
    rows, total = _worklist(ui, filters, viewer)
    uids = [r["study_instance_uid"] for r in rows]
    ui.shown.new(ui.session_key(request), uids)
    ui.ctx.access.record(
        viewer.principal,
        AuditAction.VIEW,
        object_uids=uids,
        details={"page": "worklist", "filter": filters.query()},
    )
    return ui.render(
        request,
        "worklist.html",
        viewer,
        rows=rows,
        total=total,
        filters=filters,
        states=list(STATE_FILTERS),
        pages=max(1, -(-total // PAGE_SIZE)),
        refresh_seconds=REFRESH_SECONDS,
    )


@page(router, "GET", "/worklist/rows", permission=Permission.VIEW_WORKLIST)
def worklist_rows_fragment(
    request: Request,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    filters = WorklistFilter.of(request)
    rows, total = _worklist(ui, filters, viewer)
    fresh = ui.shown.new(ui.session_key(request), [r["study_instance_uid"] for r in rows])
    if fresh:
        ui.ctx.access.record(
            viewer.principal,
            AuditAction.VIEW,
            object_uids=fresh,
            details={"page": "worklist", "refresh": True},
        )
    response = ui.render(request, "_worklist_rows.html", viewer, rows=rows)
    response.headers["X-Worklist-Total"] = str(total)
    return response


__all__ = ["PAGE_SIZE", "REFRESH_SECONDS", "STATE_FILTERS", "WorklistFilter", "router"]
