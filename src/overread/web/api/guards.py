"""What every API route shares: its permission, PHI redaction, errors, pagination.

Each route declares its permission once, with :func:`route` (the API's binding of
:func:`overread.web.routes.route`): the dependency that enforces it and the
``x-permission`` entry of its OpenAPI operation come from the same argument, so the
schema tells clients (and the test-suite, which generates its access checks from
the schema) exactly what each route needs. A handler that needs its caller asks
for ``who: Principal = Depends(caller)``, and for the running gateway with
``ctx: WebContext = Depends(context)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from overread.security import Permission, Principal, redact_phi
from overread.web import routes
from overread.web.context import WebContext
from overread.web.routes import AUTH_RESPONSES, AUTHENTICATED, PUBLIC, SECURITY


def _enforce(request: Request, permission: Permission | None) -> Principal:
    """401 without valid credentials, 403 (audited) without ``permission``."""
    access = context(request).access
    if permission is None:
        return access.authenticated()(request)
    return access.require(permission)(request)


def route(
    router: APIRouter, method: str, path: str, *, permission: Permission | str, **options: Any
) -> Callable[[routes.Endpoint], routes.Endpoint]:
    """Add the decorated handler to ``router`` as ``method path``, needing ``permission``.

    ``permission`` is a :class:`~overread.security.Permission`, :data:`AUTHENTICATED`
    or :data:`PUBLIC`; ``options`` are those of :func:`overread.web.routes.route`
    (``responses``, ``response_model``, ``status_code``...).
    """
    return routes.route(router, method, path, permission=permission, enforce=_enforce, **options)


def caller(request: Request) -> Principal:
    """The signed-in caller of a guarded route."""
    principal = routes.caller_of(request)
    assert isinstance(principal, Principal)
    return principal


def phi_json(model: BaseModel, who: Principal, *, status_code: int = 200) -> JSONResponse:
    """``model`` as a JSON response, without PHI fields unless ``who`` may see PHI."""
    return JSONResponse(redact_phi(model, who), status_code=status_code)


def not_found(what: str) -> HTTPException:
    """A 404 naming what was not found."""
    return HTTPException(status_code=status.HTTP_404_NOT_FOUND, detail=f"{what} not found")


def invalid(message: str) -> HTTPException:
    """A 422 for a request the domain refuses (unknown finding, bad label...)."""
    return HTTPException(status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, detail=message)


def page_params(default: int = 50) -> Callable[..., tuple[int, int]]:
    """A dependency reading ``limit`` (1-500) and ``offset`` (>= 0) from the query."""

    def dependency(
        limit: int = Query(default=default, ge=1, le=500, description="Page size"),
        offset: int = Query(default=0, ge=0, le=10_000_000, description="Rows to skip"),
    ) -> tuple[int, int]:
        return limit, offset

    return dependency


def context(request: Request) -> WebContext:
    """The :class:`WebContext` installed on the application."""
    ctx: WebContext = request.app.state.web
    return ctx


__all__ = [
    "AUTHENTICATED",
    "AUTH_RESPONSES",
    "PUBLIC",
    "SECURITY",
    "caller",
    "context",
    "invalid",
    "not_found",
    "page_params",
    "phi_json",
    "route",
]
