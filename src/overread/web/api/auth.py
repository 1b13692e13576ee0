"""Sign-in routes: password login to a session cookie, logout, and who am I."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from overread.security import Permission, Principal
from overread.web.api.guards import AUTHENTICATED, PUBLIC, caller, context, route
from overread.web.api.schemas import LoginRequest, Me
from overread.web.context import WebContext


def _me(principal: Principal) -> Me:
    return Me(
        username=principal.username,
        role=principal.role.value,
        via=principal.via,
        permissions=sorted(p.value for p in Permission if principal.can(p)),
    )


router = APIRouter(prefix="/api/auth", tags=["auth"])


@route(
    router,
    "POST",
    "/login",
    response_model=Me,
    permission=PUBLIC,
    responses={
        401: {"description": "Wrong user name or password, or a disabled account"},
        429: {"description": "Too many failures: locked out; see Retry-After"},
    },
)
def login(
    body: LoginRequest, request: Request, response: Response, ctx: WebContext = Depends(context)
) -> Me:
    """Check a password (throttled, audited) and set the session cookie."""
    access = ctx.access
    source = request.client.host if request.client else ""
    outcome, token = access.login(body.username, body.password, source)
    if not outcome.ok or outcome.principal is None:
        if outcome.reason == "locked":
            retry = int(outcome.retry_after or 0) + 1
            raise HTTPException(
                status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                detail="too many failed logins: try again later",
                headers={"Retry-After": str(retry)},
            )
        raise HTTPException(status_code=status.HTTP_401_UNAUTHORIZED, detail="login failed")
    if token:
        response.set_cookie(
            access.cookie_name,
            token,
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
    return _me(outcome.principal)


@route(router, "POST", "/logout", status_code=204, permission=AUTHENTICATED)
def logout(
    response: Response, ctx: WebContext = Depends(context), who: Principal = Depends(caller)
) -> Response:
    """End every web session of the caller (API tokens stay valid)."""
    access = ctx.access
    access.logout(who)
    response = Response(status_code=204)
    response.delete_cookie(access.cookie_name, path="/")
    return response


@route(router, "GET", "/me", response_model=Me, permission=AUTHENTICATED)
def me(who: Principal = Depends(caller)) -> Me:
    """The caller's user name, role and permissions."""
    return _me(who)


__all__ = ["router"]
