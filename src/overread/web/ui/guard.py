"""Who is looking at a page, whether they may, and whether a form really came from us.

The REST API answers a missing credential with a JSON 401; a browser should land on
the login form instead and come back afterwards. :class:`PageGuard` wraps
:meth:`overread.security.AccessControl.require` for pages: no or a dead session
raises :class:`LoginRequired` (answered with a redirect to ``/login?next=...``), a
role without the permission raises :class:`PageForbidden` (answered with a 403 page;
the denial is audited by ``require`` itself).

Every state-changing form carries a CSRF token, ``HMAC-SHA256(key, session cookie)``:
it is the same for every page of one session, changes with each login, and cannot
be computed by another site, which can make the browser send the cookie
(``SameSite=Strict`` already stops most of that) but cannot read the page. The login
form, which has no session yet, uses a double-submit cookie instead.

Pages declare their permission once, with :func:`page` (the UI's binding of
:func:`overread.web.routes.route`); a handler gets its signed-in user with
``viewer: Viewer = Depends(page_viewer)``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, HTTPException, Request, status

from overread.security import AccessControl, Permission, Principal
from overread.web import routes

#: The hidden form field (or ``X-CSRF-Token`` header) that carries the token.
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
#: The double-submit cookie of the login form.
LOGIN_CSRF_COOKIE = "overread_login_csrf"
#: Form bodies larger than this are refused (the UI's forms are a few fields).
MAX_FORM_BYTES = 16_384


class LoginRequired(Exception):  # noqa: N818 (a signal, not an error)
    """The request has no valid session: send the browser to the login form."""

    def __init__(self, next_path: str) -> None:
        super().__init__(next_path)
        self.next_path = next_path


class PageForbidden(Exception):  # noqa: N818
    """The user is known but their role lacks the page's permission (or the form token)."""

    def __init__(self, message: str, principal: Principal | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.principal = principal


@dataclass(frozen=True)
class Viewer:
    """The signed-in user of one request, with what the templates need to know."""

    principal: Principal
    csrf_token: str

    @property
    def username(self) -> str:
        """The user's name."""
        return self.principal.username

    @property
    def role(self) -> str:
        """The user's role, as text."""
        return self.principal.role.value

    def can(self, permission: Permission | str) -> bool:
        """Whether the user holds ``permission`` (templates pass its name)."""
        return self.principal.can(Permission(permission))


def safe_next(value: str | None) -> str:
    """A local path to return to after login; anything else becomes ``/``.

    Refuses absolute URLs, scheme-relative ``//host`` and back-slash tricks, so the
    login form cannot be used to send a user to another site.
    """
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(ord(c) < 0x20 for c in value):
        return "/"
    return value


def request_path(request: Request) -> str:
    """The path and query of ``request``, for ``next=``."""
    query = request.url.query
    return request.url.path + (f"?{query}" if query else "")


class PageGuard:
    """Permission checks, CSRF tokens and the session cookie for the web UI.

    Parameters
    ----------
    access
        The gateway's access control (sessions, permissions, audit of denials).
    csrf_key
        Secret for the CSRF tokens (the session key does: tokens are bound to a
        session cookie, which only that key can mint).
    """

    def __init__(self, access: AccessControl, csrf_key: bytes) -> None:
        self.access = access
        self._csrf_key = csrf_key

    # -- tokens -----------------------------------------------------------------------
    def csrf_token(self, session_cookie: str) -> str:
        """The CSRF token of the session whose cookie is ``session_cookie``."""
        mac = hmac.new(
            self._csrf_key, b"overread-csrf:" + session_cookie.encode("utf-8"), hashlib.sha256
        )
        return mac.hexdigest()

    def _session_cookie(self, request: Request) -> str:
        return request.cookies.get(self.access.cookie_name, "")

    # -- dependencies -----------------------------------------------------------------
    def viewer(self, request: Request, permission: Permission) -> Viewer:
        """The signed-in user if they hold ``permission``.

        Raises
        ------
        LoginRequired
            Without a valid session (or bearer token).
        PageForbidden
            When the role lacks ``permission`` (audited as ``access-denied``).
        """
        try:
            principal = self.access.require(permission)(request)
        except HTTPException as exc:
            if exc.status_code == status.HTTP_401_UNAUTHORIZED:
                raise LoginRequired(request_path(request)) from None
            who = self.access.identify(request)
            raise PageForbidden(
                f"Your role ({who.role.value if who else 'unknown'}) may not open this page.", who
            ) from None
        return Viewer(principal, self.csrf_token(self._session_cookie(request)))

    def signed_in(self, request: Request) -> Viewer:
        """The signed-in user, whatever their role.

        Raises
        ------
        LoginRequired
            Without a valid session, back to the home page after login (a form
            posted without a session cannot be replayed).
        """
        principal = self.access.identify(request)
        if principal is None:
            raise LoginRequired("/")
        return Viewer(principal, self.csrf_token(self._session_cookie(request)))

    async def form(self, request: Request, viewer: Viewer | None = None) -> dict[str, str]:
        """The fields of a url-encoded form, after checking its CSRF token.

        With a ``viewer`` the token must be the session's; without one (the login
        form) it must match the double-submit cookie.

        Raises
        ------
        PageForbidden
            If the token is missing or wrong, or the body is not a small url-encoded form.
        """
        body = await request.body()
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if len(body) > MAX_FORM_BYTES or content_type not in (
            "application/x-www-form-urlencoded",
            "",
        ):
            raise PageForbidden(
                "This form could not be read.", viewer.principal if viewer else None
            )
        parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
        fields = {key: values[-1] for key, values in parsed.items()}
        sent = fields.get(CSRF_FIELD) or request.headers.get(CSRF_HEADER, "")
        if viewer is not None:
            expected = viewer.csrf_token
        else:
            expected = request.cookies.get(LOGIN_CSRF_COOKIE, "")
        if not sent or not expected or not hmac.compare_digest(sent, expected):
            raise PageForbidden(
                "The form's security token is missing or out of date: reload the page and try again.",
                viewer.principal if viewer else None,
            )
        return fields

    @staticmethod
    def new_login_token() -> str:
        """A fresh double-submit token for the login form."""
        return secrets.token_urlsafe(24)


def page_guard(request: Request) -> PageGuard:
    """The :class:`PageGuard` of the application serving ``request``."""
    guard: PageGuard = request.app.state.ui.guard
    return guard


def _enforce(request: Request, permission: Permission | None) -> Viewer:
    guard = page_guard(request)
    if permission is None:
        return guard.signed_in(request)
    return guard.viewer(request, permission)


def page(
    router: APIRouter, method: str, path: str, *, permission: Permission | str, **options: Any
) -> Callable[[routes.Endpoint], routes.Endpoint]:
    """Add the decorated page handler to ``router`` as ``method path``, needing ``permission``.

    ``permission`` is a :class:`~overread.security.Permission`, ``"authenticated"``
    (:data:`~overread.web.routes.AUTHENTICATED`: any signed-in user) or ``"public"``;
    without it the browser goes to the login form, without the role's permission it
    gets the 403 page.
    """
    return routes.route(router, method, path, permission=permission, enforce=_enforce, **options)


def page_viewer(request: Request) -> Viewer:
    """The signed-in user of a page declared with :func:`page`."""
    viewer = routes.caller_of(request)
    assert isinstance(viewer, Viewer)
    return viewer


def login_url(next_path: str) -> str:
    """``/login`` with a ``next`` back to ``next_path`` (unless that is the home page)."""
    target = safe_next(next_path)
    return "/login" if target == "/" else f"/login?next={quote(target, safe='')}"


__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "LOGIN_CSRF_COOKIE",
    "LoginRequired",
    "PageForbidden",
    "PageGuard",
    "Viewer",
    "login_url",
    "page",
    "page_guard",
    "page_viewer",
    "request_path",
    "safe_next",
]
