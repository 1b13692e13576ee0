"""One study: findings, heatmap image, reader verdicts and reading state."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from overread.audit import AuditAction, record_event
from overread.errors import OverreadError
from overread.findings import CHEXPERT_LABELS
from overread.security import Permission
from overread.service.db import utcnow
from overread.service.infer import request_gate_override
from overread.triage import ReadState, Verdict, get_item, record_feedback, set_read_state
from overread.web.ui.guard import Viewer, page, page_viewer
from overread.web.ui.pages.compare import priors_context
from overread.web.ui.pages.review import review_panel
from overread.web.ui.pages.viewer import VIEWER_CSP, viewer_context
from overread.web.ui.site import UserInterface, ui_of
from overread.web.ui.views import study_view

router = APIRouter(include_in_schema=False)

#: The research notice, written under the image (never over it).
RESEARCH_NOTICE = (
    "For research use, not for diagnosis: the heatmap shows where the model looked, "
    "not a segmentation."
)
#: What each verdict button says to a screen reader, before the finding's name.
VERDICT_NAMES = {
    Verdict.AGREE.value: "Agree with",
    Verdict.DISAGREE.value: "Disagree with",
    Verdict.UNCERTAIN.value: "Uncertain about",
}
#: Decisions whose heatmap the study page shows without being asked.
SHOWN_BY_DEFAULT = ("positive", "indeterminate")


def default_finding(
    findings: list[dict[str, Any]],
    asked: str,
    stored_overlays: Callable[[str], dict[str, str]] | None = None,
    study_instance_uid: str = "",
) -> str:
    """The finding whose AI layers the study page shows.

    The one ``asked`` for (any finding of the study, negative ones included);
    otherwise the most probable positive or indeterminate finding, one with a stored
    overlay first; otherwise none: a study without a positive or indeterminate
    finding opens on the image alone.
    """
    labels = [str(f["label"]) for f in findings]
    if asked in labels:
        return asked
    flagged = [
        str(f["label"])
        for f in sorted(findings, key=lambda f: -float(f.get("probability") or 0.0))
        if f.get("decision") in SHOWN_BY_DEFAULT and f["label"] != "No Finding"
    ]
    if not flagged:
        return ""
    overlays = stored_overlays(study_instance_uid) if stored_overlays is not None else {}
    return next((label for label in flagged if label in overlays), flagged[0])


def finding_caption(view: dict[str, Any], shown: str) -> str:
    """The shown finding's caption: ``"Pneumothorax: p = 0.93 (threshold 0.50), positive"``."""
    found = next((f for f in view["findings"] if f["label"] == shown), None)
    if found is None:
        return ""
    threshold = found.get("threshold")
    limit = f" (threshold {float(threshold):.2f})" if threshold is not None else ""
    return f"{shown}: p = {float(found['probability']):.2f}{limit}, {found['decision_text']}"


