"""The login form and logout."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import RedirectResponse

from overread.web.routes import AUTHENTICATED, PUBLIC
from overread.web.ui.guard import LOGIN_CSRF_COOKIE, PageGuard, Viewer, page, page_viewer, safe_next
from overread.web.ui.site import UserInterface, ui_of

router = APIRouter(include_in_schema=False)


def login_page(
    ui: UserInterface, request: Request, next_path: str, error: str, status_code: int
) -> Response:
    """The login form (with a fresh double-submit token) and ``error``, if any."""
    token = PageGuard.new_login_token()
    response = ui.render(
        request,
        "login.html",
        None,
        status_code,
        next=safe_next(next_path),
        error=error,
        login_csrf=token,
    )
    response.set_cookie(
        LOGIN_CSRF_COOKIE,
        token,
        max_age=3600,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/login",
    )
    return response


@page(router, "GET", "/login", permission=PUBLIC)
def login_form(request: Request, next: str = "/", ui: UserInterface = Depends(ui_of)) -> Response:
    if ui.ctx.access.identify(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return login_page(ui, request, next, "", 200)


@page(router, "POST", "/login", permission=PUBLIC)
async def login(request: Request, ui: UserInterface = Depends(ui_of)) -> Response:
    access = ui.ctx.access
    fields = await ui.guard.form(request)
    target = safe_next(fields.get("next"))
    username = fields.get("username", "").strip()
    password = fields.get("password", "")
    source = request.client.host if request.client else ""
    if not username or not password:
        return login_page(ui, request, target, "Enter your user name and password.", 400)
    outcome, token = access.login(username, password, source)
    if not outcome.ok or not token:
        if outcome.reason == "locked":
            message = "Too many failed attempts. Try again later."
            return login_page(ui, request, target, message, 429)
        return login_page(ui, request, target, "Invalid user name or password.", 401)
    response = RedirectResponse(target, status_code=303)
    assert access.signer is not None
    response.set_cookie(
        access.cookie_name,
        token,
        max_age=int(access.signer.lifetime.total_seconds()),
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        path="/",
    )
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/login")
    return response


@page(router, "POST", "/logout", permission=AUTHENTICATED)
async def logout(
    request: Request,
    ui: UserInterface = Depends(ui_of),
    viewer: Viewer = Depends(page_viewer),
) -> Response:
    access = ui.ctx.access
    await ui.guard.form(request, viewer)
    access.logout(viewer.principal)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(access.cookie_name, path="/")
    return response


__all__ = ["login_page", "router"]
