"""Feedback routes: a reader's verdict per finding, the list, and the labelled export.

The export is the retraining dataset (CheXpert-format CSV, most informative cases
first). It carries Patient IDs, which patient-level splits need; for a role without
``view_phi`` the column is present but empty. Every export is audited (``export``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path as FilePath
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select

from overread.audit import AuditAction
from overread.errors import OverreadError
from overread.security import Permission, Principal
from overread.service.db import utcnow
from overread.triage.feedback import KEY_COLUMNS, export_feedback, record_feedback
from overread.triage.schema import Feedback
from overread.web.api.guards import caller, context, invalid, not_found, page_params, route
from overread.web.api.schemas import UID_PATTERN, FeedbackOut, FeedbackRequest, Page
from overread.web.context import WebContext


def feedback_out(row: Feedback) -> FeedbackOut:
    """The API view of a feedback row."""
    return FeedbackOut(
        id=row.id,
        study_instance_uid=row.study_instance_uid,
        finding=row.finding,
        verdict=row.verdict,
        label=row.label,
        probability=row.probability,
        threshold=row.threshold,
        threshold_proximity=row.threshold_proximity,
        reader=row.reader,
        created_at=row.created_at,
    )


def _without_patient_ids(csv_text: str) -> str:
    import csv
    import io

    rows = list(csv.reader(io.StringIO(csv_text)))
    if not rows:
        return csv_text
    column = rows[0].index(KEY_COLUMNS[1]) if KEY_COLUMNS[1] in rows[0] else None
    out = io.StringIO()
    writer = csv.writer(out)
    for i, row in enumerate(rows):
        if column is not None and i > 0 and column < len(row):
            row[column] = ""
        writer.writerow(row)
    return out.getvalue()


router = APIRouter(prefix="/api", tags=["feedback"])


@route(
    router,
    "POST",
    "/studies/{study_instance_uid}/feedback",
    response_model=FeedbackOut,
    status_code=201,
    permission=Permission.GIVE_FEEDBACK,
    responses={
        404: {"description": "The study is not on the worklist"},
        422: {"description": "Unknown finding, or a verdict the finding does not allow"},
    },
)
def post_feedback(
    body: FeedbackRequest,
    study_instance_uid: str = Path(pattern=UID_PATTERN, description="Study Instance UID"),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> FeedbackOut:
    """Record the caller's verdict on one finding (stored with who and when, audited)."""
    with ctx.database.session() as session:
        try:
            row = record_feedback(
                session,
                study_instance_uid,
                body.finding,
                body.verdict,
                reader=who.username,
                role=who.role.value,
                now=utcnow(),
                label=None if body.label is None else float(body.label),
            )
        except KeyError:
            raise not_found(f"study {study_instance_uid} on the worklist") from None
        except OverreadError as exc:
            raise invalid(str(exc)) from None
        return feedback_out(row)


@route(
    router, "GET", "/feedback", response_model=Page[FeedbackOut], permission=Permission.VIEW_RESULTS
)
def list_feedback(
    study: str | None = Query(default=None, pattern=UID_PATTERN),
    reader: str | None = Query(default=None, max_length=128),
    finding: str | None = Query(default=None, max_length=64),
    page: tuple[int, int] = Depends(page_params(100)),
    ctx: WebContext = Depends(context),
) -> Page[FeedbackOut]:
    """Verdicts, newest first, filtered by study, reader or finding."""
    limit, offset = page
    conditions: list[Any] = []
    if study:
        conditions.append(Feedback.study_instance_uid == study)
    if reader:
        conditions.append(Feedback.reader == reader)
    if finding:
        conditions.append(Feedback.finding == finding)
    with ctx.database.session() as session:
        total = session.scalar(select(func.count()).select_from(Feedback).where(*conditions))
        rows = session.scalars(
            select(Feedback)
            .where(*conditions)
            .order_by(Feedback.created_at.desc(), Feedback.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
        items = [feedback_out(r) for r in rows]
    return Page[FeedbackOut](items=items, total=int(total or 0), limit=limit, offset=offset)


@route(
    router,
    "GET",
    "/feedback/export",
    response_class=PlainTextResponse,
    permission=Permission.EXPORT_RESULTS,
    responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}}}},
)
def export(
    order: Literal["margin", "proximity", "uncertainty"] = Query(
        default="margin",
        description='Active-learning order ("uncertainty" is the former name of "proximity")',
    ),
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
) -> PlainTextResponse:
    """The labelled dataset as CSV, the cases the model was least sure of first."""
    access = ctx.access
    with tempfile.TemporaryDirectory(prefix="overread-feedback-") as tmp:
        target = FilePath(tmp) / "feedback.csv"
        with ctx.database.session() as session:
            count = export_feedback(session, target, order=order)
        text = target.read_text(encoding="utf-8")
    identified = who.can(Permission.VIEW_PHI)
    if not identified:
        text = _without_patient_ids(text)
    access.record(
        who,
        AuditAction.EXPORT,
        details={"export": "feedback", "studies": count, "order": order, "phi": identified},
    )
    return PlainTextResponse(
        text,
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="feedback.csv"'},
    )


__all__ = ["feedback_out"]
