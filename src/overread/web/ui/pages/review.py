"""The study page's review controls: Accept, Edit (a finding's decision, a note) and
Reject, for readers who may verify results (``verify_results``).

The form posts here; the action is the REST API's (:func:`overread.web.api.review.apply_review`),
so the page and ``POST /api/studies/{uid}/review`` hold, release, correct and audit alike.
After the action the study page is shown again from its top, the patient header in view.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import RedirectResponse
from pydantic import ValidationError

from overread.security import Permission
from overread.web.api.review import ReviewIn, ReviewOut, apply_review, study_review
from overread.web.ui.guard import Viewer, page, page_viewer
from overread.web.ui.site import UserInterface, ui_of

router = APIRouter(include_in_schema=False)

#: What the panel says of each review state.
STATE_TEXT = {
    "unreviewed": "AI result sent unverified",
    "pending": "AI result pending review: nothing has been sent",
    "accepted": "Verified",
    "edited": "Verified with changes",
    "rejected": "Rejected: nothing was sent",
    "released": "Review overdue: sent unverified",
}


def review_panel(ui: UserInterface, study_instance_uid: str) -> dict[str, Any]:
    """What the study page's review panel shows: the study's overall review state and
    each result's, and whether a reader can still accept, edit or reject."""
    review: ReviewOut = study_review(ui.ctx, study_instance_uid)
    states = [r.state for r in review.results]
    if not states:
        return {"state": "", "results": [], "text": "", "can_reject": False, "seen": ""}
    state = next(
        (s for s in ("pending", "rejected", "released", "unreviewed") if s in states), states[0]
    )
    return {
        "state": state,
        "text": STATE_TEXT.get(state, state),
        "results": [r.model_dump() for r in review.results],
        # The results this page shows, sent back with the verdict: a verdict on a study
        # whose results changed since is refused rather than applied to unseen ones.
        "seen": ",".join(f"{r.result_id}:{r.version}" for r in review.results),
        "can_accept": state in ("pending", "unreviewed", "released"),
        "can_edit": state != "rejected",
        "can_reject": state == "pending",
    }


def _seen(text: str) -> list[dict[str, Any]]:
    """The results a form names (``"id:version,id:version"``); malformed pairs are
    left out (and an empty list is refused by :class:`ReviewIn`)."""
    seen: list[dict[str, Any]] = []
    for pair in text.split(","):
        rid, _, version = pair.strip().partition(":")
        if rid.isdigit() and version:
            seen.append({"result_id": int(rid), "version": version})
    return seen


@page(router, "POST", "/studies/{study_instance_uid}/review", permission=Permission.VERIFY_RESULTS)
async def review(
    request: Request,
    study_instance_uid: str,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    """Accept, edit or reject the study's results from the study page."""
    fields = await ui.guard.form(request, viewer)
    finding, decision = fields.get("finding", ""), fields.get("decision", "")
    if fields.get("action", "") != "edit":
        # Only the edit form has a finding and a decision; an accept or a reject is
        # about every result as it is (a stray field is ignored, never split on).
        finding = decision = ""
    try:
        body = ReviewIn(
            action=fields.get("action", ""),
            results=_seen(fields.get("seen", "")),
            findings={finding: decision} if finding and decision else {},
            note=fields.get("note", ""),
            reason=fields.get("reason", ""),
        )
    except ValidationError as exc:
        message = "; ".join(str(e["msg"]) for e in exc.errors())
        return ui.error_page(request, viewer, 400, "Review not saved", message)
    try:
        done = apply_review(ui.ctx, study_instance_uid, body, viewer.principal)
    except HTTPException as exc:
        title = "Review not saved" if exc.status_code != 409 else "Review not saved: reload"
        return ui.error_page(request, viewer, exc.status_code, title, str(exc.detail))
    ui.ctx.service.wake_workers()
    states = ", ".join(sorted({r.state for r in done.results}))
    query = urlencode({"saved": f"review: {states}"})
    return RedirectResponse(f"/studies/{quote(study_instance_uid)}?{query}", status_code=303)


__all__ = ["STATE_TEXT", "review_panel", "router"]
