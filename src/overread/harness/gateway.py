"""A running gateway on loopback, started in this process and stopped on exit.

This is the one place the harness names the object that wires the gateway
together; the demo, the benchmarks and the tests start gateways through it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from overread.config import Settings
from overread.gateway import Gateway
from overread.service.config import ServiceConfig, service_config

#: Settings for a gateway under test: one worker, the queue polled and failed jobs
#: retried within a fifth of a second, studies completed explicitly or on release
#: (not by a 60 s stable age).
QUICK_TIMINGS: dict[str, Any] = {
    "workers": 1,
    "stable_seconds": 60,
    "poll_seconds": 0.2,
    "retry_base_seconds": 0.2,
}


def loopback_config(settings: Settings, **overrides: Any) -> ServiceConfig:
    """The service configuration of ``settings``, its DICOM and HTTP listeners on free
    loopback ports (two runs at once, or a run beside a service on the default port,
    never collide).

    ``overrides`` are :func:`overread.service.config.service_config`'s (``None``
    means "not given"); ``dicom_port``, ``dicom_host`` and ``http_port`` may be
    overridden too (``http_port=None`` keeps the free port).
    """
    values: dict[str, Any] = {"dicom_port": 0, "dicom_host": "127.0.0.1"}
    values.update(overrides)
    if values.get("http_port") is None:
        values["http_port"] = 0
    return service_config(settings, **values)


@contextmanager
def running_gateway(
    config: ServiceConfig, *, stop_timeout: float = 30.0, **service_options: Any
) -> Iterator[Gateway]:
    """The gateway of ``config``, started (listeners bound), stopped on exit.

    ``service_options`` go to :class:`~overread.gateway.Gateway` (``artifacts``,
    ``registry``, ``with_http``, ``triage_interval``, ...).
    """
    service = Gateway(config, **service_options)
    try:
        service.start()
        yield service
    finally:
        service.stop(timeout=stop_timeout)


__all__ = ["QUICK_TIMINGS", "Gateway", "loopback_config", "running_gateway"]
