"""The gateway's one FastAPI application: REST API, DICOMweb and web UI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from overread import __version__
from overread.web.context import WebContext

if TYPE_CHECKING:
    from overread.web.context import RunningService


def create_app(service: RunningService, ctx: WebContext | None = None) -> FastAPI:
    """The application serving ``service`` (REST API under ``/api``, UI at ``/``).

    ``ctx`` defaults to :meth:`WebContext.for_service` of ``service``.
    """
    ctx = ctx or WebContext.for_service(service)
    app = FastAPI(title="overread gateway", version=__version__)
    app.state.web = ctx
    from overread.web.api import install_api

    install_api(app, ctx)
    try:
        from overread.web.ui import install_ui
    except ImportError:  # the UI package is optional in minimal installs
        return app
    install_ui(app, ctx)
    return app


__all__ = ["create_app"]
