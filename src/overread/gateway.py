"""The running gateway: the service node, the triage sweep and the web app on HTTP.

:class:`Gateway` sits above both :mod:`overread.service` and :mod:`overread.web`
and wires them together: it is a :class:`~overread.service.node.ServiceNode` (DICOM
listener, study assembler, workers) that also runs the periodic triage sweep
(alert deliveries, retries and escalation, and rescoring of the worklist as studies
wait: :meth:`Gateway.run_triage`) and serves the web application, to which it hands
itself as the :class:`~overread.web.context.RunningService` the routes use.
``overread serve`` is a thin command around it, and tests start it in-process on
free ports.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from datetime import date, datetime
from typing import TYPE_CHECKING

from overread.errors import ConfigError
from overread.service.config import ServiceConfig
from overread.service.db import utcnow
from overread.service.http import HttpServer
from overread.service.monitor.run import (
    MonitoringRun,
    MonitoringScheduler,
    registry_baselines,
    run_monitoring,
)
from overread.service.node import ServiceNode
from overread.service.review import ReviewDesk
from overread.service.runtime import ArtifactBuilder, PipelineProvider
from overread.triage import SweepReport, TriageConfig, refresh_scores, run_sweep
from overread.web.app import create_app
from overread.web.context import WebContext

if TYPE_CHECKING:
    from overread.models.registry import Registry

logger = logging.getLogger(__name__)

#: Seconds between two triage sweeps when none is configured.
DEFAULT_TRIAGE_INTERVAL = 15.0
#: Seconds between two full rescorings of the worklist (see :meth:`Gateway.run_triage`).
_FULL_RESCORE_S = 3600.0


@dataclass(frozen=True)
class TriageRun:
    """What one periodic triage pass did."""

    sweep: SweepReport
    rescored: int


class Gateway(ServiceNode):
    """The running gateway: a :class:`~overread.service.node.ServiceNode` plus the
    periodic triage sweep and the web app on HTTP.

    ``config``, ``models``, ``artifacts``, ``with_scp``, ``registry`` are the node's
    (see :class:`~overread.service.node.ServiceNode`); here ``with_assembler`` also
    runs the triage sweep. Added:

    Parameters
    ----------
    with_http
        Start the HTTP API (``overread worker`` does not).
    triage_interval
        Seconds between triage sweeps (alert delivery, retries, escalation, and
        rescoring for waiting time); ``None`` or ``0`` runs none.
    """

    def __init__(
        self,
        config: ServiceConfig,
        *,
        models: PipelineProvider | None = None,
        artifacts: ArtifactBuilder | bool | None = True,
        with_scp: bool = True,
        with_http: bool = True,
        with_assembler: bool = True,
        registry: Registry | None = None,
        triage_interval: float | None = DEFAULT_TRIAGE_INTERVAL,
    ) -> None:
        try:
            self.triage: TriageConfig = TriageConfig.model_validate(config.triage)
        except ValueError as exc:
            raise ConfigError(f"invalid [triage] settings: {exc}") from None
        self.triage_interval = triage_interval
        self._rescored_all: float | None = None  # when the last full rescoring ran
        super().__init__(
            config,
            models=models,
            artifacts=artifacts,
            with_scp=with_scp,
            with_assembler=with_assembler,
            registry=registry,
        )
        self.with_http = with_http
        # Monitoring runs where the triage sweep does: once per data directory.
        self.monitoring: MonitoringScheduler | None = (
            MonitoringScheduler(self.run_monitoring, config.monitoring.interval_seconds)
            if with_assembler
            else None
        )
        self._triage_thread: threading.Thread | None = None
        self._http: HttpServer | None = None
        self.http_port: int | None = None

    def web_context(self) -> WebContext:
        """What the web app's routes use: this gateway and its access control."""
        return WebContext.for_service(self)

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> None:
        """Start every part; return once the listeners are bound."""
        if self.with_assembler and self.triage_interval:
            self._triage_thread = threading.Thread(
                target=self._triage_loop, name="overread-triage", daemon=True
            )
            self._triage_thread.start()
        super().start()
        if self.monitoring is not None:
            self.monitoring.start()
        if self.with_http and self.config.http_port is not None:
            http = HttpServer(
                create_app(self, self.web_context()),
                self.config.http_host,
                self.config.http_port,
                trusted_proxies=self.config.trusted_proxies,
            )
            self.http_port = http.start()
            self._http = http
            logger.info("HTTP API on http://%s:%d", self.config.http_host, self.http_port)

    def run_triage(self, now: datetime | None = None) -> TriageRun:
        """One triage pass: alert held results past their review time-out, escalate
        and deliver alerts, then rescore the unread studies whose score changed (all of
        them on the first pass and once an hour).

        The sweep sends with no transaction open (:func:`overread.triage.run_sweep`);
        rescoring is one short transaction. ``now`` defaults to the current time.
        """
        moment = now or utcnow()
        # Held results past their review time-out alert first, so the sweep delivers it.
        ReviewDesk(self.config, self.database, self.store, self.queue).sweep(
            self.triage, now=moment
        )
        report = run_sweep(self.database, self.triage, now=moment)
        # The first pass rescores every unread study (the weights may have changed since
        # the rows were scored), and again hourly (a worker process scores with its own
        # settings); the others only those whose wait crossed a step.
        full = (
            self._rescored_all is None or time.monotonic() - self._rescored_all >= _FULL_RESCORE_S
        )
        with self.database.session() as session:
            rescored = refresh_scores(session, self.triage, now=moment, full=full)
        if full:
            self._rescored_all = time.monotonic()
        return TriageRun(sweep=report, rescored=rescored)

    def run_monitoring(self, day: date | None = None) -> MonitoringRun:
        """One monitoring run (see :mod:`overread.service.monitor.run`), alerts delivered."""
        return run_monitoring(
            self.database,
            self.config.monitoring,
            self.triage,
            baselines=registry_baselines(self.registry),
            day=day,
        )

    def _triage_loop(self) -> None:
        interval = float(self.triage_interval or DEFAULT_TRIAGE_INTERVAL)
        while not self._stop.is_set():
            try:
                run = self.run_triage()
            except Exception:
                logger.exception("triage sweep failed; retrying in %.0f s", interval)
            else:
                report = run.sweep
                if report.sent or report.escalated or report.failed or report.retrying:
                    logger.info(
                        "triage: %d alert(s) sent, %d escalated, %d retrying, %d failed",
                        len(report.sent),
                        len(report.escalated),
                        len(report.retrying),
                        len(report.failed),
                    )
            self._stop.wait(interval)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop listening and sweeping, let running jobs finish (up to ``timeout``).

        The DICOM listener stops first, so no study arrives while the HTTP front and
        the triage sweep wind down.
        """
        self._stop.set()
        if self.scp is not None:
            self.scp.stop()
        if self._http is not None:
            self._http.stop()
        if self._triage_thread is not None:
            self._triage_thread.join(30)
        if self.monitoring is not None:
            self.monitoring.stop()
        super().stop(timeout)


__all__ = ["DEFAULT_TRIAGE_INTERVAL", "Gateway", "TriageRun"]
