"""The daily summary: what the gateway did on one day, and where monitoring stands.

:func:`daily_summary` reads the day's results, jobs and alerts and the last
monitoring run's figures (``monitoring_points``, ``monitoring_alerts``); it is what
``overread monitor summary --json``, ``GET /api/monitoring/summary`` and the
monitoring page show. :func:`daily_series` gives the per-day figures the page plots.
Days are UTC days. Shadow results are left out (they reach no reader).

Keys of :meth:`DailySummary.to_dict`: ``date``; ``studies`` (studies with a result
stored that day) and ``analysed`` (of them, at least one image analysed);
``findings`` (per label, studies called positive); ``referrals`` (studies with an
indeterminate finding, and per label); ``refusals`` (``not_analysed_studies``: the
input gate refused every image, ``refused_images``, ``failed_jobs``: infer jobs
dead-lettered that day); ``alerts`` (``critical``: study alerts raised,
``monitoring``: monitoring alerts routed, ``monitoring_alerts``: their list);
``latency_seconds`` (``turnaround``: job queued to result, ``processing``: job
started to result, ``model``: the model call; each ``n``, ``p50``, ``p90``,
``p95``, ``max``); ``drift`` (per site, the last run's latest figures and a
``status``); ``performance`` (per model, label and window, the latest rolling AUC
with its interval, labelled cases, baseline and a ``status``).
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from overread.db import Database
from overread.monitoring import AlertKind
from overread.results import Decision, ResultSummary
from overread.service.db import Job, JobKind, JobState, Result
from overread.service.monitor.store import MonitoringAlertRecord, MonitoringPoint, PointKind
from overread.service.rollout import RolloutResult, RolloutRole
from overread.triage.schema import Alert as TriageAlert

_DRIFT_KINDS = (AlertKind.ACQUISITION_DRIFT.value, AlertKind.OUTPUT_DRIFT.value)
_PERFORMANCE_KINDS = (AlertKind.PERFORMANCE.value, AlertKind.SUBGROUP_PERFORMANCE.value)


def _bounds(start: dt.date, end: dt.date) -> tuple[dt.datetime, dt.datetime]:
    low = dt.datetime.combine(start, dt.time(), tzinfo=dt.UTC)
    high = dt.datetime.combine(end + dt.timedelta(days=1), dt.time(), tzinfo=dt.UTC)
    return low, high


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """``n``, ``p50``, ``p90``, ``p95`` and ``max`` of ``values`` (``None`` when empty)."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p95": None, "max": None}
    x = np.asarray(values, dtype=np.float64)
    p50, p90, p95 = np.percentile(x, [50, 90, 95])
    return {
        "n": int(x.size),
        "p50": round(float(p50), 4),
        "p90": round(float(p90), 4),
        "p95": round(float(p95), 4),
        "max": round(float(x.max()), 4),
    }


@dataclass
class DayFigures:
    """One day's activity (what the page plots)."""

    day: dt.date
    studies: set[str] = field(default_factory=set)
    analysed: set[str] = field(default_factory=set)
    findings: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    referrals: dict[str, set[str]] = field(default_factory=lambda: defaultdict(set))
    not_analysed: set[str] = field(default_factory=set)
    refused_images: int = 0
    failed_jobs: int = 0
    critical_alerts: int = 0
    monitoring_alerts: list[dict[str, Any]] = field(default_factory=list)
    turnaround: list[float] = field(default_factory=list)
    processing: list[float] = field(default_factory=list)
    model: list[float] = field(default_factory=list)


def _shadow_ids(session: Any, ids: list[int]) -> set[int]:
    out: set[int] = set()
    for chunk in range(0, len(ids), 500):
        out.update(
            session.scalars(
                select(RolloutResult.result_id).where(
                    RolloutResult.result_id.in_(ids[chunk : chunk + 500]),
                    RolloutResult.role == RolloutRole.SHADOW.value,
                )
            ).all()
        )
    return out


