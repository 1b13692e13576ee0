"""The monitoring run: stored observations and reader labels through the monitors,
each new alert routed to the triage alert channels and the audit log.

A run replays the last ``history_days`` of stored observations (shadow results left
out: they reach no reader) day by day through a fresh
:class:`~overread.monitoring.DriftMonitor`, :class:`~overread.monitoring.PrevalenceMonitor`
and, where reader feedback gives labels and a validated baseline is known,
:class:`~overread.monitoring.PerformanceMonitor`, one set per model (a model's
probabilities are only compared with its own). Replaying from the stored data, not
keeping chart state between runs, makes a run repeatable and a restart harmless.

Every alert the replay raises is judged against ``monitoring_alerts``: one of the
same kind, subject and model dated within ``cooldown_days`` of a stored one is a
repeat of a known condition (a CUSUM restarts after it alarms, so a persistent drift
alarms again every few days) and is not routed; a new one is stored, raised as a
triage alert with an :class:`~overread.triage.schema.AlertNotice` (delivered as a
monitoring message, never as a study's critical finding) and audited
(``monitoring-alert``). The run also stores its daily drift and AUC figures for the
summary and the plots.

The baseline AUC of a label is the model package's validation AUC (its manifest's
``metrics.evaluations``, the ``test`` evaluation first) where recorded, else the
``baseline_auc`` setting.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from overread.audit import AuditAction, record_event
from overread.db import Database, utcnow
from overread.monitoring import (
    Alert,
    DriftMonitor,
    DriftSettings,
    FairnessMonitor,
    FairnessSettings,
    PerformanceMonitor,
    PerformanceSettings,
    PrevalenceMonitor,
    StudyObservation,
)
from overread.monitoring.drift import DriftPoint
from overread.monitoring.performance import WindowMetrics
from overread.service.monitor.settings import MonitoringSettings
from overread.service.monitor.store import (
    MonitoringAlertRecord,
    MonitoringPoint,
    PointKind,
    load_observations,
    replace_points,
)
from overread.triage.alerts import raise_notice_alert, run_sweep
from overread.triage.config import TriageConfig
from overread.triage.schema import AlertSource, Feedback

if TYPE_CHECKING:
    from overread.models.registry import Registry

logger = logging.getLogger(__name__)

#: The actor the audit records for a monitoring run.
MONITORING_ACTOR = "system:overread-monitoring"

#: Resolves ``name@version`` to its validated per-label AUCs (``{}`` when unknown).
BaselineLookup = Callable[[str], Mapping[str, float]]


@dataclass
class MonitoringRun:
    """What one run did.

    ``routed`` are the alerts raised now (stored, sent to the channels, audited);
    ``repeated`` those of a condition already alerted within the cooldown.
    """

    day: dt.date
    start: dt.date
    observations: int
    labelled_studies: int
    models: list[str] = field(default_factory=list)
    baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    routed: list[Alert] = field(default_factory=list)
    repeated: list[Alert] = field(default_factory=list)
    drift: list[DriftPoint] = field(default_factory=list)
    performance: list[WindowMetrics] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON of ``overread monitor run --json``."""
        latest: dict[str, DriftPoint] = {}
        for p in self.drift:
            latest[p.site] = p
        return {
            "date": self.day.isoformat(),
            "start": self.start.isoformat(),
            "observations": self.observations,
            "labelled_studies": self.labelled_studies,
            "models": list(self.models),
            "baselines": {m: dict(b) for m, b in self.baselines.items()},
            "alerts": [a.as_dict() for a in self.routed],
            "repeated": [a.as_dict() for a in self.repeated],
            "drift": [
                {
                    "site": p.site,
                    "date": p.date.isoformat(),
                    "combined_score": round(p.combined_score, 4),
                    "combined_cusum": round(p.combined_cusum, 4),
                    "window_studies": p.n_window,
                }
                for p in latest.values()
            ],
        }


def registry_baselines(registry: Registry) -> BaselineLookup:
    """Look baselines up in the model packages' manifests (``metrics.evaluations``)."""

    def lookup(model: str) -> Mapping[str, float]:
        try:
            metrics = registry.load(model).manifest.metrics
        except Exception as exc:  # an unknown or unreadable package has no baseline
            logger.info("monitoring: no validation AUCs for %s: %s", model, exc)
            return {}
        return validation_aucs(metrics)

    return lookup


