"""The gateway's HTTP server: uvicorn running the web application in a thread.

The application itself (REST API, STOW-RS, web UI, all authenticated but
``/health``) is built by :func:`overread.web.app.create_app`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence

import uvicorn
from fastapi import FastAPI

from overread.errors import ServiceError

logger = logging.getLogger(__name__)


class HttpServer:
    """uvicorn running the API in a background thread.

    ``trusted_proxies`` (addresses or CIDR networks) are the reverse proxies whose
    ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are believed: only when the
    immediate peer is one of them does the request's client address become the
    last hop in ``X-Forwarded-For`` that is not itself a trusted proxy. With none
    (the default) the headers are ignored and the client is the TCP peer, so a
    caller cannot pick the address that login throttling and the audit trail see.
    """

    def __init__(
        self, app: FastAPI, host: str, port: int, *, trusted_proxies: Sequence[str] = ()
    ) -> None:
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level="warning",
            lifespan="off",
            proxy_headers=bool(trusted_proxies),
            forwarded_allow_ips=list(trusted_proxies),
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="overread-http", daemon=True)

    def start(self, timeout: float = 10.0) -> int:
        """Start serving and return the bound port."""
        self.thread.start()
        for _ in range(int(timeout / 0.05)):
            if self.server.started:
                break
            if not self.thread.is_alive():
                raise ServiceError("the HTTP server failed to start (is the port in use?)")
            threading.Event().wait(0.05)
        else:
            raise ServiceError("the HTTP server did not start in time")
        sockets = [s for server in self.server.servers for s in server.sockets]
        return int(sockets[0].getsockname()[1]) if sockets else self.server.config.port

    def stop(self) -> None:
        """Ask uvicorn to exit and wait for it."""
        self.server.should_exit = True
        self.thread.join(10)


__all__ = ["HttpServer"]
