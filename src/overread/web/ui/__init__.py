"""The web UI for readers, administrators and auditors, rendered on the server.

:func:`install_ui` adds to the gateway's FastAPI app: the login form, the
prioritised worklist (the home page, refreshed every few seconds by a small script),
the study page (findings, score breakdown, heatmap, agree/disagree/uncertain per
finding), open critical alerts, the job queue with dead letters, and the audit
trail with its verification. Pages need a session with the right permission;
without one the browser is sent to ``/login``. Patient identity is shown only to
roles holding ``view_phi``, every view is audited, and every form carries a CSRF
token. No file is fetched from outside the gateway (no CDN).

Each page is a module of :mod:`overread.web.ui.pages` with a module-level router;
what they share (templates, images, the guard) is the :class:`UserInterface` kept
on the application as ``app.state.ui``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI

from overread.security import load_session_key
from overread.web.context import WebContext
from overread.web.ui.guard import PageGuard
from overread.web.ui.pages import ROUTERS
from overread.web.ui.site import UserInterface, install_handlers, mount_static


def install_ui(app: FastAPI, ctx: WebContext) -> None:
    """Add the web UI's pages, static files and error handlers to ``app``.

    Parameters
    ----------
    app
        The gateway's application (the REST API may already be installed on it).
    ctx
        The running service and its access control.
    """
    key = load_session_key(Path(ctx.service.config.data_dir))
    guard = PageGuard(ctx.access, key)
    ui = UserInterface(ctx, guard)
    app.state.ui = ui
    for router in ROUTERS:
        app.include_router(router)
    install_handlers(app, ui)
    mount_static(app)


__all__ = ["install_ui"]
