"""The demo's gateway: in-process on its embedded defaults, DICOM on a free loopback port."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from overread.demo.options import DemoOptions
from overread.errors import ConfigError
from overread.harness import MODALITY_AE_TITLE, PACS_AE_TITLE

if TYPE_CHECKING:
    from overread.harness.gateway import Gateway


def check_port_free(port: int, host: str = "127.0.0.1") -> None:
    """Raise ConfigError when ``host:port`` cannot be bound (0 always can)."""
    if port == 0:
        return
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise ConfigError(
                f"--http-port {port}: {host}:{port} is in use; stop what listens there "
                "or pass another port (0 picks a free one)"
            ) from None


@contextmanager
def running_gateway(options: DemoOptions, pacs_port: int) -> Iterator[Gateway]:
    """The gateway in-process (DICOM on a free loopback port), stopped on exit.

    The gateway is imported here, after the cohort generator has started, so that
    the generator runs while the gateway loads.
    """
    from overread.config import Settings
    from overread.harness.gateway import loopback_config
    from overread.harness.gateway import running_gateway as running_loopback_gateway

    settings = Settings(data_dir=options.data_dir / "gateway", database_url=None)
    config = loopback_config(
        settings,
        http_host="127.0.0.1",
        http_port=options.http_port,
        workers=options.workers,
        stable_seconds=2.0,
        poll_seconds=0.5,
        retry_base_seconds=0.5,
        destinations=[f"PACS={PACS_AE_TITLE}@127.0.0.1:{pacs_port}"],
        allow_ae=[f"{MODALITY_AE_TITLE}@127.0.0.1"],
    )
    with running_loopback_gateway(config, stop_timeout=15) as service:
        yield service


def http_status(url: str, token: str | None = None, timeout: float = 5.0) -> int:
    """The HTTP status of a GET (redirects not followed; 0 when nothing answers)."""

    class _NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return 0


__all__ = ["check_port_free", "http_status", "running_gateway"]
