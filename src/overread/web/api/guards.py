"""What every API route shares: its permission, PHI redaction, errors, pagination.

Each route declares its permission once, with :func:`permission_route`: the
dependency that enforces it and the ``x-permission`` entry of its OpenAPI operation
come from the same call, so the schema tells clients (and the test-suite, which
generates its access checks from the schema) exactly what each route needs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from overread.security import Permission, Principal, redact_phi
from overread.web.context import WebContext

#: ``x-permission`` of routes anyone may call (health, login).
PUBLIC = "public"
#: ``x-permission`` of routes any signed-in user may call (me, logout).
AUTHENTICATED = "authenticated"

#: The error responses every guarded route documents.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No or invalid credentials (bearer token or session cookie)"},
    403: {"description": "The caller's role lacks the route's permission"},
}

#: The OpenAPI security requirement of guarded routes.
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"sessionCookie": []}]


def route_options(
    permission: Permission | str, *, responses: dict[int | str, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Decorator keyword arguments that document ``permission`` in the OpenAPI schema.

    Parameters
    ----------
    permission
        The permission the route's dependency requires, or :data:`PUBLIC` /
        :data:`AUTHENTICATED`.
    responses
        The route's own documented responses, added to 401 and 403.
    """
    value = permission.value if isinstance(permission, Permission) else permission
    extra: dict[str, Any] = {"x-permission": value}
    documented = dict(responses or {})
    if value != PUBLIC:
        extra["security"] = SECURITY
        documented = {**AUTH_RESPONSES, **documented}
    return {"openapi_extra": extra, "responses": documented}


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
    "context",
    "invalid",
    "not_found",
    "page_params",
    "phi_json",
    "route_options",
]
