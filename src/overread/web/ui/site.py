"""What every page shares: the UI's state on one application, rendering, error pages.

:class:`UserInterface` holds, for one gateway, the templates, the heatmap images,
the memory of which studies each session was shown, and the :class:`PageGuard`;
:func:`overread.web.ui.install_ui` puts it on the application (``app.state.ui``),
and page handlers receive it with ``ui: UserInterface = Depends(ui_of)``.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from overread.web.context import WebContext
from overread.web.ui.guard import LoginRequired, PageForbidden, PageGuard, Viewer, login_url
from overread.web.ui.images import HeatmapImages
from overread.web.ui.layers import LayerRenderer

HERE = Path(__file__).parent
#: Headers of every UI page: no framing, no inline script, no caching of patient data.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
        "connect-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; "
        "object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class ShownStudies:
    """Which studies each session has already been shown (for auditing refreshes).

    The worklist refreshes every few seconds; auditing each refresh would bury the
    trail, so a refresh is audited only when it shows studies that session had not
    seen. Bounded; a restart forgets, and the next refresh is audited again.
    """

    def __init__(self, sessions: int = 2048) -> None:
        self._seen: OrderedDict[str, set[str]] = OrderedDict()
        self._sessions = sessions
        self._lock = threading.Lock()

    def new(self, session_key: str, uids: list[str]) -> list[str]:
        """The UIDs of ``uids`` the session ``session_key`` had not been shown yet."""
        with self._lock:
            seen = self._seen.setdefault(session_key, set())
            self._seen.move_to_end(session_key)
            fresh = [u for u in uids if u not in seen]
            seen.update(fresh)
            while len(self._seen) > self._sessions:
                self._seen.popitem(last=False)
        return fresh


class UserInterface:
    """The web UI of one gateway: its templates, images, guard and state."""

    def __init__(self, ctx: WebContext, guard: PageGuard) -> None:
        self.ctx = ctx
        self.guard = guard
        self.templates = Jinja2Templates(directory=str(HERE / "templates"))
        self.images = HeatmapImages(ctx.service)
        self.layers = LayerRenderer(self.images)
        self.shown = ShownStudies()

    def render(
        self,
        request: Request,
        name: str,
        viewer: Viewer | None,
        status_code: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        """A page from ``templates/name`` with the common context and headers."""
        response = self.templates.TemplateResponse(
            request,
            name,
            {"viewer": viewer, "path": request.url.path, **context},
            status_code=status_code,
            headers=PAGE_HEADERS,
        )
        return response

    def error_page(
        self, request: Request, viewer: Viewer | None, status_code: int, title: str, message: str
    ) -> HTMLResponse:
        """The error page."""
        return self.render(request, "error.html", viewer, status_code, title=title, message=message)

    def session_key(self, request: Request) -> str:
        """What tells one browser session from another (the end of its cookie or token)."""
        cookie = request.cookies.get(self.ctx.access.cookie_name, "")
        return cookie[-43:] if cookie else request.headers.get("authorization", "")[-16:]


def ui_of(request: Request) -> UserInterface:
    """The :class:`UserInterface` of the application serving ``request``."""
    ui: UserInterface = request.app.state.ui
    return ui


def install_handlers(app: FastAPI, ui: UserInterface) -> None:
    """Answer :class:`LoginRequired` with the login form and :class:`PageForbidden` with a 403 page."""

    async def login_required(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LoginRequired)
        if request.headers.get("x-overread-refresh"):
            # A background refresh cannot follow a redirect usefully: tell the script.
            return Response(status_code=401, headers={"X-Overread-Login": login_url("/")})
        return RedirectResponse(login_url(exc.next_path), status_code=303)

    async def forbidden(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, PageForbidden)
        viewer = (
            Viewer(
                exc.principal,
                ui.guard.csrf_token(request.cookies.get(ui.ctx.access.cookie_name, "")),
            )
            if exc.principal is not None
            else None
        )
        return ui.error_page(request, viewer, 403, "Not allowed", exc.message)

    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(PageForbidden, forbidden)


def mount_static(app: FastAPI) -> None:
    """Serve the stylesheet and script under ``/static``."""
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="overread-static")


__all__ = [
    "PAGE_HEADERS",
    "ShownStudies",
    "UserInterface",
    "install_handlers",
    "mount_static",
    "ui_of",
]
