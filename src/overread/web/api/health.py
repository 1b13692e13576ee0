"""``GET /health``: liveness and job counts, for anyone (no patient data); a signed-in
caller also gets each export destination's health."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from overread import __version__
from overread.web.api.guards import PUBLIC, context, route
from overread.web.api.schemas import DestinationHealth, Health
from overread.web.context import WebContext

router = APIRouter(tags=["health"])


@route(router, "GET", "/health", response_model=Health, permission=PUBLIC)
def health(request: Request, ctx: WebContext = Depends(context)) -> JSONResponse:
    """Liveness plus the job counts (no patient data); 503 when the database is down.

    With valid credentials the answer also lists each export destination: up or
    down, since when, exports waiting and dead-lettered.
    """
    service = ctx.service
    try:
        counts = service.queue.counts()
        signed_in = ctx.access.identify(request) is not None
        destinations = (
            service.queue.destination_health([d.name for d in service.config.destinations])
            if signed_in
            else None
        )
    except Exception as exc:
        raise HTTPException(
            status_code=503, detail=f"database unavailable: {type(exc).__name__}"
        ) from None
    answer = Health(
        status="ok",
        version=__version__,
        ae_title=service.config.ae_title,
        dicom_port=service.dicom_port,
        jobs=counts,
        destinations=None
        if destinations is None
        else [DestinationHealth.model_validate(d) for d in destinations],
    )
    return JSONResponse(answer.model_dump(exclude_none=destinations is None, mode="json"))


@route(router, "GET", "/metrics", permission=PUBLIC)
def metrics(request: Request, ctx: WebContext = Depends(context)) -> Response:
    """Operational metrics in the Prometheus text format (docs/api.md): ingest, jobs per
    kind and state, stage latency histograms, destination health, model versions.

    Signed-in callers (any role, e.g. a scraper's API token) unless ``public_metrics``;
    401 otherwise. No patient data.
    """
    try:
        signed_in = ctx.service.config.public_metrics or ctx.access.identify(request) is not None
    except Exception as exc:  # the credentials cannot be checked: the database is down
        raise HTTPException(
            status_code=503, detail=f"database unavailable: {type(exc).__name__}"
        ) from None
    if not signed_in:
        raise HTTPException(
            status_code=401,
            detail="authentication required (or set public_metrics)",
            headers={"WWW-Authenticate": 'Bearer realm="overread"'},
        )
    return Response(ctx.service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


__all__ = ["router"]
