"""Performance by subgroup, and fairness gaps between subgroups.

A model can be good on average and poor for one sex, age band, site or
scanner. Each metric is computed per group with an interval, and the gaps
behind the usual fairness criteria are reported against a reference group:
equal opportunity (TPR), equalized odds (TPR and FPR), demographic parity
(selection rate) and calibration within groups (ECE). A gap is flagged only
when its patient-level bootstrap interval excludes zero.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray
from overread.evaluation.bootstrap import bootstrap_statistic
from overread.evaluation.calibration import calibration_error
from overread.evaluation.delong import clustered_delong_ci, delong_ci
from overread.evaluation.operating_points import wilson_interval

GAP_METRICS: tuple[str, ...] = ("tpr", "fpr", "selection_rate", "ece")


def age_band(ages: ArrayLike, edges: Sequence[float] = (0, 40, 60, 80, 200)) -> NDArray[np.str_]:
    """Label ages with bands such as "40-59"; missing ages become "unknown"."""
    a = np.asarray(ages, dtype=np.float64)
    out = np.full(a.shape, "unknown", dtype=object)
    for lo, hi in itertools.pairwise(edges):
        rows = (a >= lo) & (a < hi)
        out[rows] = f"{int(lo)}+" if hi >= 150 else f"{int(lo)}-{int(hi) - 1}"
    return out.astype(str)


@dataclass(frozen=True)
class GroupMetric:
    """One metric in one subgroup; NaN with a reason when it cannot be computed."""

    attribute: str
    group: str
    metric: str
    value: float
    ci: tuple[float, float]
    n: int
    n_positive: int
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "attribute": self.attribute,
            "group": self.group,
            "metric": self.metric,
            "value": None if np.isnan(self.value) else self.value,
            "ci": [None if np.isnan(c) else c for c in self.ci],
            "n": self.n,
            "n_positive": self.n_positive,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class FairnessGap:
    """metric(group) - metric(reference) with a bootstrap CI; flagged if the CI excludes 0."""

    attribute: str
    group: str
    reference: str
    metric: str
    gap: float
    ci: tuple[float, float]
    flagged: bool
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "attribute": self.attribute,
            "group": self.group,
            "reference": self.reference,
            "metric": self.metric,
            "gap": None if np.isnan(self.gap) else self.gap,
            "ci": [None if np.isnan(c) else c for c in self.ci],
            "flagged": self.flagged,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class FairnessReport:
    """Per-group metrics, gaps to the reference group, and max-min differences."""

    metrics: list[GroupMetric]
    gaps: list[FairnessGap]
    differences: dict[str, float] = field(default_factory=dict)


def _rates(y: NDArray[np.bool_], called: NDArray[np.bool_]) -> dict[str, float]:
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    return {
        "tpr": (called & y).sum() / n_pos if n_pos else np.nan,
        "fpr": (called & ~y).sum() / n_neg if n_neg else np.nan,
        "selection_rate": called.mean() if y.size else np.nan,
    }


def _ece(y: NDArray[np.bool_], p: FloatArray, n_bins: int) -> float:
    if y.size == 0 or ((p < 0) | (p > 1)).any():
        return float("nan")
    return calibration_error(y, p, n_bins=n_bins).ece


def group_metrics(
    attribute: str,
    y_true: ArrayLike,
    y_score: ArrayLike,
    groups: ArrayLike,
    threshold: float,
    *,
    n_bins: int = 10,
    min_group: int = 1,
    patient_ids: ArrayLike | None = None,
) -> list[GroupMetric]:
    """AUC (DeLong CI), TPR, FPR, selection rate (Wilson CIs) and ECE for each group.

    With ``patient_ids`` the AUC interval is the patient-clustered DeLong one.
    """
    pids = None if patient_ids is None else np.asarray(patient_ids)
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    g = np.asarray(groups).astype(str)
    keep = ~np.isnan(y) & ~np.isnan(s)
    out: list[GroupMetric] = []
    nan2 = (float("nan"), float("nan"))
    for name in sorted(np.unique(g[keep]).tolist()):
        rows = keep & (g == name)
        yy = y[rows] == 1.0
        ss = s[rows]
        n, n_pos = int(rows.sum()), int(yy.sum())

        def add(
            metric: str,
            value: float,
            ci: tuple[float, float],
            reason: str = "",
            name: str = name,
            n: int = n,
            n_pos: int = n_pos,
        ) -> None:
            out.append(GroupMetric(attribute, name, metric, float(value), ci, n, n_pos, reason))

        if n < min_group:
            for metric in ("auc", "tpr", "fpr", "selection_rate", "ece"):
                add(metric, np.nan, nan2, f"only {n} case(s); need {min_group}")
            continue
        if 0 < n_pos < n:
            est = delong_ci(yy, ss) if pids is None else clustered_delong_ci(yy, ss, pids[rows])
            no_ci = "" if np.isfinite(est.se) else "fewer than 2 cases of a class: no interval"
            add("auc", est.auc, est.ci, no_ci)
        else:
            add("auc", np.nan, nan2, "one class only in this group")
        called = ss >= threshold
        tp, fp = int((called & yy).sum()), int((called & ~yy).sum())
        if n_pos:
            add("tpr", tp / n_pos, wilson_interval(tp, n_pos))
        else:
            add("tpr", np.nan, nan2, "no positive cases in this group")
        if n - n_pos:
            add("fpr", fp / (n - n_pos), wilson_interval(fp, n - n_pos))
        else:
            add("fpr", np.nan, nan2, "no negative cases in this group")
        add("selection_rate", called.mean(), wilson_interval(int(called.sum()), n))
        ece = _ece(yy, ss, n_bins)
        add("ece", ece, nan2, "" if not np.isnan(ece) else "scores are not probabilities")
    return out


def metric_by_group(
    attribute: str,
    metric: Callable[[FloatArray, FloatArray], float],
    y_true: ArrayLike,
    y_score: ArrayLike,
    groups: ArrayLike,
    *,
    name: str | None = None,
    patient_ids: ArrayLike | None = None,
    n_resamples: int = 500,
    confidence: float = 0.95,
    seed: int = 0,
) -> list[GroupMetric]:
    """Any metric ``metric(y_true, y_score) -> float`` per group, with a
    patient-level bootstrap percentile CI.

    A group where the metric raises (one class only, no cases) gets NaN and
    the error message as its reason; a resample where it raises is skipped.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    g = np.asarray(groups).astype(str)
    if not (y.shape == s.shape == g.shape):
        raise EvaluationError("truth, scores and groups must have one value per case")
    pids = None if patient_ids is None else np.asarray(patient_ids)
    label: str = name or str(getattr(metric, "__name__", "metric"))
    keep = ~np.isnan(y) & ~np.isnan(s)
    out: list[GroupMetric] = []
    for group in sorted(np.unique(g[keep]).tolist()):
        rows = np.nonzero(keep & (g == group))[0]
        yy, ss = y[rows], s[rows]
        n, n_pos = int(rows.size), int((yy == 1).sum())

        def value(idx: NDArray[np.intp], yy: FloatArray = yy, ss: FloatArray = ss) -> float:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = float(metric(yy[idx], ss[idx]))
            except (EvaluationError, ValueError) as exc:
                raise EvaluationError(str(exc)) from None
            if not np.isfinite(result):
                raise EvaluationError("the metric is undefined here (it returned NaN)")
            return result

        try:
            point = value(np.arange(n))
        except EvaluationError as exc:
            nan = float("nan")
            out.append(GroupMetric(attribute, group, label, nan, (nan, nan), n, n_pos, str(exc)))
            continue
        boot = bootstrap_statistic(
            value,
            n,
            None if pids is None else pids[rows],
            n_resamples=n_resamples,
            confidence=confidence,
            seed=seed,
        )
        ci = (float(boot.ci_low[0]), float(boot.ci_high[0]))
        reason = "" if boot.n_valid[0] else "no valid bootstrap resample"
        out.append(GroupMetric(attribute, group, label, point, ci, n, n_pos, reason))
    return out


