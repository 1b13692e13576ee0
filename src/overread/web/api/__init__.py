"""The gateway's REST API and DICOMweb (STOW-RS, QIDO-RS, WADO-RS), every route but ``/health`` authenticated.

:func:`install_api` adds the routes to an application: one module-level router per
resource module (:data:`ROUTERS`), whose handlers find the running gateway in the
application's :class:`~overread.web.context.WebContext`. Each route requires one
:class:`~overread.security.Permission` (``401`` without valid credentials, ``403``
without the permission, the denial audited), declared once with
:func:`~overread.web.api.guards.route`, which also names it in the route's OpenAPI
operation (``x-permission``); ``docs/api.md`` lists them. Responses carrying patient
identifiers pass through :func:`~overread.security.redact_phi`, and views of
PHI-bearing resources are audited.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

from overread.errors import OverreadError
from overread.web.api import (
    alerts,
    audit,
    auth,
    dicomweb,
    feedback,
    health,
    jobs,
    models,
    monitoring,
    priors,
    qido,
    review,
    rollouts,
    studies,
    wado,
    worklist,
)
from overread.web.context import WebContext

SECURITY_SCHEMES: dict[str, Any] = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API token from `overread users token issue`",
    },
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "overread_session",
        "description": "The web session cookie set by POST /api/auth/login",
    },
}


def _install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


#: The API's routers, in the order they are matched.
ROUTERS = (
    health.router,
    auth.router,
    worklist.router,
    studies.router,
    priors.router,
    feedback.router,
    review.router,
    alerts.router,
    jobs.router,
    models.router,
    rollouts.router,
    monitoring.router,
    audit.router,
    dicomweb.router,
    qido.router,
    wado.router,
)

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_GUARDED_PREFIXES = ("/api/", "/dicom-web/")


def _same_origin(request: Request) -> bool:
    """Whether a state-changing request comes from the gateway's own origin.

    Browsers send ``Origin`` with every cross-site POST/PUT; a request without one
    comes from a non-browser client (curl, a RIS) and is judged by its credentials
    alone. The session cookie is already ``SameSite=Strict``; this refuses
    cross-site writes even from browsers that ignore that attribute.
    """
    origin = request.headers.get("origin")
    if origin is None:
        return True
    host = request.headers.get("host", "")
    return origin.split("://", 1)[-1].rstrip("/").lower() == host.lower()


def install_api(app: FastAPI, ctx: WebContext) -> None:
    """Add ``/health``, the ``/api`` routes and STOW-RS to ``app``.

    Parameters
    ----------
    app
        The application (``ctx`` becomes its ``state.web``).
    ctx
        The running service and its access control.
    """
    app.state.web = ctx
    for router in ROUTERS:
        app.include_router(router)

    @app.middleware("http")
    async def refuse_cross_site_writes(request: Request, call_next: Any) -> Any:
        if (
            request.method not in _SAFE_METHODS
            and request.url.path.startswith(_GUARDED_PREFIXES)
            and not _same_origin(request)
        ):
            return JSONResponse(
                {"detail": "cross-site request refused (Origin does not match the gateway)"},
                status_code=403,
            )
        return await call_next(request)

    @app.exception_handler(OverreadError)
    async def overread_error(request: Request, exc: OverreadError) -> JSONResponse:
        # Refused input (a ValueError kind) is the caller's to fix; anything else is ours.
        code = 422 if isinstance(exc, ValueError) else 503
        return JSONResponse({"detail": str(exc)}, status_code=code)

    _install_openapi(app)


__all__ = ["ROUTERS", "SECURITY_SCHEMES", "install_api"]
