"""``GET /health``: liveness and job counts, for anyone (no patient data)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from overread import __version__
from overread.web.api.guards import PUBLIC, context, route
from overread.web.api.schemas import Health
from overread.web.context import WebContext

router = APIRouter(tags=["health"])


@route(router, "GET", "/health", response_model=Health, permission=PUBLIC)
def health(ctx: WebContext = Depends(context)) -> Health:
    """Liveness plus the job counts (no patient data); 503 when the database is down."""
    service = ctx.service
    try:
        counts = service.queue.counts()
    except Exception as exc:
        raise HTTPException(
            status_code=503, detail=f"database unavailable: {type(exc).__name__}"
        ) from None
    return Health(
        status="ok",
        version=__version__,
        ae_title=service.config.ae_title,
        dicom_port=service.dicom_port,
        jobs=counts,
    )


__all__ = ["router"]
