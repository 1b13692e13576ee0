"""The study page's image viewer: its script, and the AI layers it draws over the image.

The viewer itself is Cornerstone3D bundled into one script at set-up
(``scripts/setup.sh`` runs ``npm ci`` and ``npm run build`` in
``src/overread/web/viewer``); the gateway serves it at :data:`BUNDLE_URL` and
answers ``503`` with what to run when it was not built, and the study page then
says so instead of the viewer. Pixels come from the gateway's WADO-RS
(``/dicom-web``), which accepts the page's session cookie.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Response
from fastapi.responses import FileResponse, JSONResponse

from overread.findings import CHEXPERT_LABELS
from overread.imaging.transforms import WINDOW_PRESETS
from overread.security import Permission
from overread.web.routes import AUTHENTICATED
from overread.web.ui.guard import page
from overread.web.ui.site import PAGE_HEADERS, UserInterface, ui_of

router = APIRouter(include_in_schema=False)

#: Where the bundle is built (``npm run build`` in ``src/overread/web/viewer``).
BUNDLE = Path(__file__).resolve().parents[2] / "viewer" / "dist" / "overread-viewer.js"
#: Where the gateway serves it.
BUNDLE_URL = "/viewer/overread-viewer.js"
#: What to run when the bundle is missing.
BUILD_HINT = "run scripts/setup.sh (or: cd src/overread/web/viewer && npm ci && npm run build)"
#: The study page's policy: the UI's, plus what Cornerstone3D needs: its cursors are
#: blob: images and its measurement labels carry style attributes. Scripts stay 'self'.
VIEWER_CSP = (
    PAGE_HEADERS["Content-Security-Policy"]
    .replace("img-src 'self';", "img-src 'self' blob:;")
    .replace("style-src 'self';", "style-src 'self' 'unsafe-inline';")
)
_PRIVATE = {"Cache-Control": "private, no-store", "X-Content-Type-Options": "nosniff"}


def bundle_built() -> bool:
    """Whether the viewer's script was built."""
    return BUNDLE.is_file()


def window_presets() -> list[dict[str, Any]]:
    """The imaging core's window presets, as the viewer lists them (keys 1 to 9)."""
    return [
        {"name": name, "center": center, "width": width}
        for name, (center, width) in WINDOW_PRESETS.items()
    ][:9]


def viewer_context(ui: UserInterface, study_instance_uid: str, finding: str) -> dict[str, Any]:
    """What the study page's viewer partial needs (``viewer_*`` template variables)."""
    uid = quote(study_instance_uid, safe="")
    try:
        source, _alias, _version = ui.images.reference(study_instance_uid)
    except KeyError:
        source = None
    return {
        "viewer_built": bundle_built(),
        "viewer_bundle_url": BUNDLE_URL,
        "viewer_build_hint": BUILD_HINT,
        "viewer_dicomweb": "/dicom-web",
        "viewer_metadata_url": f"/dicom-web/studies/{uid}/metadata",
        "viewer_layers_url": (
            f"/studies/{uid}/layers.json?finding={quote(finding, safe='')}" if finding else ""
        ),
        "viewer_seg_url": f"/studies/{uid}/seg.json",
        "viewer_reference": source.sop_instance_uid if source is not None else "",
        "viewer_reference_frame": (
            f"/dicom-web/studies/{quote(source.study_instance_uid, safe='')}"
            f"/series/{quote(source.series_instance_uid, safe='')}"
            f"/instances/{quote(source.sop_instance_uid, safe='')}/frames/1"
            if source is not None
            else ""
        ),
        "viewer_presets": json.dumps(window_presets()),
        "viewer_presets_list": window_presets(),
    }


@page(router, "GET", BUNDLE_URL, permission=AUTHENTICATED)
def viewer_bundle() -> Response:
    if not bundle_built():
        return Response(
            f"// The overread viewer is not built: {BUILD_HINT}.\n",
            status_code=503,
            media_type="text/javascript",
            headers={"Cache-Control": "no-store", "X-Overread-Viewer": "not built"},
        )
    return FileResponse(BUNDLE, media_type="text/javascript", headers={"Cache-Control": "no-cache"})


def _finding_layers(ui: UserInterface, study_instance_uid: str, finding: str) -> Any:
    if finding not in CHEXPERT_LABELS:
        return None
    return ui.layers.layers(study_instance_uid, finding)


@page(
    router, "GET", "/studies/{study_instance_uid}/layers.json", permission=Permission.VIEW_RESULTS
)
def layers_json(
    study_instance_uid: str, finding: str = "", ui: UserInterface = Depends(ui_of)
) -> Response:
    """The AI layers of ``finding`` (heatmap URL, top-region contours and box) as JSON."""
    try:
        layers = _finding_layers(ui, study_instance_uid, finding)
    except KeyError:
        return JSONResponse({"detail": "study not found"}, status_code=404, headers=_PRIVATE)
    if layers is None:
        why = ui.layers.unavailable(study_instance_uid)
        body: dict[str, Any] = {
            "finding": finding,
            "heatmap_url": "",
            "note": f"No heatmap for {finding or 'this study'}: "
            + (why if why else "no model with explanations here."),
        }
        return JSONResponse(body, headers=_PRIVATE)
    url = f"/studies/{quote(study_instance_uid, safe='')}/heatmap-layer.png?finding={quote(finding, safe='')}"
    return JSONResponse(layers.as_json(url), headers=_PRIVATE)


@page(router, "GET", "/studies/{study_instance_uid}/seg.json", permission=Permission.VIEW_RESULTS)
def seg_json(study_instance_uid: str, ui: UserInterface = Depends(ui_of)) -> Response:
    """The segments of the study's stored DICOM SEG, outlined on their source images."""
    try:
        ui.images.reference(study_instance_uid)
    except KeyError:
        return JSONResponse({"detail": "study not found"}, status_code=404, headers=_PRIVATE)
    segments = ui.layers.segments(study_instance_uid)
    return JSONResponse({"segments": [s.as_json() for s in segments]}, headers=_PRIVATE)


@page(
    router,
    "GET",
    "/studies/{study_instance_uid}/heatmap-layer.png",
    permission=Permission.VIEW_RESULTS,
)
def heatmap_layer(
    study_instance_uid: str, finding: str = "", ui: UserInterface = Depends(ui_of)
) -> Response:
    """The heatmap of ``finding`` alone: cividis, alpha equal to the map's value."""
    try:
        layers = _finding_layers(ui, study_instance_uid, finding)
    except KeyError:
        layers = None
    if layers is None:
        return Response(status_code=404, headers=_PRIVATE)
    return Response(layers.heatmap_png, media_type="image/png", headers=_PRIVATE)


__all__ = [
    "BUNDLE",
    "BUNDLE_URL",
    "VIEWER_CSP",
    "bundle_built",
    "router",
    "viewer_context",
    "window_presets",
]
