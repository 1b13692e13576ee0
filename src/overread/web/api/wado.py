"""DICOMweb WADO-RS: retrieve stored studies, series, instances, metadata, frames, pictures.

PS3.18 §10.4, for callers holding ``view_results``:

* ``/studies/{s}[/series/{se}[/instances/{i}]]``: the instances as
  ``multipart/related; type="application/dicom"``, as stored or in Explicit VR
  Little Endian (``transfer-syntax=1.2.840.10008.1.2.1``) when stored as Implicit;
  the files carry patient identity, so only roles that see it (``view_phi`` or
  ``export_results``) may retrieve them (``403`` for the others, audited);
* ``.../metadata``: every instance's header as DICOM JSON, without Pixel Data
  (patient and visit identifiers left out for roles that do not see them);
* ``.../instances/{i}/frames/{list}``: decoded frames as
  ``multipart/related; type="application/octet-stream"``;
* ``.../instances/{i}/rendered`` and ``.../frames/{n}/rendered``: a frame windowed as
  a reading screen shows it, ``image/jpeg`` (the default) or ``image/png``, with the
  ``window``, ``quality`` and ``viewport`` parameters.

An unknown study, series, instance or frame is a ``404``; a malformed UID, frame list
or rendering parameter a ``400``; an ``Accept`` the route cannot satisfy (another
media type, a transfer syntax that would need recompression, a frame no codec here
decodes) a ``406``. Every retrieval is audited (``view``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from overread.audit import AuditAction
from overread.security import Permission, Principal
from overread.service.dicomweb import (
    NotStoredError,
    QueryParameterError,
    StoredArchive,
    StoredInstance,
    strip_phi,
)
from overread.service.dicomweb.media import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    MediaType,
    Part,
    choose,
    multipart_parts,
    multipart_type,
    new_boundary,
)
from overread.service.dicomweb.rendering import (
    FrameDecodeError,
    frame_bytes,
    frame_count,
    parse_frame_list,
    parse_render_options,
    render_frame,
)
from overread.web.api.guards import caller, context, route
from overread.web.api.qido import archive, checked_uid, identified, require_json
from overread.web.context import WebContext
from overread.web.routes import Endpoint

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "A malformed UID, frame list or rendering parameter"},
    404: {"description": "No such study, series, instance or frame is stored"},
    406: {"description": "The Accept header names nothing this route can produce"},
}


def _responses(media: str, description: str) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "description": description,
            "content": {media: {"schema": {"type": "string", "format": "binary"}}},
        },
        **_ERRORS,
    }


_INSTANCES = _responses('multipart/related; type="application/dicom"', "The DICOM instances")
_METADATA = _responses("application/dicom+json", "Each instance's header, DICOM JSON")
_FRAMES = _responses('multipart/related; type="application/octet-stream"', "Decoded frames")
_RENDERED = _responses("image/jpeg", "The frame as a picture (image/jpeg or image/png)")


def _get(path: str, responses: dict[int | str, dict[str, Any]]) -> Callable[[Endpoint], Endpoint]:
    return route(router, "GET", path, permission=Permission.VIEW_RESULTS, responses=responses)


def _instances(
    store: StoredArchive, study: str, series: str | None = None, sop: str | None = None
) -> list[StoredInstance]:
    checked_uid(study, "Study Instance UID")
    if series is not None:
        checked_uid(series, "Series Instance UID")
    if sop is not None:
        checked_uid(sop, "SOP Instance UID")
    try:
        return store.instances(study, series, sop)
    except NotStoredError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


def _audit(
    ctx: WebContext, who: Principal, found: list[StoredInstance], resource: str, **details: Any
) -> None:
    ctx.access.record(
        who,
        AuditAction.VIEW,
        object_uids=sorted({i.study_instance_uid for i in found}),
        details={"view": "wado-rs", "resource": resource, "instances": len(found), **details},
    )


def _deny_files(request: Request, ctx: WebContext, who: Principal) -> None:
    ctx.access.record(
        who,
        AuditAction.ACCESS_DENIED,
        details={
            "permission": Permission.VIEW_PHI.value,
            "method": request.method,
            "path": request.url.path,
        },
    )
    raise HTTPException(
        status_code=403,
        detail=f"role {who.role.value!r} may not retrieve DICOM files (they carry patient "
        "identity); metadata, frames and rendered images are available",
    )


def _retrieve(
    request: Request,
    ctx: WebContext,
    who: Principal,
    store: StoredArchive,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> Response:
    choice = choose(request.headers.get("accept"), [MediaType.DICOM], multipart=True)
    if choice is None:
        raise HTTPException(
            status_code=406,
            detail='instances are available as multipart/related; type="application/dicom"',
        )
    found = _instances(store, study, series, sop)
    if not identified(who):
        _deny_files(request, ctx, who)
    wanted = choice.transfer_syntax
    try:
        refused = [i for i in found if not store.can_encode(i, wanted)]
    except NotStoredError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None
    if refused:
        raise HTTPException(
            status_code=406,
            detail=f"instance {refused[0].sop_instance_uid} is stored as "
            f"{store.transfer_syntax(refused[0])} and cannot be given as {wanted} "
            "(ask for transfer-syntax=* to receive it as stored)",
        )
    for instance in found:  # a file gone from the store is a 404 before anything is sent
        try:
            store.path(instance)
        except NotStoredError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
    boundary = new_boundary()
    parts = [
        Part(
            f"{MediaType.DICOM.value}; transfer-syntax="
            + (wanted if wanted not in (None, "*") else store.transfer_syntax(i)),
            partial(store.part10, i, wanted),
        )
        for i in found
    ]
    _audit(ctx, who, found, "instances", transfer_syntax=wanted or "*")
    return StreamingResponse(
        multipart_parts(parts, boundary),
        media_type=multipart_type(MediaType.DICOM.value, boundary),
    )


def _metadata(
    request: Request,
    ctx: WebContext,
    who: Principal,
    store: StoredArchive,
    study: str,
    series: str | None = None,
    sop: str | None = None,
) -> JSONResponse:
    require_json(request)
    found = _instances(store, study, series, sop)
    sees_identity = identified(who)
    body: list[dict[str, Any]] = []
    for instance in found:
        try:
            header = store.header(instance)
        except NotStoredError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from None
        shown = header if sees_identity else strip_phi(header)
        body.append(shown.to_json_dict(bulk_data_threshold=1024))
    _audit(ctx, who, found, "metadata", identified=sees_identity)
    return JSONResponse(body, media_type=MediaType.DICOM_JSON.value)


def _one_instance(
    store: StoredArchive, study: str, series: str, sop: str
) -> tuple[StoredInstance, int]:
    [instance] = _instances(store, study, series, sop)
    try:
        return instance, frame_count(store.header(instance))
    except NotStoredError as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from None


def _check_frames(numbers: list[int], count: int, sop: str) -> None:
    if count == 0:
        raise HTTPException(status_code=404, detail=f"instance {sop} has no frames")
    beyond = [n for n in numbers if n > count]
    if beyond:
        raise HTTPException(
            status_code=404, detail=f"instance {sop} has {count} frame(s); no frame {beyond[0]}"
        )


def _frames(
    request: Request,
    ctx: WebContext,
    who: Principal,
    store: StoredArchive,
    study: str,
    series: str,
    sop: str,
    frame_list: str,
) -> Response:
    choice = choose(request.headers.get("accept"), [MediaType.OCTET_STREAM], multipart=True)
    if choice is None or choice.transfer_syntax not in (None, "*", EXPLICIT_VR_LITTLE_ENDIAN):
        raise HTTPException(
            status_code=406,
            detail='frames are available as multipart/related; type="application/octet-stream" '
            "(decoded, little endian)",
        )
    try:
        numbers = parse_frame_list(frame_list)
    except QueryParameterError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    instance, count = _one_instance(store, study, series, sop)
    _check_frames(numbers, count, sop)
    path = store.path(instance)
    try:  # decode before answering, so a frame no codec here reads is a 406, not a cut body
        frames = [frame_bytes(path, n - 1) for n in numbers]
    except FrameDecodeError as exc:
        raise HTTPException(status_code=406, detail=str(exc)) from None
    boundary = new_boundary()
    parts = [
        Part(MediaType.OCTET_STREAM.value, partial(bytes, data), location=f"{request.url.path}")
        for data in frames
    ]
    _audit(ctx, who, [instance], "frames", frames=numbers[:50])
    return StreamingResponse(
        multipart_parts(parts, boundary),
        media_type=multipart_type(
            MediaType.OCTET_STREAM.value, boundary, EXPLICIT_VR_LITTLE_ENDIAN
        ),
    )


def _rendered(
    request: Request,
    ctx: WebContext,
    who: Principal,
    store: StoredArchive,
    study: str,
    series: str,
    sop: str,
    frame: str = "1",
) -> Response:
    choice = choose(request.headers.get("accept"), [MediaType.JPEG, MediaType.PNG], multipart=False)
    if choice is None:
        raise HTTPException(
            status_code=406, detail="rendered frames are available as image/jpeg or image/png"
        )
    try:
        numbers = parse_frame_list(frame)
        if len(numbers) != 1:
            raise QueryParameterError("a rendered frame is one frame number")
        options = parse_render_options(request.query_params.multi_items())
    except QueryParameterError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    instance, count = _one_instance(store, study, series, sop)
    _check_frames(numbers, count, sop)
    try:
        picture = render_frame(
            store.path(instance), store.header(instance), numbers[0] - 1, choice.media_type, options
        )
    except FrameDecodeError as exc:
        raise HTTPException(status_code=406, detail=str(exc)) from None
    _audit(ctx, who, [instance], "rendered", frame=numbers[0], media_type=choice.media_type.value)
    return Response(picture, media_type=choice.media_type.value)


_STUDY = "/studies/{study_instance_uid}"
_SERIES = _STUDY + "/series/{series_instance_uid}"
_INSTANCE = _SERIES + "/instances/{sop_instance_uid}"


@_get(_STUDY, _INSTANCES)
async def retrieve_study(
    request: Request,
    study_instance_uid: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> Response:
    """WADO-RS: every stored instance of a study."""
    return await run_in_threadpool(_retrieve, request, ctx, who, store, study_instance_uid)


@_get(_SERIES, _INSTANCES)
async def retrieve_series(
    request: Request,
    study_instance_uid: str,
    series_instance_uid: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> Response:
    """WADO-RS: every stored instance of a series."""
    return await run_in_threadpool(
        _retrieve, request, ctx, who, store, study_instance_uid, series_instance_uid
    )


@_get(_INSTANCE, _INSTANCES)
async def retrieve_instance(
    request: Request,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> Response:
    """WADO-RS: one stored instance."""
    return await run_in_threadpool(
        _retrieve,
        request,
        ctx,
        who,
        store,
        study_instance_uid,
        series_instance_uid,
        sop_instance_uid,
    )


@_get(_STUDY + "/metadata", _METADATA)
async def study_metadata(
    request: Request,
    study_instance_uid: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> JSONResponse:
    """WADO-RS: the headers of a study's instances (no Pixel Data)."""
    return await run_in_threadpool(_metadata, request, ctx, who, store, study_instance_uid)


