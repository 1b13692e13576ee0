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
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse
from starlette.concurrency import run_in_threadpool

from overread.audit import AuditAction
from overread.security import Permission
from overread.service.priors import (
    GatewayPriors,
    PacsPriors,
    PatientMismatchError,
    PriorSource,
    PriorStudy,
    StudyFacts,
    compare_studies,
    list_priors,
    merge_priors,
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

#: How long the study page waits for each query peer's C-FIND answer, in seconds: a
#: slow PACS never holds the page up (the gateway's own priors are on it already, and
#: the PACS's are asked for after the page has loaded).
PACS_PRIORS_TIMEOUT = 5.0
#: How long a C-MOVE of a prior to the gateway may take, in seconds.
PACS_RETRIEVE_TIMEOUT = 120.0


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
    identified = bool(facts.patient.patient_id) and facts.patient.issuer is not None
    return {
        "priors": rows,
        "priors_checked": True,
        "priors_identified": identified,
        # The query peers are asked after the page loads (a C-FIND answer carries no
        # issuer: only a study without one can have its PACS priors confirmed).
        "priors_pacs_url": (
            f"/studies/{quote(study_instance_uid, safe='')}/priors/pacs"
            if identified and facts.patient.issuer == "" and ui.ctx.service.config.query_peers
            else ""
        ),
    }


def _facts(ui: UserInterface, study_instance_uid: str) -> StudyFacts:
    with ui.ctx.database.session() as session:
        item = get_item(session, study_instance_uid)
        return study_facts(session, ui.ctx.service.store, item)


def _pacs_priors(
    ui: UserInterface, study_instance_uid: str
) -> tuple[StudyFacts, list[PriorStudy], list[str]]:
    """The priors only the query peers hold (C-FIND, capped by PACS_PRIORS_TIMEOUT),
    and what each peer that could not be asked said."""
    facts = _facts(ui, study_instance_uid)
    with ui.ctx.database.session() as session:
        held = list_priors(facts, [GatewayPriors(session, ui.ctx.service.store)])
    found, failures = PacsPriors(config=ui.ctx.service.config, timeout=PACS_PRIORS_TIMEOUT).search(
        facts
    )
    merged = merge_priors([held, found])
    return facts, [p for p in merged if p.source is PriorSource.PACS], failures


@page(
    router,
    "GET",
    "/studies/{study_instance_uid}/priors/pacs",
    permission=Permission.VIEW_RESULTS,
)
async def pacs_priors_fragment(
    request: Request,
    study_instance_uid: str,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    """The rows of the patient's earlier studies held at the PACS only (an HTML
    fragment the study page asks for once it has loaded), each with a retrieve
    action where the role may bring studies in."""
    try:
        _, priors, failures = await run_in_threadpool(_pacs_priors, ui, study_instance_uid)
    except KeyError:
        return Response(status_code=404, headers={"Cache-Control": "no-store"})
    ui.ctx.access.record(
        viewer.principal,
        AuditAction.QUERY,
        object_uids=[study_instance_uid, *(p.study_instance_uid for p in priors)],
        details={"view": "pacs-priors", "peers_failed": len(failures)},
    )
    uid = quote(study_instance_uid, safe="")
    rows = [
        {
            "study_instance_uid": p.study_instance_uid,
            "study_date": p.study_date.isoformat() if p.study_date else "",
            "exam": " ".join(part for part in (p.modality, p.description) if part),
            "retrieve_url": f"/studies/{uid}/priors/{quote(p.study_instance_uid, safe='')}"
            "/retrieve",
        }
        for p in priors
    ]
    response = ui.render(
        request, "_priors_pacs.html", viewer, pacs_priors=rows, pacs_failures=failures
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _retrieve(ui: UserInterface, study_instance_uid: str, prior_uid: str) -> str:
    """C-MOVE ``prior_uid`` from the query peer that holds it to the gateway, once the
    peer confirms it is the same patient's; what was done, in words."""
    from overread.service.retrieve import QueryRetrieveError, find_studies, move_study

    config = ui.ctx.service.config
    facts = _facts(ui, study_instance_uid)
    patient = facts.patient
    if not patient.patient_id or patient.issuer != "":
        raise QueryRetrieveError("the prior cannot be matched to this patient")
    errors: list[str] = []
    for peer in config.query_peers:
        try:
            found = find_studies(
                peer,
                calling_ae=config.ae_title,
                timeout=PACS_PRIORS_TIMEOUT,
                StudyInstanceUID=prior_uid,
                PatientID=patient.patient_id,
            )
        except QueryRetrieveError as exc:
            errors.append(str(exc))
            continue
        if not any(
            s.study_instance_uid == prior_uid and s.patient_id == patient.patient_id for s in found
        ):
            continue
        outcome = move_study(
            peer,
            prior_uid,
            config.ae_title,
            calling_ae=config.ae_title,
            timeout=PACS_RETRIEVE_TIMEOUT,
        )
        failed = f", {outcome.failed} failed" if outcome.failed else ""
        return f"{outcome.completed} image(s) of the prior retrieved from {peer.name}{failed}"
    raise QueryRetrieveError(
        "no query peer holds this prior for this patient"
        + (f" ({'; '.join(errors)})" if errors else "")
    )


@page(
    router,
    "POST",
    "/studies/{study_instance_uid}/priors/{prior_instance_uid}/retrieve",
    permission=Permission.INGEST,
)
async def retrieve_prior(
    request: Request,
    study_instance_uid: str,
    prior_instance_uid: str,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    """Bring a prior held at the PACS to the gateway (C-MOVE to its own AE title);
    it then arrives, is analysed and listed like any study. Audited."""
    from overread.errors import OverreadError

    await ui.guard.form(request, viewer)
    try:
        said = await run_in_threadpool(_retrieve, ui, study_instance_uid, prior_instance_uid)
    except KeyError:
        return ui.error_page(
            request, viewer, 404, "Study not found", "This study is not on the worklist."
        )
    except OverreadError as exc:
        ui.ctx.access.record(
            viewer.principal,
            AuditAction.QUERY,
            object_uids=[study_instance_uid, prior_instance_uid],
            details={"retrieve": "c-move", "error": str(exc)},
        )
        return ui.error_page(request, viewer, 502, "Prior not retrieved", str(exc))
    ui.ctx.access.record(
        viewer.principal,
        AuditAction.QUERY,
        object_uids=[study_instance_uid, prior_instance_uid],
        details={"retrieve": "c-move", "outcome": said},
    )
    query = urlencode({"saved": said})
    return RedirectResponse(
        f"/studies/{quote(study_instance_uid, safe='')}?{query}#priors", status_code=303
    )


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
