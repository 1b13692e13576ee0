"""Performance where labels exist: rolling windows of AUC and operating-point rates.

Reader feedback and imported ground truth give some studies labels, days or weeks
after the model read them. For each model, label, site and subgroup this module
computes, over the studies of the last 7 and 30 days (by study date), the AUC with
its DeLong interval and the sensitivity, specificity, PPV and alert rate (share of
studies called positive) with Wilson intervals, all from
:mod:`overread.evaluation`. An alert is raised when the upper end of a window's AUC
interval falls more than a margin below the validated baseline (so chance
fluctuation in a small window does not alarm), or when the lower end of the false
critical alert rate's interval exceeds its budget.
"""

from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from overread.errors import ConfigError
from overread.evaluation.delong import delong_ci
from overread.evaluation.operating_points import wilson_interval
from overread.monitoring.alerts import Alert, AlertKind
from overread.monitoring.observations import StudyObservation

#: Rolling windows, in days.
WINDOWS: tuple[int, ...] = (7, 30)
#: Subgroup attributes the performance tables and alerts are broken down by.
SUBGROUP_ATTRIBUTES: tuple[str, ...] = ("group", "sex", "age_band")

Truth = Mapping[str, Mapping[str, int]]
NAN2 = (float("nan"), float("nan"))


@dataclass(frozen=True)
class Rate:
    """A proportion with its Wilson interval."""

    value: float
    ci: tuple[float, float]
    successes: int
    trials: int

    @classmethod
    def of(cls, successes: int, trials: int, confidence: float) -> Rate:
        if trials == 0:
            return cls(float("nan"), NAN2, 0, 0)
        return cls(
            successes / trials, wilson_interval(successes, trials, confidence), successes, trials
        )


@dataclass(frozen=True)
class WindowMetrics:
    """One label's performance over one window in one slice of the studies.

    ``site`` and ``subgroup`` are ``""`` for "all"; ``subgroup`` reads
    ``attribute=value`` (``group=D``).
    """

    model: str
    label: str
    site: str
    subgroup: str
    window_days: int
    end: dt.date
    n: int
    n_positive: int
    auc: float
    auc_ci: tuple[float, float]
    sensitivity: Rate
    specificity: Rate
    ppv: Rate
    alert_rate: Rate


def window_metrics(
    observations: Sequence[StudyObservation],
    truth: Truth,
    label: str,
    *,
    end: dt.date,
    window_days: int,
    site: str = "",
    subgroup: str = "",
    confidence: float = 0.95,
) -> WindowMetrics:
    """The metrics of ``label`` over the labelled studies dated within the window.

    ``observations`` should already be the slice (site, subgroup) wanted; studies
    without a truth value for ``label`` are left out.
    """
    start = end - dt.timedelta(days=window_days - 1)
    y: list[int] = []
    p: list[float] = []
    called: list[bool] = []
    model = observations[0].model if observations else ""
    for o in observations:
        if not start <= o.date <= end:
            continue
        value = truth.get(o.study_instance_uid, {}).get(label)
        if value is None or label not in o.labels:
            continue
        i = o.labels.index(label)
        y.append(int(value))
        p.append(o.probabilities[i])
        called.append(o.positive[i])
    yy, cc = np.asarray(y, dtype=bool), np.asarray(called, dtype=bool)
    n, n_pos = int(yy.size), int(yy.sum())
    auc, auc_ci = float("nan"), NAN2
    if n_pos >= 2 and n - n_pos >= 2:
        est = delong_ci(yy, np.asarray(p), confidence)
        auc, auc_ci = est.auc, (float(est.ci[0]), float(est.ci[1]))
    tp, fp = int((yy & cc).sum()), int((~yy & cc).sum())
    return WindowMetrics(
        model=model,
        label=label,
        site=site,
        subgroup=subgroup,
        window_days=window_days,
        end=end,
        n=n,
        n_positive=n_pos,
        auc=auc,
        auc_ci=auc_ci,
        sensitivity=Rate.of(tp, n_pos, confidence),
        specificity=Rate.of(n - n_pos - fp, n - n_pos, confidence),
        ppv=Rate.of(tp, tp + fp, confidence),
        alert_rate=Rate.of(tp + fp, n, confidence),
    )


