"""The gateway's one FastAPI application: REST API, DICOMweb and web UI."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError

from overread import __version__
from overread.web.context import WebContext
from overread.web.edge import BodyLimit, DocsGate, validation_error

if TYPE_CHECKING:
    from overread.web.context import RunningService


def create_app(service: RunningService, ctx: WebContext | None = None) -> FastAPI:
    """The application serving ``service`` (REST API under ``/api``, UI at ``/``).

    ``ctx`` defaults to :meth:`WebContext.for_service` of ``service``. Request bodies
    are bounded (``max_body_bytes``; ``max_stow_bytes`` for STOW-RS), the API
    documentation is for signed-in callers unless ``public_api_docs``, and a 422
    never repeats the submitted values.
    """
    ctx = ctx or WebContext.for_service(service)
    app = FastAPI(title="overread gateway", version=__version__)
    app.state.web = ctx
    from overread.web.api import install_api

    install_api(app, ctx)
    try:
        from overread.web.ui import install_ui
    except ImportError:  # the UI package is optional in minimal installs
        pass
    else:
        install_ui(app, ctx)
    _install_edge(app, ctx)
    return app


def _install_edge(app: FastAPI, ctx: WebContext) -> None:
    """Body limits, the documentation's access rule and value-free 422s (see :mod:`.edge`)."""
    config = ctx.service.config
    app.add_exception_handler(RequestValidationError, validation_error)
    docs = [app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url]
    app.add_middleware(
        DocsGate, ctx=ctx, paths=[p for p in docs if p], public=config.public_api_docs
    )
    # Outermost: an oversized body is refused before anything else sees the request.
    app.add_middleware(
        BodyLimit, default=config.max_body_bytes, limits=[("/dicom-web/", config.max_stow_bytes)]
    )


__all__ = ["create_app"]