def validation_aucs(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Per-label AUCs of a manifest's ``metrics`` (the ``test`` evaluation first)."""
    evaluations = metrics.get("evaluations") or {}
    if not isinstance(evaluations, Mapping) or not evaluations:
        return {}
    name = "test" if "test" in evaluations else next(iter(evaluations))
    per_label = (evaluations.get(name) or {}).get("per_label") or {}
    out: dict[str, float] = {}
    for label, figures in per_label.items():
        auc = figures.get("auc") if isinstance(figures, Mapping) else None
        if isinstance(auc, int | float) and 0.5 < float(auc) <= 1.0:
            out[str(label)] = float(auc)
    return out


def feedback_truth(database: Database, studies: Sequence[str]) -> dict[str, dict[str, int]]:
    """Reader labels per study and finding: the latest feedback's label (>= 0.5: 1)."""
    truth: dict[str, dict[str, int]] = defaultdict(dict)
    wanted = sorted(set(studies))
    with database.session() as session:
        for chunk in range(0, len(wanted), 500):
            rows = session.scalars(
                select(Feedback)
                .where(Feedback.study_instance_uid.in_(wanted[chunk : chunk + 500]))
                .order_by(Feedback.created_at, Feedback.id)
            ).all()
            for row in rows:
                truth[row.study_instance_uid][row.finding] = int(float(row.label) >= 0.5)
    return dict(truth)


def _days(start: dt.date, end: dt.date) -> list[dt.date]:
    return [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]


def _sample(observations: Sequence[StudyObservation], per_site: int) -> list[StudyObservation]:
    """At most ``per_site`` observations of each site, chosen by a hash of the study UID
    (the same studies on every run)."""
    by_site: dict[str, list[StudyObservation]] = defaultdict(list)
    for o in observations:
        by_site[o.site].append(o)
    out: list[StudyObservation] = []
    for studies in by_site.values():
        if len(studies) > per_site:
            studies = sorted(
                studies,
                key=lambda o: hashlib.sha256(o.study_instance_uid.encode()).hexdigest(),
            )[:per_site]
        out.extend(studies)
    return out


def _replay(
    model: str,
    observations: Sequence[StudyObservation],
    truth: Mapping[str, Mapping[str, int]],
    baseline: Mapping[str, float],
    settings: MonitoringSettings,
    critical: Sequence[str],
    days: Sequence[dt.date],
) -> tuple[list[Alert], list[DriftPoint], list[WindowMetrics]]:
    drift = DriftMonitor(
        DriftSettings(
            reference_days=settings.reference_days,
            window_days=settings.window_days,
            min_studies=settings.min_studies,
            mmd_permutations=settings.mmd_permutations,
        )
    )
    prevalence = PrevalenceMonitor()
    performance = (
        PerformanceMonitor(
            PerformanceSettings(
                baseline_auc=dict(baseline),
                margin=settings.auc_margin,
                min_positive=settings.min_labelled,
                min_negative=settings.min_labelled,
                critical_labels=tuple(critical),
                false_critical_budget=settings.false_critical_budget,
                cooldown_days=settings.cooldown_days,
            )
        )
        if truth
        else None
    )
    by_day: dict[dt.date, list[StudyObservation]] = defaultdict(list)
    for o in observations:
        by_day[o.date].append(o)
    alerts: list[Alert] = []
    for day in days:
        todays = by_day.get(day, [])
        raised = drift.update(day, _sample(todays, settings.drift_studies_per_day))
        raised += prevalence.update(day, todays)
        if performance is not None:
            performance.add(
                todays,
                {
                    o.study_instance_uid: truth[o.study_instance_uid]
                    for o in todays
                    if o.study_instance_uid in truth
                },
            )
            raised += performance.evaluate(day)
        alerts.extend(a if a.model else replace(a, model=model) for a in raised)
    history = performance.history if performance is not None else []
    return alerts, drift.history, history


def observed_thresholds(observations: Sequence[StudyObservation]) -> dict[str, float]:
    """Each label's operating threshold as the stored decisions show it.

    An observation keeps the probability and the positive decision of every label, so
    the lowest probability decided positive is the threshold those decisions used (a
    label never decided positive has none and is not judged).
    """
    lowest: dict[str, float] = {}
    for o in observations:
        for label, p, positive in zip(o.labels, o.probabilities, o.positive, strict=True):
            if positive and (label not in lowest or p < lowest[label]):
                lowest[label] = float(p)
    return lowest


def _fairness(
    model: str,
    observations: Sequence[StudyObservation],
    truth: Mapping[str, Mapping[str, int]],
    settings: MonitoringSettings,
    day: dt.date,
) -> list[Alert]:
    """Subgroup gaps on the window ending on ``day`` (once a run: the bootstrap is not
    cheap, and a gap is a slow signal)."""
    labelled = {label for labels in truth.values() for label in labels}
    thresholds = {
        label: t for label, t in observed_thresholds(observations).items() if label in labelled
    }
    if not thresholds:
        return []
    monitor = FairnessMonitor(
        FairnessSettings(
            thresholds=thresholds,
            attribute=settings.fairness_attribute,
            tolerance=dict(settings.fairness_tolerance),
            window_days=settings.fairness_window_days,
            min_positive=settings.min_labelled,
        ),
        seed=int(hashlib.sha256(model.encode()).hexdigest()[:8], 16),
    )
    return [replace(a, model=a.model or model) for a in monitor.evaluate(day, observations, truth)]


def run_monitoring(
    database: Database,
    settings: MonitoringSettings,
    triage: TriageConfig,
    *,
    baselines: BaselineLookup | None = None,
    day: dt.date | None = None,
    deliver: bool = True,
) -> MonitoringRun:
    """One monitoring run over the days up to ``day`` (default today, UTC); see the module.

    ``deliver`` attempts the new alerts' deliveries at once (the triage sweep would
    otherwise send them on its next pass).
    """
    end = day or utcnow().date()
    start = end - dt.timedelta(days=settings.history_days - 1)
    with database.session() as session:
        observations = load_observations(session, start, end)
    truth = feedback_truth(database, [o.study_instance_uid for o in observations])
    by_model: dict[str, list[StudyObservation]] = defaultdict(list)
    for o in observations:
        by_model[o.model].append(o)
    run = MonitoringRun(
        day=end,
        start=start,
        observations=len(observations),
        labelled_studies=sum(
            1 for uid in {o.study_instance_uid for o in observations} if uid in truth
        ),
        models=sorted(by_model),
    )
    alerts: list[Alert] = []
    first = min((o.date for o in observations), default=end)
    days = _days(first, end)
    for model, studies in sorted(by_model.items()):
        baseline = dict(baselines(model)) if baselines is not None else {}
        if not baseline:
            baseline = dict(settings.baseline_auc)
        baseline = {k: v for k, v in baseline.items() if k in studies[0].labels}
        run.baselines[model] = baseline
        model_truth = {
            o.study_instance_uid: truth[o.study_instance_uid]
            for o in studies
            if o.study_instance_uid in truth
        }
        raised, drift, performance = _replay(
            model,
            studies,
            model_truth if baseline else {},
            baseline,
            settings,
            tuple(triage.alerts.critical),
            days,
        )
        alerts.extend(raised)
        alerts.extend(_fairness(model, studies, model_truth, settings, end))
        run.drift.extend(drift)
        run.performance.extend(performance)
    alerts.sort(key=lambda a: (a.date, a.kind.value, a.subject))
    now = utcnow()
    with database.session() as session:
        _store_points(session, run, start)
        for alert in alerts:
            if _known(session, alert, settings.cooldown_days):
                run.repeated.append(alert)
                continue
            _route(session, alert, triage, now)
            session.flush()
            run.routed.append(alert)
    if run.routed:
        logger.warning("monitoring: %d new alert(s)", len(run.routed))
        if deliver:
            run_sweep(database, triage, now=utcnow())
    return run


def _known(session: Any, alert: Alert, cooldown_days: int) -> bool:
    since = alert.date - dt.timedelta(days=cooldown_days - 1)
    until = alert.date + dt.timedelta(days=cooldown_days - 1)
    found = session.scalar(
        select(MonitoringAlertRecord.id)
        .where(
            MonitoringAlertRecord.kind == alert.kind.value,
            MonitoringAlertRecord.subject == alert.subject[:200],
            MonitoringAlertRecord.model == alert.model[:200],
            MonitoringAlertRecord.alert_date >= since,
            MonitoringAlertRecord.alert_date <= until,
        )
        .limit(1)
    )
    return found is not None


def _evidence(alert: Alert) -> dict[str, float | str]:
    return {
        k: (v if v == v else "nan") if isinstance(v, float) else v
        for k, v in alert.evidence.items()
    }


def _route(session: Any, alert: Alert, triage: TriageConfig, now: dt.datetime) -> None:
    evidence = _evidence(alert)
    triage_alert = raise_notice_alert(
        session,
        triage,
        source=AlertSource.MONITORING,
        kind=alert.kind.value,
        subject=alert.subject,
        message=alert.message,
        value=alert.value,
        threshold=alert.threshold,
        details={
            "date": alert.date.isoformat(),
            "statistic": alert.statistic,
            "model": alert.model,
            **evidence,
        },
        now=now,
    )
    session.add(
        MonitoringAlertRecord(
            kind=alert.kind.value,
            subject=alert.subject[:200],
            model=alert.model[:200],
            alert_date=alert.date,
            statistic=alert.statistic[:64],
            value=float(alert.value),
            threshold=float(alert.threshold),
            message=alert.message,
            evidence=evidence,
            triage_alert_id=triage_alert.id,
            raised_at=now,
        )
    )
    record_event(
        session,
        actor=MONITORING_ACTOR,
        action=AuditAction.MONITORING_ALERT,
        details={
            "alert_id": triage_alert.id,
            "kind": alert.kind.value,
            "subject": alert.subject,
            "model": alert.model,
            "date": alert.date.isoformat(),
            "statistic": alert.statistic,
            "value": round(float(alert.value), 6),
            "threshold": float(alert.threshold),
            "message": alert.message,
        },
    )


def _finite(value: float) -> float | None:
    return None if value != value else round(float(value), 6)


def _store_points(session: Any, run: MonitoringRun, start: dt.date) -> None:
    drift = [
        MonitoringPoint(
            kind=PointKind.DRIFT.value,
            point_date=p.date,
            model="",
            site=p.site[:64],
            label="",
            value=_finite(p.combined_score),
            data={
                "acquisition_score": _finite(p.acquisition_score),
                "output_score": _finite(p.output_score),
                "combined_cusum": _finite(p.combined_cusum),
                "combined_ewma": _finite(p.combined_ewma),
                "window_studies": p.n_window,
                "max_psi": _finite(p.max_psi),
                "top_test": p.top_test,
            },
        )
        for p in run.drift
    ]
    replace_points(session, PointKind.DRIFT, start, drift)
    auc = [
        MonitoringPoint(
            kind=PointKind.AUC.value,
            point_date=m.end,
            model=m.model[:200],
            site="",
            label=m.label[:64],
            value=_finite(m.auc),
            data={
                "window_days": m.window_days,
                "n": m.n,
                "n_positive": m.n_positive,
                "ci_low": _finite(m.auc_ci[0]),
                "ci_high": _finite(m.auc_ci[1]),
                "sensitivity": _finite(m.sensitivity.value),
                "specificity": _finite(m.specificity.value),
                "baseline": run.baselines.get(m.model, {}).get(m.label),
            },
        )
        for m in run.performance
        if m.n
    ]
    replace_points(session, PointKind.AUC, start, auc)


@dataclass
class MonitoringScheduler:
    """The running gateway's periodic monitoring run, in a thread of its own.

    The first run comes one interval after the start (a restart loop does not rerun
    it); ``interval_seconds = 0`` runs none.
    """

    run: Callable[[], MonitoringRun]
    interval_seconds: float
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (nothing when the interval is 0)."""
        if not self.interval_seconds:
            return
        self._thread = threading.Thread(target=self._loop, name="overread-monitoring", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        interval = float(self.interval_seconds)
        while not self._stop.wait(interval):
            try:
                report = self.run()
            except Exception:
                logger.exception("monitoring run failed; retrying in %.0f s", interval)
            else:
                logger.info(
                    "monitoring: %d observation(s), %d new alert(s), %d repeat(s)",
                    report.observations,
                    len(report.routed),
                    len(report.repeated),
                )

    def stop(self) -> None:
        """Stop the thread (a run in progress finishes first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)
            self._thread = None


__all__ = [
    "MONITORING_ACTOR",
    "BaselineLookup",
    "MonitoringRun",
    "MonitoringScheduler",
    "feedback_truth",
    "registry_baselines",
    "run_monitoring",
    "validation_aucs",
]