def fairness_report(
    attribute: str,
    y_true: ArrayLike,
    y_score: ArrayLike,
    groups: ArrayLike,
    threshold: float,
    *,
    patient_ids: ArrayLike | None = None,
    reference: str | None = None,
    n_resamples: int = 500,
    confidence: float = 0.95,
    n_bins: int = 10,
    seed: int = 0,
) -> FairnessReport:
    """Per-group metrics and gaps to ``reference`` (default: the largest group).

    ``differences`` holds the max-min spread over groups of TPR, FPR and
    selection rate (what Fairlearn's ``MetricFrame.difference()`` reports),
    ``equalized_odds`` the larger of the TPR and FPR spreads, and ``ece`` the
    spread of within-group ECE.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    g = np.asarray(groups).astype(str)
    if not (y.shape == s.shape == g.shape):
        raise EvaluationError("truth, scores and groups must have one value per case")
    keep = ~np.isnan(y) & ~np.isnan(s)
    pids = None if patient_ids is None else np.asarray(patient_ids)[keep]
    y, s, g = y[keep] == 1.0, s[keep], g[keep]
    if y.size == 0:
        raise EvaluationError(f"{attribute}: no labelled cases")
    metrics = group_metrics(attribute, y, s, g, threshold, n_bins=n_bins, patient_ids=pids)
    names, sizes = np.unique(g, return_counts=True)
    ref = reference if reference is not None else str(names[int(np.argmax(sizes))])
    if ref not in names:
        raise EvaluationError(f"{attribute}: reference group {ref!r} has no cases")
    others = [str(n) for n in names if n != ref]
    called = s >= threshold

    def gaps(rows: NDArray[np.intp]) -> FloatArray:
        yy, cc, ss, gg = y[rows], called[rows], s[rows], g[rows]
        vals: list[float] = []
        in_ref = gg == ref
        r = _rates(yy[in_ref], cc[in_ref])
        r_ece = _ece(yy[in_ref], ss[in_ref], n_bins)
        for other in others:
            rows_o = gg == other
            o = _rates(yy[rows_o], cc[rows_o])
            vals.extend(o[m] - r[m] for m in ("tpr", "fpr", "selection_rate"))
            vals.append(_ece(yy[rows_o], ss[rows_o], n_bins) - r_ece)
        return np.asarray(vals, dtype=np.float64)

    out_gaps: list[FairnessGap] = []
    if others:
        boot = bootstrap_statistic(
            gaps, y.size, pids, n_resamples=n_resamples, confidence=confidence, seed=seed
        )
        for i, other in enumerate(others):
            for j, metric in enumerate(GAP_METRICS):
                k = i * len(GAP_METRICS) + j
                value, lo, hi = boot.estimate[k], boot.ci_low[k], boot.ci_high[k]
                reason = ""
                if np.isnan(value):
                    reason = "metric undefined in one of the two groups"
                elif np.isnan(lo):
                    reason = "no valid bootstrap resample"
                flagged = bool(not np.isnan(lo) and (lo > 0 or hi < 0))
                out_gaps.append(
                    FairnessGap(
                        attribute,
                        other,
                        ref,
                        metric,
                        float(value),
                        (float(lo), float(hi)),
                        flagged,
                        reason,
                    )
                )
    per_group = {
        m: np.array([gm.value for gm in metrics if gm.metric == m])
        for m in ("tpr", "fpr", "selection_rate", "ece")
    }
    differences = {
        m: float(np.nanmax(v) - np.nanmin(v)) if (~np.isnan(v)).any() else float("nan")
        for m, v in per_group.items()
    }
    differences["equalized_odds"] = float(np.nanmax([differences["tpr"], differences["fpr"]]))
    return FairnessReport(metrics, out_gaps, differences)


__all__ = [
    "GAP_METRICS",
    "FairnessGap",
    "FairnessReport",
    "GroupMetric",
    "age_band",
    "fairness_report",
    "group_metrics",
    "metric_by_group",
]
