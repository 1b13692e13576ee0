"""Fairness surveillance: do subgroup gaps stay inside the tolerated band?

Over a rolling window of labelled studies, each subgroup's gap to the reference
group is computed by :func:`overread.evaluation.subgroups.fairness_report` with a
patient-level bootstrap interval: the true-positive-rate gap (equal opportunity,
Hardt et al. 2016) and the calibration gap (difference of expected calibration
errors). An alert is raised when a gap's whole interval lies outside
``[-tolerance, +tolerance]``: the gap is then larger than tolerated beyond chance.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from overread.errors import ConfigError, EvaluationError
from overread.evaluation.subgroups import fairness_report
from overread.monitoring.alerts import Alert, AlertKind
from overread.monitoring.observations import StudyObservation
from overread.monitoring.performance import Truth

#: fairness_report's gap metric names for equal opportunity and calibration.
GAP_METRICS: dict[str, str] = {"tpr": "equal_opportunity", "ece": "calibration"}


@dataclass(frozen=True)
class FairnessSettings:
    """Fairness alert rules.

    Parameters
    ----------
    thresholds
        Each judged label's operating threshold (positive when ``p >= threshold``).
    attribute
        The subgroup attribute (``group``, ``sex``, ``age_band``).
    reference
        The reference group (default: the largest).
    tolerance
        The tolerated absolute gap per metric (``tpr``, ``ece``).
    window_days
        The window the gaps are computed on.
    min_positive
        Groups with fewer labelled positives are left out of a label's report.
    n_resamples, confidence
        Bootstrap resamples and interval level.
    """

    thresholds: Mapping[str, float] = field(default_factory=dict)
    attribute: str = "group"
    reference: str | None = None
    tolerance: Mapping[str, float] = field(default_factory=lambda: {"tpr": 0.2, "ece": 0.15})
    window_days: int = 30
    min_positive: int = 10
    n_resamples: int = 200
    confidence: float = 0.95

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid setting."""
        unknown = set(self.tolerance) - set(GAP_METRICS)
        if unknown:
            raise ConfigError(f"fairness tolerance for unknown metric(s): {sorted(unknown)}")
        if any(not 0 < t < 1 for t in self.tolerance.values()):
            raise ConfigError("fairness tolerances must lie in (0, 1)")


@dataclass(frozen=True)
class GapPoint:
    """One gap on one day."""

    date: dt.date
    label: str
    group: str
    reference: str
    metric: str
    gap: float
    ci: tuple[float, float]
    outside: bool


def gap_outside(ci: tuple[float, float], tolerance: float) -> bool:
    """True when the whole interval lies beyond ``tolerance`` on one side."""
    low, high = ci
    return bool(np.isfinite(low) and np.isfinite(high) and (low > tolerance or high < -tolerance))


class FairnessMonitor:
    """Gaps over a rolling window, judged whenever :meth:`evaluate` is called."""

    def __init__(self, settings: FairnessSettings, *, seed: int = 0) -> None:
        settings.validate()
        self.settings = settings
        self.seed = seed
        self.history: list[GapPoint] = []
        self._raised: set[tuple[str, str, str]] = set()

    def evaluate(
        self, day: dt.date, observations: Sequence[StudyObservation], truth: Truth
    ) -> list[Alert]:
        """Judge the window ending on ``day``; return alerts not raised before."""
        s = self.settings
        start = day - dt.timedelta(days=s.window_days - 1)
        studies = [o for o in observations if start <= o.date <= day]
        alerts: list[Alert] = []
        for label, threshold in s.thresholds.items():
            rows = [
                (
                    truth[o.study_instance_uid][label],
                    o.probability(label),
                    o.subgroup(s.attribute),
                    o.patient_id,
                )
                for o in studies
                if label in truth.get(o.study_instance_uid, {}) and o.subgroup(s.attribute)
            ]
            positives: dict[str, int] = {}
            for row in rows:
                positives[row[2]] = positives.get(row[2], 0) + int(row[0])
            kept = [r for r in rows if positives[r[2]] >= s.min_positive]
            if len({r[2] for r in kept}) < 2:
                continue
            truth_values = np.array([r[0] for r in kept], dtype=np.float64)
            scores = np.array([r[1] for r in kept], dtype=np.float64)
            groups = np.array([r[2] for r in kept])
            pids = np.array([r[3] or str(i) for i, r in enumerate(kept)])
            try:
                report = fairness_report(
                    s.attribute,
                    truth_values,
                    scores,
                    groups,
                    threshold,
                    patient_ids=pids,
                    reference=s.reference if s.reference in set(groups.tolist()) else None,
                    n_resamples=s.n_resamples,
                    confidence=s.confidence,
                    seed=self.seed + day.toordinal(),
                )
            except EvaluationError:
                continue
            for gap in report.gaps:
                tolerance = s.tolerance.get(gap.metric)
                if tolerance is None:
                    continue
                outside = gap_outside(gap.ci, tolerance)
                self.history.append(
                    GapPoint(
                        day, label, gap.group, gap.reference, gap.metric, gap.gap, gap.ci, outside
                    )
                )
                key = (label, gap.group, gap.metric)
                if not outside or key in self._raised:
                    continue
                self._raised.add(key)
                name = GAP_METRICS[gap.metric].replace("_", " ")
                alerts.append(
                    Alert(
                        kind=AlertKind.FAIRNESS,
                        date=day,
                        subject=f"{label}, {s.attribute}={gap.group} vs {gap.reference}",
                        statistic=f"{gap.metric}_gap",
                        value=gap.gap,
                        threshold=tolerance,
                        message=(
                            f"{label}: {name} gap of {s.attribute} {gap.group} against "
                            f"{gap.reference} is {gap.gap:+.3f} (CI {gap.ci[0]:+.3f} to "
                            f"{gap.ci[1]:+.3f}), outside +/-{tolerance:g}"
                        ),
                        evidence={"ci_low": gap.ci[0], "ci_high": gap.ci[1]},
                    )
                )
        return alerts


__all__ = ["GAP_METRICS", "FairnessMonitor", "FairnessSettings", "GapPoint", "gap_outside"]