@_get(_SERIES + "/metadata", _METADATA)
async def series_metadata(
    request: Request,
    study_instance_uid: str,
    series_instance_uid: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> JSONResponse:
    """WADO-RS: the headers of a series' instances (no Pixel Data)."""
    return await run_in_threadpool(
        _metadata, request, ctx, who, store, study_instance_uid, series_instance_uid
    )


@_get(_INSTANCE + "/metadata", _METADATA)
async def instance_metadata(
    request: Request,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> JSONResponse:
    """WADO-RS: one instance's header (no Pixel Data)."""
    return await run_in_threadpool(
        _metadata,
        request,
        ctx,
        who,
        store,
        study_instance_uid,
        series_instance_uid,
        sop_instance_uid,
    )


@_get(_INSTANCE + "/frames/{frame_list}", _FRAMES)
async def retrieve_frames(
    request: Request,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    frame_list: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> Response:
    """WADO-RS: frames (``1,2,5``) of one instance, decoded."""
    return await run_in_threadpool(
        _frames,
        request,
        ctx,
        who,
        store,
        study_instance_uid,
        series_instance_uid,
        sop_instance_uid,
        frame_list,
    )


@_get(_INSTANCE + "/rendered", _RENDERED)
async def rendered_instance(
    request: Request,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> Response:
    """WADO-RS: an instance's first frame as a picture."""
    return await run_in_threadpool(
        _rendered,
        request,
        ctx,
        who,
        store,
        study_instance_uid,
        series_instance_uid,
        sop_instance_uid,
    )


@_get(_INSTANCE + "/frames/{frame_number}/rendered", _RENDERED)
async def rendered_frame(
    request: Request,
    study_instance_uid: str,
    series_instance_uid: str,
    sop_instance_uid: str,
    frame_number: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> Response:
    """WADO-RS: one frame as a picture."""
    return await run_in_threadpool(
        _rendered,
        request,
        ctx,
        who,
        store,
        study_instance_uid,
        series_instance_uid,
        sop_instance_uid,
        frame_number,
    )


__all__ = ["router"]
