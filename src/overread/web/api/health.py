"""``GET /health``: liveness and job counts, for anyone (no patient data); a signed-in
caller also gets each export destination's health."""

from __future__ import annotations

import hmac
import ipaddress

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from overread import __version__
from overread.security import redact_phi
from overread.service.config import ServiceConfig
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
        who = ctx.access.identify(request)
        destinations = (
            service.queue.destination_health([d.name for d in service.config.destinations])
            if who is not None
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
    if who is None:
        return JSONResponse(answer.model_dump(exclude_none=True, mode="json"))
    # A destination's last error can quote a header value: PHI.
    return JSONResponse(redact_phi(answer, who))


@route(router, "GET", "/metrics", permission=PUBLIC)
def metrics(request: Request, ctx: WebContext = Depends(context)) -> Response:
    """Operational metrics in the Prometheus text format (docs/api.md): ingest, jobs per
    kind and state, stage latency histograms, destination health, model versions.

    Answered without signing in when ``public_metrics`` is set, to a caller from one of
    ``metrics_allowed_addresses``, or to one presenting ``metrics_scrape_token`` as a
    bearer token; otherwise to signed-in callers (any role), 401 to the rest. No
    patient data.
    """
    config = ctx.service.config
    if config.public_metrics or scrape_allowed(request, config):
        return Response(ctx.service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
    try:
        signed_in = ctx.access.identify(request) is not None
    except Exception as exc:  # the credentials cannot be checked: the database is down
        raise HTTPException(
            status_code=503, detail=f"database unavailable: {type(exc).__name__}"
        ) from None
    if not signed_in:
        raise HTTPException(
            status_code=401,
            detail="authentication required (or a scrape token or allowed address)",
            headers={"WWW-Authenticate": 'Bearer realm="overread"'},
        )
    return Response(ctx.service.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def scrape_allowed(request: Request, config: ServiceConfig) -> bool:
    """Whether the caller may scrape without an account: its address is in
    ``metrics_allowed_addresses`` or it presents ``metrics_scrape_token``."""
    client = request.client.host if request.client else ""
    if client and config.metrics_allowed_addresses:
        try:
            address = ipaddress.ip_address(client)
        except ValueError:
            address = None
        if address is not None and any(
            address in ipaddress.ip_network(n, strict=False)
            for n in config.metrics_allowed_addresses
        ):
            return True
    token = config.metrics_scrape_token
    if token is None:
        return False
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        presented.strip().encode(), token.get_secret_value().encode()
    )


__all__ = ["router", "scrape_allowed"]
