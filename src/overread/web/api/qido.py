"""DICOMweb QIDO-RS (``GET /dicom-web/studies``, ``/series``, ``/instances``...).

Search the stored instances (PS3.18 §10.6) for callers holding ``view_results``,
as ``GET /api/studies`` is. Results are ``application/dicom+json``; a search that
matches nothing answers ``200`` with ``[]`` (PS3.18 as amended by CP-2473). Patient
and visit identifiers (name, ID, birth date, accession number...) are returned, and
may be matched on, only by roles that see them in the REST API's FHIR report
(``view_phi`` or ``export_results``); for the others they are left out of every
result, and a search on one is refused (``403``, audited). Bad parameters are a
``400``, an ``Accept`` naming nothing this server produces a ``406``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from overread.audit import AuditAction
from overread.security import Permission, Principal
from overread.service.dicomweb import (
    PHI_KEYWORDS,
    QueryLevel,
    QueryParameterError,
    StoredArchive,
    parse_search,
    strip_phi,
)
from overread.service.dicomweb.media import MediaType, choose
from overread.web.api.guards import caller, context, route
from overread.web.api.schemas import UID_PATTERN
from overread.web.context import WebContext
from overread.web.routes import Endpoint

router = APIRouter(prefix="/dicom-web", tags=["dicomweb"])

_UID = re.compile(UID_PATTERN)

SEARCH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Matching results, DICOM JSON (an empty array when none match)",
        "content": {"application/dicom+json": {"schema": {"type": "array"}}},
    },
    400: {"description": "A search parameter this server cannot use"},
    406: {"description": "The Accept header names no media type this route produces"},
}


def identified(who: Principal) -> bool:
    """Whether ``who`` sees patient and visit identifiers (as in the FHIR report)."""
    return who.can(Permission.VIEW_PHI) or who.can(Permission.EXPORT_RESULTS)


def archive(request: Request) -> StoredArchive:
    """The application's :class:`StoredArchive` (made on first use, headers cached)."""
    state = request.app.state
    found: StoredArchive | None = getattr(state, "dicomweb_archive", None)
    if found is None:
        ctx = context(request)
        found = StoredArchive(ctx.database, ctx.service.store)
        state.dicomweb_archive = found
    return found


def checked_uid(value: str, what: str) -> str:
    """``value`` if it is a well-formed UID, else a ``400`` naming ``what``."""
    if not _UID.fullmatch(value):
        raise HTTPException(status_code=400, detail=f"{what} {value[:80]!r} is not a UID")
    return value


def dicomweb_root(request: Request) -> str:
    """The absolute URL of ``/dicom-web`` as this request reached it (for Retrieve URLs)."""
    return f"{str(request.base_url).rstrip('/')}/dicom-web"


def require_json(request: Request) -> None:
    """``406`` unless the request accepts ``application/dicom+json``."""
    if choose(request.headers.get("accept"), [MediaType.DICOM_JSON], multipart=False) is None:
        raise HTTPException(
            status_code=406, detail="this resource is available as application/dicom+json"
        )


def deny_phi_search(request: Request, ctx: WebContext, who: Principal, keyword: str) -> None:
    """Audit and refuse a search on an identifier the caller may not see."""
    ctx.access.record(
        who,
        AuditAction.ACCESS_DENIED,
        details={
            "permission": Permission.VIEW_PHI.value,
            "method": request.method,
            "path": request.url.path,
            "matching_key": keyword,
        },
    )
    raise HTTPException(
        status_code=403,
        detail=f"role {who.role.value!r} may not search on {keyword} (a patient identifier)",
    )


def _search(
    request: Request,
    ctx: WebContext,
    who: Principal,
    store: StoredArchive,
    level: QueryLevel,
    study: str | None = None,
    series: str | None = None,
) -> JSONResponse:
    require_json(request)
    if study is not None:
        checked_uid(study, "Study Instance UID")
    if series is not None:
        checked_uid(series, "Series Instance UID")
    try:
        query = parse_search(
            level,
            request.query_params.multi_items(),
            study_instance_uid=study,
            series_instance_uid=series,
        )
    except QueryParameterError as exc:
        raise HTTPException(status_code=400, detail=str(exc)) from None
    sees_identity = identified(who)
    if not sees_identity:
        for key in query.keys:
            if key.keyword in PHI_KEYWORDS and not key.universal:
                deny_phi_search(request, ctx, who, key.keyword)
    results = store.search(query, retrieve_base=dicomweb_root(request))
    body = [(r if sees_identity else strip_phi(r)).to_json_dict() for r in results]
    studies = sorted({str(r.get("StudyInstanceUID", "")) for r in results} - {""})
    ctx.access.record(
        who,
        AuditAction.VIEW,
        object_uids=studies[:100],
        details={
            "view": "qido-rs",
            "level": level.value,
            "results": len(results),
            "identified": sees_identity,
        },
    )
    return JSONResponse(body, media_type=MediaType.DICOM_JSON.value)


def _search_route(path: str) -> Callable[[Endpoint], Endpoint]:
    return route(
        router, "GET", path, permission=Permission.VIEW_RESULTS, responses=SEARCH_RESPONSES
    )


@_search_route("/studies")
async def search_studies(
    request: Request,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> JSONResponse:
    """QIDO-RS: search for studies."""
    return await run_in_threadpool(_search, request, ctx, who, store, QueryLevel.STUDY)


@_search_route("/series")
async def search_series(
    request: Request,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> JSONResponse:
    """QIDO-RS: search for series in every study (study attributes included)."""
    return await run_in_threadpool(_search, request, ctx, who, store, QueryLevel.SERIES)


@_search_route("/instances")
async def search_instances(
    request: Request,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> JSONResponse:
    """QIDO-RS: search for instances in every study (study and series attributes included)."""
    return await run_in_threadpool(_search, request, ctx, who, store, QueryLevel.INSTANCE)


@_search_route("/studies/{study_instance_uid}/series")
async def search_study_series(
    request: Request,
    study_instance_uid: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> JSONResponse:
    """QIDO-RS: search for the series of one study."""
    return await run_in_threadpool(
        _search, request, ctx, who, store, QueryLevel.SERIES, study_instance_uid
    )


@_search_route("/studies/{study_instance_uid}/instances")
async def search_study_instances(
    request: Request,
    study_instance_uid: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> JSONResponse:
    """QIDO-RS: search for the instances of one study (series attributes included)."""
    return await run_in_threadpool(
        _search, request, ctx, who, store, QueryLevel.INSTANCE, study_instance_uid
    )


@_search_route("/studies/{study_instance_uid}/series/{series_instance_uid}/instances")
async def search_series_instances(
    request: Request,
    study_instance_uid: str,
    series_instance_uid: str,
    ctx: WebContext = Depends(context),
    who: Principal = Depends(caller),
    store: StoredArchive = Depends(archive),
) -> JSONResponse:
    """QIDO-RS: search for the instances of one series."""
    return await run_in_threadpool(
        _search,
        request,
        ctx,
        who,
        store,
        QueryLevel.INSTANCE,
        study_instance_uid,
        series_instance_uid,
    )


__all__ = [
    "SEARCH_RESPONSES",
    "archive",
    "checked_uid",
    "dicomweb_root",
    "identified",
    "require_json",
    "router",
]
