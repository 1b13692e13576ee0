"""Where a route says, once, which permission it needs.

:func:`route` adds a handler to a module-level router together with its
permission: the dependency that enforces it (run before the handler, its answer
kept as the request's caller) and the ``x-permission`` entry of the route's OpenAPI
operation come from the same argument. The REST API and the UI differ only in how
they enforce (:class:`Enforce`): a JSON 401/403 there, a redirect to the login form
or a 403 page here. :func:`permission_table` reads the declarations back from an
application, for the documentation and the tests that check it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.params import Depends as DependsParam
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from overread.security import Permission

#: ``x-permission`` of routes anyone may call (health, login).
PUBLIC = "public"
#: ``x-permission`` of routes any signed-in user may call (me, logout).
AUTHENTICATED = "authenticated"
#: The OpenAPI operation key naming a route's permission.
PERMISSION_KEY = "x-permission"

#: The error responses every guarded route documents.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "No or invalid credentials (bearer token or session cookie)"},
    403: {"description": "The caller's role lacks the route's permission"},
}

#: The OpenAPI security requirement of guarded routes.
SECURITY: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"sessionCookie": []}]

Endpoint = TypeVar("Endpoint", bound=Callable[..., Any])


class Enforce(Protocol):
    """Checks a request against a permission and returns its caller, or raises.

    ``permission`` is ``None`` for routes open to any signed-in user.
    """

    def __call__(self, request: Request, permission: Permission | None) -> object:
        """The caller of ``request`` if allowed."""
        ...


def permission_value(permission: Permission | str) -> str:
    """The ``x-permission`` text of ``permission`` (a permission, PUBLIC or AUTHENTICATED)."""
    value = permission.value if isinstance(permission, Permission) else permission
    if value not in (PUBLIC, AUTHENTICATED):
        Permission(value)  # refuses a misspelt permission when the route is declared
    return value


def route(
    router: APIRouter,
    method: str,
    path: str,
    *,
    permission: Permission | str,
    enforce: Enforce,
    responses: dict[int | str, dict[str, Any]] | None = None,
    openapi_extra: dict[str, Any] | None = None,
    dependencies: Sequence[DependsParam] | None = None,
    **options: Any,
) -> Callable[[Endpoint], Endpoint]:
    """A decorator adding its handler to ``router`` as ``method path``, guarded by ``permission``.

    Parameters
    ----------
    router
        The module's router.
    method, path
        The HTTP method and the path (below the router's prefix).
    permission
        What the caller needs: a :class:`~overread.security.Permission`,
        :data:`AUTHENTICATED` or :data:`PUBLIC` (no check).
    enforce
        How to check it; the caller it returns is the request's ``state.caller``.
    responses, openapi_extra
        The route's own documented responses (401 and 403 are added to guarded
        routes) and OpenAPI additions.
    options
        Anything else :meth:`fastapi.APIRouter.add_api_route` takes.
    """
    value = permission_value(permission)
    extra: dict[str, Any] = {**(openapi_extra or {}), PERMISSION_KEY: value}
    documented = dict(responses or {})
    guards = list(dependencies or [])
    if value != PUBLIC:
        extra["security"] = SECURITY
        documented = {**AUTH_RESPONSES, **documented}
        needed = None if value == AUTHENTICATED else Permission(value)

        def check(request: Request) -> None:
            request.state.caller = enforce(request, needed)

        check.__name__ = f"require_{value}"
        guards.insert(0, Depends(check))

    def decorate(endpoint: Endpoint) -> Endpoint:
        router.add_api_route(
            path,
            endpoint,
            methods=[method],
            responses=documented,
            openapi_extra=extra,
            dependencies=guards,
            **options,
        )
        return endpoint

    return decorate


def caller_of(request: Request) -> object:
    """The caller the route's permission check admitted (see :func:`route`)."""
    try:
        return request.state.caller
    except AttributeError:
        raise RuntimeError(
            f"{request.method} {request.url.path} asks for its caller but declares no permission"
        ) from None


def api_routes(routes: Sequence[BaseRoute]) -> list[APIRoute]:
    """Every :class:`~fastapi.routing.APIRoute` of ``routes``, through included routers.

    Routers are included without a prefix of their own (each route's path is whole).
    """
    found: list[APIRoute] = []
    for entry in routes:
        included = getattr(entry, "original_router", None)  # FastAPI >= 0.130
        if isinstance(included, APIRouter):
            found.extend(api_routes(included.routes))
        elif isinstance(entry, APIRoute):
            found.append(entry)
    return found


def permission_table(app: FastAPI) -> dict[tuple[str, str], str]:
    """``(method, path) -> x-permission`` of every route of ``app`` declared with :func:`route`."""
    table: dict[tuple[str, str], str] = {}
    for entry in api_routes(app.routes):
        value = (entry.openapi_extra or {}).get(PERMISSION_KEY)
        if value is not None:
            for method in entry.methods or ():
                table[(method, entry.path)] = str(value)
    return table


__all__ = [
    "AUTHENTICATED",
    "AUTH_RESPONSES",
    "PERMISSION_KEY",
    "PUBLIC",
    "SECURITY",
    "Enforce",
    "api_routes",
    "caller_of",
    "permission_table",
    "permission_value",
    "route",
]
