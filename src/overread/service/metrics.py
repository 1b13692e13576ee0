"""Operational metrics of one gateway, in the Prometheus text format (``GET /metrics``).

Two kinds, in one :class:`prometheus_client.CollectorRegistry` per gateway:

* **counted as it happens** in this process: instances stored and their bytes (by
  C-STORE, STOW-RS or from files; a duplicate is not counted) per gateway, and the
  seconds of each stage of every infer job the process's workers ran (shared by the
  gateways of one process, which only tests run) (``read``, ``preprocess``, ``inference``, ``postprocess``,
  ``explain``, ``trust``, per image), as histograms;
* **read from the database at each scrape**, so they hold for every worker process
  sharing it: jobs per kind and state (queue depth, running, waiting to retry,
  dead letters), each export destination's health (up, exports waiting, dead
  letters), and the model version each route's alias points to now.

Infer jobs run by separate ``overread worker`` processes appear in the job counts, not
in this process's stage histograms.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select

from overread.service.rollout import CANARY_BUCKETS, ModelRollout, RolloutState

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from overread.service.config import ServiceConfig
    from overread.service.ingest import IngestOutcome
    from overread.service.jobs import JobQueue
    from overread.service.runtime import PipelineProvider

logger = logging.getLogger(__name__)

#: The stages of an infer job timed per image (``Prediction.timings``).
STAGES = ("read", "preprocess", "inference", "postprocess", "explain", "trust")

#: Histogram buckets in seconds, from a fast forward pass to a slow explanation.
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Every live :class:`ServiceMetrics` of this process, which workers report stage
#: timings to (see :func:`observe_stage_timings`).
_LIVE: set[ServiceMetrics] = set()
_LIVE_LOCK = threading.Lock()


class _StateCollector(Collector):
    """Gauges read from the database at each scrape."""

    def __init__(
        self, queue: JobQueue, config: ServiceConfig, models: PipelineProvider | None
    ) -> None:
        self.queue = queue
        self.config = config
        self.models = models

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily(
            "overread_jobs", "Jobs per kind and state (queue depth, retries, dead letters)",
            labels=["kind", "state"],
        )  # fmt: skip
        up = GaugeMetricFamily(
            "overread_destination_up",
            "1 while the destination takes exports, 0 while an export to it waits for a retry",
            labels=["destination"],
        )
        waiting = GaugeMetricFamily(
            "overread_destination_waiting_exports",
            "Exports to the destination not yet delivered",
            labels=["destination"],
        )
        dead = GaugeMetricFamily(
            "overread_destination_dead_letters",
            "Exports to the destination given up on",
            labels=["destination"],
        )
        try:
            for (kind, state), count in self.queue.counts_by_kind().items():
                jobs.add_metric([kind, state], count)
            names = [d.name for d in self.config.destinations]
            for health in self.queue.destination_health(names):
                up.add_metric([health["name"]], 1.0 if health["state"] == "up" else 0.0)
                waiting.add_metric([health["name"]], health["queued"])
                dead.add_metric([health["name"]], health["dead_lettered"])
        except Exception as exc:  # the database is down: say so, not a 500
            logger.warning("metrics: the job table could not be read: %s", exc)
            yield GaugeMetricFamily(
                "overread_database_up", "1 when the database answered the scrape", value=0
            )
            return
        yield GaugeMetricFamily(
            "overread_database_up", "1 when the database answered the scrape", value=1
        )
        yield jobs
        yield up
        yield waiting
        yield dead
        yield from self._models()
        yield from self._rollouts()

    def _rollouts(self) -> Iterator[Metric]:
        """Each alias's rollout: one 0/1 gauge per state, and the canary's share."""
        state = GaugeMetricFamily(
            "overread_rollout_state",
            "1 for the state an alias's rollout is in (shadow, canary, promoted, rolled-back)",
            labels=["alias", "state"],
        )
        share = GaugeMetricFamily(
            "overread_rollout_canary_share",
            "Share of studies (0..1) whose results come from the alias's canary candidate",
            labels=["alias"],
        )
        try:
            with self.queue.database.session() as session:
                rows = [
                    (r.alias, r.state, r.canary_share)
                    for r in session.scalars(select(ModelRollout)).all()
                ]
        except Exception as exc:  # a database without the rollout table: no rollout gauges
            logger.warning("metrics: the rollouts could not be read: %s", exc)
            return
        for alias, current, canary in rows:
            for known in RolloutState:
                state.add_metric([alias, known.value], 1.0 if current == known.value else 0.0)
            live = current == RolloutState.CANARY.value
            share.add_metric([alias], canary / CANARY_BUCKETS if live else 0.0)
        yield state
        yield share

    def _models(self) -> Iterator[Metric]:
        if self.models is None:
            return
        info = InfoMetricFamily(
            "overread_model", "The model version each route's alias points to now",
            labels=["route", "alias"],
        )  # fmt: skip
        for route in self.config.routes:
            for alias in route.models:
                try:
                    identity = self.models.identify(alias)
                except Exception as exc:  # an alias that does not resolve is shown as such
                    logger.debug("metrics: model %s: %s", alias, exc)
                    info.add_metric([route.name, alias], {"name": "", "version": "unresolved"})
                    continue
                info.add_metric(
                    [route.name, alias], {"name": identity.name, "version": identity.version}
                )
        yield info


class ServiceMetrics:
    """The metrics of one gateway (see the module)."""

    def __init__(
        self, queue: JobQueue, config: ServiceConfig, models: PipelineProvider | None = None
    ) -> None:
        self.registry = CollectorRegistry()
        self.instances = Counter(
            "overread_ingest_instances",
            "Instances received and stored (a duplicate SOP Instance UID is not counted)",
            ["via"],
            registry=self.registry,
        )
        self.bytes = Counter(
            "overread_ingest_bytes",
            "Bytes of the instances stored",
            ["via"],
            registry=self.registry,
        )
        self.stages = Histogram(
            "overread_stage_seconds",
            "Seconds per image of each stage of the infer jobs this process ran",
            ["stage"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.unmapped_sites = Counter(
            "overread_site_calibration_unmapped",
            "Studies whose site value [service.site_calibration] sites does not map "
            "(given the global calibration)",
            ["source"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(queue, config, models))

    def observe_ingest(self, outcome: IngestOutcome) -> None:
        """Count one received instance."""
        if outcome.duplicate:
            return
        via = outcome.via or "c-store"
        self.instances.labels(via=via).inc()
        self.bytes.labels(via=via).inc(outcome.size)

    def observe_timings(self, timings: Mapping[str, float]) -> None:
        """Record one image's stage timings."""
        for stage in STAGES:
            seconds = timings.get(stage)
            if seconds is not None and seconds >= 0:
                self.stages.labels(stage=stage).observe(float(seconds))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)

    def start(self) -> None:
        """Receive the stage timings of this process's workers."""
        with _LIVE_LOCK:
            _LIVE.add(self)

    def stop(self) -> None:
        """Stop receiving them."""
        with _LIVE_LOCK:
            _LIVE.discard(self)


def observe_unmapped_site(source: str) -> None:
    """A worker counts a study whose site value the ``sites`` mapping does not name."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for metrics in live:
        metrics.unmapped_sites.labels(source=source).inc()


def observe_stage_timings(timings: Mapping[str, float]) -> None:
    """A worker reports one image's stage timings to this process's gateways."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for metrics in live:
        metrics.observe_timings(timings)


__all__ = ["STAGES", "ServiceMetrics", "observe_stage_timings", "observe_unmapped_site"]