@page(router, "GET", "/studies/{study_instance_uid}", permission=Permission.VIEW_RESULTS)
def study(
    request: Request,
    study_instance_uid: str,
    finding: str = "",
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    now = utcnow()
    try:
        with ui.ctx.database.session() as session:
            item = get_item(session, study_instance_uid)
            view = study_view(session, ui.ctx.service.store, item, viewer.principal, now=now)
    except KeyError:
        return ui.error_page(
            request, viewer, 404, "Study not found", "This study is not on the worklist."
        )
    shown = default_finding(
        view["findings"], finding, ui.images.stored_overlays, study_instance_uid
    )
    caption = finding_caption(view, shown)
    ui.ctx.access.record(
        viewer.principal,
        AuditAction.VIEW,
        object_uids=[study_instance_uid],
        details={"page": "study"},
    )
    response = ui.render(
        request,
        "study.html",
        viewer,
        study=view,
        shown_finding=shown,
        image_url=f"/studies/{quote(study_instance_uid)}/image.png"
        + (f"?finding={quote(shown)}" if shown else "?plain=1"),
        caption=caption,
        research_notice=RESEARCH_NOTICE,
        verdicts=[v.value for v in (Verdict.AGREE, Verdict.DISAGREE, Verdict.UNCERTAIN)],
        verdict_names=VERDICT_NAMES,
        message=request.query_params.get("saved", ""),
        review=review_panel(ui, study_instance_uid),
        **viewer_context(ui, study_instance_uid, shown),
        **priors_context(ui, study_instance_uid),
    )
    response.headers["Content-Security-Policy"] = VIEWER_CSP
    return response


@page(router, "GET", "/studies/{study_instance_uid}/image.png", permission=Permission.VIEW_RESULTS)
def study_image(
    study_instance_uid: str,
    finding: str = "",
    plain: bool = False,
    ui: UserInterface = Depends(ui_of),
) -> Response:
    """The study's image with the heatmap of ``finding`` (``plain``: the image alone)."""
    if finding and finding not in CHEXPERT_LABELS:
        return Response(status_code=404, headers={"Cache-Control": "no-store"})
    try:
        image = (
            ui.images.plain(study_instance_uid)
            if plain and not finding
            else ui.images.render(study_instance_uid, finding or None)
        )
    except KeyError:
        return Response(status_code=404, headers={"Cache-Control": "no-store"})
    return Response(
        image.png,
        media_type="image/png",
        headers={
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
            "X-Overread-Image-Source": image.source,
            "X-Overread-Image-Finding": image.finding or "",
        },
    )


@page(router, "POST", "/studies/{study_instance_uid}/feedback", permission=Permission.GIVE_FEEDBACK)
async def feedback(
    request: Request,
    study_instance_uid: str,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    fields = await ui.guard.form(request, viewer)
    finding = fields.get("finding", "")
    verdict = fields.get("verdict", "")
    try:
        with ui.ctx.database.session() as session:
            record_feedback(
                session,
                study_instance_uid,
                finding,
                verdict,
                reader=viewer.username,
                role=viewer.role,
                now=utcnow(),
            )
    except KeyError:
        return ui.error_page(
            request, viewer, 404, "Study not found", "This study is not on the worklist."
        )
    except OverreadError as exc:
        return ui.error_page(request, viewer, 400, "Feedback not saved", str(exc))
    query = urlencode({"finding": finding, "saved": f"{finding}: {verdict}"})
    return RedirectResponse(
        f"/studies/{quote(study_instance_uid)}?{query}#finding-actions", status_code=303
    )


@page(router, "POST", "/studies/{study_instance_uid}/state", permission=Permission.GIVE_FEEDBACK)
async def reading_state(
    request: Request,
    study_instance_uid: str,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    fields = await ui.guard.form(request, viewer)
    state = fields.get("state", "")
    try:
        with ui.ctx.database.session() as session:
            set_read_state(session, study_instance_uid, state, reader=viewer.username, now=utcnow())
            record_event(
                session,
                actor=viewer.username,
                role=viewer.role,
                action=AuditAction.FEEDBACK,
                object_uids=[study_instance_uid],
                details={"event": "read-state", "state": state, "via": "session"},
            )
    except KeyError:
        return ui.error_page(
            request, viewer, 404, "Study not found", "This study is not on the worklist."
        )
    except OverreadError as exc:
        return ui.error_page(request, viewer, 400, "State not changed", str(exc))
    target = "/" if state == ReadState.READ.value else f"/studies/{quote(study_instance_uid)}"
    return RedirectResponse(target, status_code=303)


@page(
    router,
    "POST",
    "/studies/{study_instance_uid}/analyse-anyway",
    permission=Permission.GIVE_FEEDBACK,
)
async def analyse_anyway(
    request: Request,
    study_instance_uid: str,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    """ "Analyse anyway" for a study the input gate refused: audited, result marked
    outside the model's intended use."""
    await ui.guard.form(request, viewer)
    job_ids = request_gate_override(ui.ctx.database, study_instance_uid)
    if not job_ids:
        return ui.error_page(
            request,
            viewer,
            409,
            "Nothing to analyse",
            "The input gate refused nothing of this study (or its analysis is already queued).",
        )
    ui.ctx.access.record(
        viewer.principal,
        AuditAction.GATE_OVERRIDE,
        object_uids=[study_instance_uid],
        details={"jobs": job_ids, "via": "session"},
    )
    ui.ctx.service.wake_workers()
    query = urlencode({"saved": "analysis requested (outside the model's intended use)"})
    return RedirectResponse(f"/studies/{quote(study_instance_uid)}?{query}", status_code=303)


__all__ = ["router"]
