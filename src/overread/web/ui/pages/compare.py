"""Priors on the study page, and the comparison page: a study beside one of its priors.

The study page lists the patient's earlier studies (:func:`priors_context`, shown by
``_priors.html``); ``/studies/{uid}/compare/{prior_uid}`` shows both images side by
side in the viewer bundle (two linked Cornerstone3D viewports) with the change list
of :func:`overread.service.priors.compare_studies`. A prior of another patient is
refused (409), never shown.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request, Response

from overread.audit import AuditAction
from overread.security import Permission
from overread.service.priors import (
    GatewayPriors,
    PatientMismatchError,
    PriorStudy,
    compare_studies,
    list_priors,
    study_facts,
)
from overread.triage import get_item
from overread.web.api.priors import compare_url
from overread.web.ui.guard import Viewer, page, page_viewer
from overread.web.ui.pages.viewer import (
    BUILD_HINT,
    BUNDLE_URL,
    VIEWER_CSP,
    bundle_built,
    window_presets,
)
from overread.web.ui.site import UserInterface, ui_of

router = APIRouter(include_in_schema=False)


def priors_context(ui: UserInterface, study_instance_uid: str) -> dict[str, Any]:
    """What ``_priors.html`` needs: the patient's earlier studies, newest first."""
    priors: list[PriorStudy] = []
    with ui.ctx.database.session() as session:
        try:
            item = get_item(session, study_instance_uid)
        except KeyError:
            return {"priors": [], "priors_checked": False}
        facts = study_facts(session, ui.ctx.service.store, item)
        priors = list_priors(facts, [GatewayPriors(session, ui.ctx.service.store)])
    rows = [
        {
            "study_instance_uid": p.study_instance_uid,
            "study_date": p.study_date.isoformat() if p.study_date else "",
            "source": p.source.value,
            "exam": " ".join(part for part in (p.modality, p.description) if part),
            "summary": p.summary.text if p.summary else "not analysed here",
            "critical": list(p.summary.critical) if p.summary else [],
            "compare_url": compare_url(study_instance_uid, p.study_instance_uid) if p.held else "",
        }
        for p in priors
    ]
    return {
        "priors": rows,
        "priors_checked": True,
        "priors_identified": bool(facts.patient.patient_id) and facts.patient.issuer is not None,
    }


def _reference(ui: UserInterface, study_instance_uid: str) -> str:
    try:
        source, _alias, _version = ui.images.reference(study_instance_uid)
    except KeyError:
        return ""
    return source.sop_instance_uid if source is not None else ""


@page(
    router,
    "GET",
    "/studies/{study_instance_uid}/compare/{prior_instance_uid}",
    permission=Permission.VIEW_RESULTS,
)
def comparison_page(
    request: Request,
    study_instance_uid: str,
    prior_instance_uid: str,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    try:
        with ui.ctx.database.session() as session:
            comparison = compare_studies(
                session, ui.ctx.service.store, study_instance_uid, prior_instance_uid
            )
    except KeyError:
        return ui.error_page(
            request,
            viewer,
            404,
            "Study not found",
            "One of the two studies is not on the worklist.",
        )
    except PatientMismatchError as exc:
        return ui.error_page(request, viewer, 409, "Not the same patient", str(exc))
    ui.ctx.access.record(
        viewer.principal,
        AuditAction.VIEW,
        object_uids=[study_instance_uid, prior_instance_uid],
        details={"page": "comparison"},
    )

    def metadata(uid: str) -> str:
        return f"/dicom-web/studies/{quote(uid, safe='')}/metadata"

    response = ui.render(
        request,
        "compare.html",
        viewer,
        comparison=comparison,
        current_url=f"/studies/{quote(study_instance_uid, safe='')}",
        viewer_built=bundle_built(),
        viewer_bundle_url=BUNDLE_URL,
        viewer_build_hint=BUILD_HINT,
        compare_current_metadata=metadata(study_instance_uid),
        compare_prior_metadata=metadata(prior_instance_uid),
        compare_current_reference=_reference(ui, study_instance_uid),
        compare_prior_reference=_reference(ui, prior_instance_uid),
        viewer_presets=json.dumps(window_presets()),
        viewer_presets_list=window_presets(),
    )
    response.headers["Content-Security-Policy"] = VIEWER_CSP
    return response


__all__ = ["priors_context", "router"]
