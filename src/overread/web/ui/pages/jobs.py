"""The job queue for administrators: counts, dead letters, requeueing."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from overread.audit import AuditAction, record_event
from overread.security import Permission
from overread.service.db import JobState
from overread.web.ui.guard import Viewer, page, page_viewer
from overread.web.ui.site import UserInterface, ui_of
from overread.web.ui.views import Pager, job_rows

router = APIRouter(include_in_schema=False)

#: Jobs per page of the jobs table, by default and at most; dead letters listed at most.
JOB_ROWS = 50
JOB_ROWS_MAX = 500
DEAD_LETTER_ROWS = 50


@page(router, "GET", "/admin/jobs", permission=Permission.MANAGE_CONFIG)
def jobs(
    request: Request,
    state: str = "",
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    queue = ui.ctx.service.queue
    known = [s.value for s in JobState]
    chosen = state if state in known else ""
    counts = queue.counts()
    matching = counts.get(chosen, 0) if chosen else sum(counts.values())
    pager = Pager.of(request.query_params, matching, default=JOB_ROWS, most=JOB_ROWS_MAX)
    listed = job_rows(queue.list(state=chosen or None, limit=pager.limit, offset=pager.offset))
    dead = job_rows(queue.list(state=JobState.DEAD_LETTERED.value, limit=DEAD_LETTER_ROWS))
    destinations = queue.destination_health([d.name for d in ui.ctx.service.config.destinations])
    ui.ctx.access.record(viewer.principal, AuditAction.VIEW, details={"page": "jobs"})
    return ui.render(
        request,
        "jobs.html",
        viewer,
        jobs=listed,
        dead_letters=dead,
        counts=counts,
        destinations=destinations,
        states=known,
        chosen=chosen,
        pager=pager,
        dead_total=counts.get(JobState.DEAD_LETTERED.value, 0),
        message=request.query_params.get("requeued", ""),
    )


@page(router, "POST", "/admin/jobs/{job_id}/requeue", permission=Permission.MANAGE_CONFIG)
async def requeue(
    request: Request,
    job_id: int,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    service = ui.ctx.service
    await ui.guard.form(request, viewer)
    if not service.queue.requeue(job_id):
        return ui.error_page(
            request,
            viewer,
            409,
            "Not requeued",
            f"Job {job_id} is not failed or dead-lettered.",
        )
    with ui.ctx.database.session() as session:
        record_event(
            session,
            actor=viewer.username,
            role=viewer.role,
            action=AuditAction.CONFIG_CHANGE,
            object_uids=[str(job_id)],
            details={"event": "job-requeued", "job_id": job_id, "via": "session"},
        )
    service.wake_workers()
    return RedirectResponse(f"/admin/jobs?requeued={job_id}", status_code=303)


__all__ = ["DEAD_LETTER_ROWS", "JOB_ROWS", "JOB_ROWS_MAX", "router"]
