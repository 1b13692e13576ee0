"""Job routes: the queue, one job, requeueing, and the dead letters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from sqlalchemy import func, select

from overread.audit import AuditAction
from overread.security import Permission, Principal
from overread.service.db import Job, JobKind, JobState
from overread.service.jobs import job_to_dict
from overread.web.api.guards import caller, context, not_found, page_params, route
from overread.web.api.schemas import UID_PATTERN, JobOut, Page, RequeueOut
from overread.web.context import WebContext


def _page(ctx: WebContext, conditions: list[Any], limit: int, offset: int) -> Page[JobOut]:
    with ctx.database.session() as session:
        total = session.scalar(select(func.count()).select_from(Job).where(*conditions)) or 0
        rows = session.scalars(
            select(Job).where(*conditions).order_by(Job.id.desc()).limit(limit).offset(offset)
        ).all()
        items = [JobOut.model_validate(job_to_dict(j)) for j in rows]
    return Page[JobOut](items=items, total=int(total), limit=limit, offset=offset)


router = APIRouter(prefix="/api", tags=["jobs"])


@route(router, "GET", "/jobs", response_model=Page[JobOut], permission=Permission.VIEW_RESULTS)
def list_jobs(
    state: JobState | None = Query(default=None, description="Only jobs in this state"),
    kind: JobKind | None = Query(default=None, description="infer or export"),
    study: str | None = Query(default=None, pattern=UID_PATTERN, description="Study Instance UID"),
    page: tuple[int, int] = Depends(page_params(200)),
    ctx: WebContext = Depends(context),
) -> Page[JobOut]:
    """Jobs, newest first, filtered by state, kind or study."""
    conditions: list[Any] = []
    if state is not None:
        conditions.append(Job.state == state.value)
    if kind is not None:
        conditions.append(Job.kind == kind.value)
    if study:
        conditions.append(Job.study_instance_uid == study)
    return _page(ctx, conditions, *page)


@route(router, "GET", "/jobs/{job_id}", response_model=JobOut, permission=Permission.VIEW_RESULTS)
def get_job(job_id: int = Path(ge=1, le=2**31 - 1), ctx: WebContext = Depends(context)) -> JobOut:
    """One job."""
    service = ctx.service
    job = service.queue.get(job_id)
    if job is None:
        raise not_found(f"job {job_id}")
    return JobOut.model_validate(job_to_dict(job))


@route(
    router,
    "POST",
    "/jobs/{job_id}/requeue",
    response_model=RequeueOut,
    permission=Permission.MANAGE_CONFIG,
    responses={409: {"description": "The job is not failed or dead-lettered"}},
)
def requeue(
    job_id: int = Path(ge=1, le=2**31 - 1),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> RequeueOut:
    """Put a dead-lettered (or failed) job back in the queue with fresh attempts."""
    access = ctx.access
    service = ctx.service
    if service.queue.get(job_id) is None:
        raise not_found(f"job {job_id}")
    if not service.queue.requeue(job_id):
        raise HTTPException(status_code=409, detail="job is not failed or dead-lettered")
    access.record(who, AuditAction.CONFIG_CHANGE, details={"change": "requeue", "job_id": job_id})
    service.wake_workers()
    return RequeueOut(id=job_id, state=JobState.QUEUED.value)


@route(
    router, "GET", "/dead-letters", response_model=Page[JobOut], permission=Permission.VIEW_RESULTS
)
def dead_letters(
    kind: JobKind | None = Query(default=None, description="infer or export"),
    page: tuple[int, int] = Depends(page_params(200)),
    ctx: WebContext = Depends(context),
) -> Page[JobOut]:
    """Jobs that ran out of attempts, newest first, with their last error."""
    conditions: list[Any] = [Job.state == JobState.DEAD_LETTERED.value]
    if kind is not None:
        conditions.append(Job.kind == kind.value)
    return _page(ctx, conditions, *page)


__all__ = ["router"]