def slices(
    observations: Sequence[StudyObservation],
    attributes: Sequence[str] = SUBGROUP_ATTRIBUTES,
) -> dict[tuple[str, str], list[StudyObservation]]:
    """The studies split by ``(site, subgroup)``: all, per site, per subgroup value."""
    out: dict[tuple[str, str], list[StudyObservation]] = defaultdict(list)
    for o in observations:
        out[("", "")].append(o)
        out[(o.site, "")].append(o)
        for attribute in attributes:
            value = o.subgroup(attribute)
            if value:
                out[("", f"{attribute}={value}")].append(o)
    return dict(out)


def performance_table(
    observations: Sequence[StudyObservation],
    truth: Truth,
    *,
    end: dt.date,
    windows: Sequence[int] = WINDOWS,
    attributes: Sequence[str] = SUBGROUP_ATTRIBUTES,
    confidence: float = 0.95,
) -> list[WindowMetrics]:
    """Every label x slice x window's metrics, per model (the daily summary's table)."""
    by_model: dict[str, list[StudyObservation]] = defaultdict(list)
    for o in observations:
        by_model[o.model].append(o)
    out = []
    for studies in by_model.values():
        labels = studies[0].labels
        for (site, subgroup), part in sorted(slices(studies, attributes).items()):
            for days in windows:
                for label in labels:
                    out.append(
                        window_metrics(
                            part,
                            truth,
                            label,
                            end=end,
                            window_days=days,
                            site=site,
                            subgroup=subgroup,
                            confidence=confidence,
                        )
                    )
    return out