def daily_series(database: Database, start: dt.date, end: dt.date) -> list[DayFigures]:
    """The figures of every day ``start..end`` (inclusive)."""
    low, high = _bounds(start, end)
    days = {
        start + dt.timedelta(days=i): DayFigures(start + dt.timedelta(days=i))
        for i in range((end - start).days + 1)
    }
    with database.session() as session:
        results = session.scalars(
            select(Result).where(Result.created_at >= low, Result.created_at < high)
        ).all()
        shadows = _shadow_ids(session, [r.id for r in results])
        job_ids = set()
        for result in results:
            if result.id in shadows:
                continue
            figures = days.get(result.created_at.date())
            if figures is None:
                continue
            uid = result.study_instance_uid
            figures.studies.add(uid)
            job_ids.add(result.job_id)
            summary = ResultSummary.from_dict(result.summary or {})
            usable = [p for p in summary.instances if p.ok]
            if usable:
                figures.analysed.add(uid)
            elif summary.instances and all(
                p.gate is not None and p.gate.refused for p in summary.instances
            ):
                figures.not_analysed.add(uid)
            figures.refused_images += sum(
                1 for p in summary.instances if not p.ok and p.gate is not None and p.gate.refused
            )
            for prediction in usable:
                for finding in prediction.findings:
                    if finding.positive:
                        figures.findings[finding.label].add(uid)
                    if finding.decision is Decision.INDETERMINATE:
                        figures.referrals[finding.label].add(uid)
            model_seconds = summary.timings.get("model_total")
            if model_seconds is not None:
                figures.model.append(float(model_seconds))
        jobs = session.scalars(
            select(Job).where(
                Job.kind == JobKind.INFER.value,
                Job.finished_at >= low,
                Job.finished_at < high,
            )
        ).all()
        for job in jobs:
            if job.finished_at is None:
                continue
            figures = days.get(job.finished_at.date())
            if figures is None:
                continue
            if job.state == JobState.DEAD_LETTERED.value:
                figures.failed_jobs += 1
                continue
            if job.id not in job_ids or job.state != JobState.SUCCEEDED.value:
                continue
            figures.turnaround.append((job.finished_at - job.created_at).total_seconds())
            if job.started_at is not None:
                figures.processing.append((job.finished_at - job.started_at).total_seconds())
        for raised in session.scalars(
            select(TriageAlert.raised_at).where(
                TriageAlert.raised_at >= low,
                TriageAlert.raised_at < high,
                TriageAlert.study_instance_uid != "",
            )
        ).all():
            figures = days.get(raised.date())
            if figures is not None:
                figures.critical_alerts += 1
        for record in session.scalars(
            select(MonitoringAlertRecord)
            .where(MonitoringAlertRecord.raised_at >= low, MonitoringAlertRecord.raised_at < high)
            .order_by(MonitoringAlertRecord.id)
        ).all():
            figures = days.get(record.raised_at.date())
            if figures is not None:
                figures.monitoring_alerts.append(_alert_dict(record))
    return [days[d] for d in sorted(days)]


def _alert_dict(record: MonitoringAlertRecord) -> dict[str, Any]:
    return {
        "alert_id": record.triage_alert_id,
        "kind": record.kind,
        "subject": record.subject,
        "model": record.model,
        "date": record.alert_date.isoformat(),
        "statistic": record.statistic,
        "value": record.value,
        "threshold": record.threshold,
        "message": record.message,
        "raised_at": record.raised_at.isoformat(),
    }


def _recent_alerts(
    session: Any, kinds: Sequence[str], day: dt.date, days: int
) -> list[MonitoringAlertRecord]:
    return list(
        session.scalars(
            select(MonitoringAlertRecord).where(
                MonitoringAlertRecord.kind.in_(list(kinds)),
                MonitoringAlertRecord.alert_date <= day,
                MonitoringAlertRecord.alert_date > day - dt.timedelta(days=days),
            )
        ).all()
    )


def drift_status(
    database: Database, day: dt.date, *, window_days: int = 30
) -> list[dict[str, Any]]:
    """Per site: the last run's latest drift figures on or before ``day`` and a status
    (``alert``: a drift alert in the last ``window_days``; else ``ok``)."""
    with database.session() as session:
        rows = session.scalars(
            select(MonitoringPoint)
            .where(MonitoringPoint.kind == PointKind.DRIFT.value, MonitoringPoint.point_date <= day)
            .order_by(MonitoringPoint.point_date)
        ).all()
        alerted = {r.subject for r in _recent_alerts(session, _DRIFT_KINDS, day, window_days)}
    latest: dict[str, MonitoringPoint] = {}
    for row in rows:
        latest[row.site] = row
    return [
        {
            "site": site,
            "date": row.point_date.isoformat(),
            "combined_score": row.value,
            "acquisition_score": row.data.get("acquisition_score"),
            "output_score": row.data.get("output_score"),
            "combined_cusum": row.data.get("combined_cusum"),
            "window_studies": row.data.get("window_studies"),
            "top_test": row.data.get("top_test"),
            "status": "alert" if f"site {site}" in alerted else "ok",
        }
        for site, row in sorted(latest.items())
    ]


