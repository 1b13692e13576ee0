"""What every HTTP request meets before its route: body limits, docs access, safe 422s.

* :class:`BodyLimit` refuses a request body over its route's limit with ``413``: at
  once from ``Content-Length``, and while the body is read when there is none
  (chunked), so an oversized body is never read whole.
* :class:`DocsGate` serves ``/docs``, ``/redoc`` and ``/openapi.json`` only to
  signed-in callers unless the documentation is public (``public_api_docs``).
* :func:`validation_error` answers ``422`` naming where and why a request is
  invalid, never what was submitted (a password above all).
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import Any

from fastapi import HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from overread.web.context import WebContext

#: Largest body of a route without a limit of its own (JSON and form routes).
DEFAULT_BODY_BYTES = 64 * 1024


class BodyTooLarge(HTTPException):
    """A request body over its route's limit (answered ``413``)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            status_code=status.HTTP_413_CONTENT_TOO_LARGE,
            detail=f"request body too large (limit {limit} bytes)",
        )
        self.limit = limit


async def _answer(
    send: Send, code: int, payload: dict[str, Any], headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    data = json.dumps(payload).encode()
    await send(
        {
            "type": "http.response.start",
            "status": code,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class BodyLimit:
    """Pure ASGI middleware bounding request bodies per path prefix.

    Parameters
    ----------
    app
        The application it wraps.
    default
        The limit of every path no prefix names, in bytes.
    limits
        ``(path prefix, bytes)`` pairs; the first matching prefix wins.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        default: int = DEFAULT_BODY_BYTES,
        limits: Sequence[tuple[str, int]] = (),
    ) -> None:
        self.app = app
        self.default = default
        self.limits = tuple(limits)

    def limit_for(self, path: str) -> int:
        """The body limit of ``path``."""
        for prefix, limit in self.limits:
            if path.startswith(prefix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope.get("path", ""))
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _answer(send, 413, {"detail": BodyTooLarge(limit).detail})
            return
        received = 0
        started = answered = False

        async def refuse() -> None:
            # Answered here, at once: middleware between this one and the route may wrap
            # the exception (e.g. in an ExceptionGroup) and turn it into a 400.
            nonlocal answered
            if not started and not answered:
                answered = True
                await _answer(send, 413, {"detail": BodyTooLarge(limit).detail})

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    await refuse()
                    raise BodyTooLarge(limit)
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if answered:  # whatever the application makes of the refusal stays unsent
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception:
            if not answered:
                raise


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class DocsGate:
    """Pure ASGI middleware: the API documentation for signed-in callers only.

    ``paths`` are the documentation's routes; with ``public`` they are served to
    anyone, otherwise a caller ``ctx`` does not identify (bearer token or session
    cookie, any role) gets ``401``.
    """

    def __init__(
        self, app: ASGIApp, *, ctx: WebContext, paths: Collection[str], public: bool = False
    ) -> None:
        self.app = app
        self.ctx = ctx
        self.paths = frozenset(paths)
        self.public = public

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and not self.public
            and scope.get("path", "") in self.paths
            and await run_in_threadpool(self.ctx.access.identify, Request(scope)) is None
        ):
            await _answer(
                send,
                401,
                {"detail": "authentication required"},
                [(b"www-authenticate", b'Bearer realm="overread"')],
            )
            return
        await self.app(scope, receive, send)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """``422`` listing each error's location, type and message, never the submitted value."""
    errors = exc.errors() if isinstance(exc, RequestValidationError) else []
    detail = [
        {"loc": list(error.get("loc", ())), "type": error.get("type"), "msg": error.get("msg")}
        for error in errors
    ]
    return JSONResponse({"detail": detail}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT)


__all__ = [
    "DEFAULT_BODY_BYTES",
    "BodyLimit",
    "BodyTooLarge",
    "DocsGate",
    "validation_error",
]