@dataclass(frozen=True)
class PerformanceSettings:
    """Performance alert rules.

    Parameters
    ----------
    baseline_auc
        The validated AUC per label (from the model's validation report).
    margin
        Tolerated AUC loss below the baseline.
    confidence
        Confidence of the intervals alerts are decided on.
    min_positive, min_negative
        A window with fewer labelled cases of a class is not judged.
    critical_labels, false_critical_budget
        The share of studies falsely called positive for a critical label must stay
        at or below the budget.
    windows
        Rolling windows judged.
    attributes
        Subgroup attributes judged (alerts of kind ``subgroup_performance``).
    cooldown_days
        The same alert (kind and subject) is not raised again within this many days.
    """

    baseline_auc: Mapping[str, float] = field(default_factory=dict)
    margin: float = 0.05
    confidence: float = 0.99
    min_positive: int = 10
    min_negative: int = 10
    critical_labels: tuple[str, ...] = ("Pneumothorax",)
    false_critical_budget: float = 0.05
    windows: tuple[int, ...] = WINDOWS
    attributes: tuple[str, ...] = SUBGROUP_ATTRIBUTES
    cooldown_days: int = 30

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid setting."""
        if not 0 <= self.margin < 0.5:
            raise ConfigError(f"performance margin {self.margin} is outside 0..0.5")
        if not 0.5 < self.confidence < 1:
            raise ConfigError(f"performance confidence {self.confidence} is outside 0.5..1")
        if not 0 < self.false_critical_budget < 1:
            raise ConfigError(f"false critical budget {self.false_critical_budget} is outside 0..1")


class PerformanceMonitor:
    """Judges the labelled studies' rolling windows each day and raises alerts."""

    def __init__(self, settings: PerformanceSettings) -> None:
        settings.validate()
        self.settings = settings
        self.observations: list[StudyObservation] = []
        self.truth: dict[str, dict[str, int]] = {}
        self._last: dict[tuple[AlertKind, str], dt.date] = {}
        self.history: list[WindowMetrics] = []

    def add(self, observations: Sequence[StudyObservation], truth: Truth) -> None:
        """Add studies and whatever labels have arrived for them."""
        self.observations.extend(observations)
        for uid, labels in truth.items():
            self.truth.setdefault(uid, {}).update(labels)

    def _raise(self, alert: Alert, out: list[Alert]) -> None:
        key = (alert.kind, alert.subject)
        last = self._last.get(key)
        if last is not None and (alert.date - last).days < self.settings.cooldown_days:
            return
        self._last[key] = alert.date
        out.append(alert)

    def evaluate(self, day: dt.date) -> list[Alert]:
        """Judge every window ending on ``day``; return the alerts raised."""
        s = self.settings
        longest = max(s.windows)
        start = day - dt.timedelta(days=longest - 1)
        recent = [o for o in self.observations if start <= o.date <= day]
        self.observations = recent  # older studies can no longer enter a window
        alerts: list[Alert] = []
        for (site, subgroup), part in sorted(slices(recent, s.attributes).items()):
            kind = AlertKind.SUBGROUP_PERFORMANCE if subgroup else AlertKind.PERFORMANCE
            where = subgroup or (f"site {site}" if site else "all sites")
            for days in s.windows:
                first = day - dt.timedelta(days=days - 1)
                part_window = [o for o in part if o.date >= first]
                for label, baseline in s.baseline_auc.items():
                    m = window_metrics(
                        part_window,
                        self.truth,
                        label,
                        end=day,
                        window_days=days,
                        site=site,
                        subgroup=subgroup,
                        confidence=s.confidence,
                    )
                    if not subgroup and not site:
                        self.history.append(m)
                    enough = m.n_positive >= s.min_positive and m.n - m.n_positive >= s.min_negative
                    bound = baseline - s.margin
                    if enough and not math.isnan(m.auc_ci[1]) and m.auc_ci[1] < bound:
                        self._raise(
                            Alert(
                                kind=kind,
                                date=day,
                                subject=f"{label}, {where}",
                                statistic=f"auc_ci_high_{days}d",
                                value=m.auc_ci[1],
                                threshold=bound,
                                model=m.model,
                                message=(
                                    f"{label} AUC over {days} days at {where} is {m.auc:.3f} "
                                    f"({s.confidence:.0%} CI up to {m.auc_ci[1]:.3f}), more than "
                                    f"{s.margin:g} below the validated {baseline:.3f}"
                                ),
                                evidence={"auc": m.auc, "n": m.n, "n_positive": m.n_positive},
                            ),
                            alerts,
                        )
                for label in s.critical_labels:
                    m = window_metrics(
                        part_window,
                        self.truth,
                        label,
                        end=day,
                        window_days=days,
                        site=site,
                        subgroup=subgroup,
                        confidence=s.confidence,
                    )
                    false_calls = m.specificity.trials - m.specificity.successes
                    rate = Rate.of(false_calls, m.n, s.confidence)
                    if m.n and rate.ci[0] > s.false_critical_budget:
                        self._raise(
                            Alert(
                                kind=kind,
                                date=day,
                                subject=f"false {label} alerts, {where}",
                                statistic=f"false_critical_rate_ci_low_{days}d",
                                value=rate.ci[0],
                                threshold=s.false_critical_budget,
                                model=m.model,
                                message=(
                                    f"{false_calls} of {m.n} studies over {days} days at {where} "
                                    f"were falsely called {label} (budget "
                                    f"{s.false_critical_budget:.1%})"
                                ),
                                evidence={"rate": rate.value, "n": m.n},
                            ),
                            alerts,
                        )
        return alerts


__all__ = [
    "SUBGROUP_ATTRIBUTES",
    "WINDOWS",
    "PerformanceMonitor",
    "PerformanceSettings",
    "Rate",
    "Truth",
    "WindowMetrics",
    "performance_table",
    "slices",
    "window_metrics",
]