def performance_status(
    database: Database, day: dt.date, *, window_days: int = 30
) -> list[dict[str, Any]]:
    """Per model, label and rolling window: the latest AUC on or before ``day`` with a
    status (``alert``: a performance alert on the label in the last ``window_days``;
    ``ok``: judged within bounds; ``insufficient labels``: no interval yet)."""
    with database.session() as session:
        rows = session.scalars(
            select(MonitoringPoint)
            .where(MonitoringPoint.kind == PointKind.AUC.value, MonitoringPoint.point_date <= day)
            .order_by(MonitoringPoint.point_date)
        ).all()
        alerts = _recent_alerts(session, _PERFORMANCE_KINDS, day, window_days)
    latest: dict[tuple[str, str, int], MonitoringPoint] = {}
    for row in rows:
        latest[(row.model, row.label, int(row.data.get("window_days", 0)))] = row
    out = []
    for (model, label, days), row in sorted(latest.items()):
        alerted = any(a.model == model and a.subject.startswith(f"{label},") for a in alerts)
        status = "alert" if alerted else ("ok" if row.value is not None else "insufficient labels")
        out.append(
            {
                "model": model,
                "label": label,
                "window_days": days,
                "date": row.point_date.isoformat(),
                "auc": row.value,
                "auc_ci": [row.data.get("ci_low"), row.data.get("ci_high")],
                "n": row.data.get("n"),
                "n_positive": row.data.get("n_positive"),
                "baseline": row.data.get("baseline"),
                "status": status,
            }
        )
    return out


@dataclass(frozen=True)
class DailySummary:
    """One day's summary (keys: see the module)."""

    day: dt.date
    figures: DayFigures
    drift: list[dict[str, Any]]
    performance: list[dict[str, Any]]

    def to_dict(self) -> dict[str, Any]:
        """The summary's JSON."""
        f = self.figures
        return {
            "date": self.day.isoformat(),
            "studies": len(f.studies),
            "analysed": len(f.analysed),
            "findings": {k: len(v) for k, v in sorted(f.findings.items())},
            "referrals": {
                "studies": len(set().union(*f.referrals.values())) if f.referrals else 0,
                "by_label": {k: len(v) for k, v in sorted(f.referrals.items())},
            },
            "refusals": {
                "not_analysed_studies": len(f.not_analysed),
                "refused_images": f.refused_images,
                "failed_jobs": f.failed_jobs,
            },
            "alerts": {
                "critical": f.critical_alerts,
                "monitoring": len(f.monitoring_alerts),
                "monitoring_alerts": list(f.monitoring_alerts),
            },
            "latency_seconds": {
                "turnaround": percentiles(f.turnaround),
                "processing": percentiles(f.processing),
                "model": percentiles(f.model),
            },
            "drift": list(self.drift),
            "performance": list(self.performance),
        }


#: The keys of :meth:`DailySummary.to_dict`, in order.
SUMMARY_KEYS: tuple[str, ...] = (
    "date",
    "studies",
    "analysed",
    "findings",
    "referrals",
    "refusals",
    "alerts",
    "latency_seconds",
    "drift",
    "performance",
)


def daily_summary(database: Database, day: dt.date) -> DailySummary:
    """The summary of ``day`` (UTC)."""
    (figures,) = daily_series(database, day, day)
    return DailySummary(
        day=day,
        figures=figures,
        drift=drift_status(database, day),
        performance=performance_status(database, day),
    )


__all__ = [
    "SUMMARY_KEYS",
    "DailySummary",
    "DayFigures",
    "daily_series",
    "daily_summary",
    "drift_status",
    "percentiles",
    "performance_status",
]
