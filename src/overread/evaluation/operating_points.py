"""Operating points: choosing a threshold, and what the model does there.

A threshold is chosen on validation data (for a target sensitivity or
specificity, or Youden's J) and then applied unchanged to test data; choosing
it on the test set would flatter the result. The rule everywhere is "positive
when score >= threshold".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm

from overread.errors import EvaluationError
from overread.evaluation._validation import binary_truth_and_score
from overread.evaluation.roc import roc_curve


class ThresholdRule(StrEnum):
    """How a threshold is chosen on validation data."""

    SPECIFICITY = "specificity"
    SENSITIVITY = "sensitivity"
    YOUDEN = "youden"


def threshold_rule(rule: ThresholdRule | str) -> ThresholdRule:
    """``rule`` as a :class:`ThresholdRule`.

    Raises
    ------
    EvaluationError
        If ``rule`` names no rule.
    """
    try:
        return ThresholdRule(rule)
    except ValueError:
        known = ", ".join(r.value for r in ThresholdRule)
        raise EvaluationError(f"unknown threshold rule {rule!r} (known: {known})") from None


def threshold_proximity(probabilities: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """1 at the threshold, falling linearly to 0 at probability 0 or 1.

    How near a thresholded decision is to flipping (the pipeline refers a finding
    above the package's ``refer_uncertainty``); ``1 - proximity`` ranks decisions by
    confidence for a risk-coverage curve.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    t = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-6, 1 - 1e-6)
    span = np.where(p >= t, 1.0 - t, t)
    return np.clip(1.0 - np.abs(p - t) / span, 0.0, 1.0).astype(np.float32)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion (Wilson 1927); NaN when trials is 0.

    Unlike the Wald interval it stays inside [0, 1] and keeps its coverage for
    proportions near 0 or 1, which is where sensitivity and specificity live.
    """
    if trials == 0:
        return (float("nan"), float("nan"))
    z = float(norm.ppf(0.5 + confidence / 2.0))
    p = successes / trials
    denom = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


def threshold_for_specificity(y_true: ArrayLike, y_score: ArrayLike, target: float) -> float:
    """The lowest threshold whose specificity is at least ``target``.

    The lowest such threshold gives the highest sensitivity at that specificity.
    """
    curve = roc_curve(y_true, y_score)
    ok = (1.0 - curve.fpr) >= target - 1e-12
    return float(curve.thresholds[np.nonzero(ok)[0][-1]])


def threshold_for_sensitivity(y_true: ArrayLike, y_score: ArrayLike, target: float) -> float:
    """The highest threshold whose sensitivity is at least ``target``."""
    curve = roc_curve(y_true, y_score)
    ok = curve.tpr >= target - 1e-12
    return float(curve.thresholds[np.nonzero(ok)[0][0]])


def youden_threshold(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """The threshold maximising Youden's J = sensitivity + specificity - 1."""
    curve = roc_curve(y_true, y_score)
    j = curve.tpr - curve.fpr
    return float(curve.thresholds[int(np.argmax(j))])


STANDARD_POINTS = ("balanced", "high sensitivity", "high specificity")
"""The named operating points every classifier package carries per label."""

STANDARD_TARGET = 0.9
"""The sensitivity (``high sensitivity``) and specificity (``high specificity``) kept."""


def order_points(points: Mapping[str, float]) -> dict[str, float]:
    """Named points ordered ``high sensitivity <= balanced <= high specificity``.

    ``high sensitivity`` is the highest threshold that keeps sensitivity at the
    target. When the balanced point already exceeds that sensitivity, that threshold
    lies *above* balanced, and a reader who picks "high sensitivity" would be shown
    fewer positives than at "balanced"; likewise ``high specificity`` below balanced.
    Moving such a point to ``balanced`` keeps its target (sensitivity only rises as the
    threshold falls, specificity only as it rises) and restores the meaning of its
    name. Points other than the three named ones are left as they are.
    """
    out = {name: float(t) for name, t in points.items()}
    balanced = out.get("balanced")
    if balanced is None:
        return out
    if "high sensitivity" in out:
        out["high sensitivity"] = min(out["high sensitivity"], balanced)
    if "high specificity" in out:
        out["high specificity"] = max(out["high specificity"], balanced)
    return out


def standard_points(
    y_true: ArrayLike, y_score: ArrayLike, target: float = STANDARD_TARGET
) -> dict[str, float]:
    """``balanced`` (Youden's J), ``high sensitivity`` and ``high specificity`` (each
    keeping ``target``) chosen on validation probabilities, clipped to [0, 1] and
    ordered by :func:`order_points`.

    Each target point is taken at a corner of the empirical ROC curve: where the
    target is first met partway along a run of positives only (the false-positive
    rate unchanged), ``high sensitivity`` goes to the run's end, which keeps every one
    of those positives at no cost in specificity; likewise ``high specificity`` goes
    to the start of a run of negatives only. (scikit-learn's ``roc_curve`` keeps only
    such corners, as the training rule did before this function.)
    """
    curve = roc_curve(y_true, y_score)
    tpr, fpr, thresholds = curve.tpr, curve.fpr, curve.thresholds
    i = int(np.nonzero(tpr >= target - 1e-12)[0][0])
    i = int(np.nonzero(fpr == fpr[i])[0][-1])  # the end of a vertical run
    k = int(np.nonzero((1.0 - fpr) >= target - 1e-12)[0][-1])
    k = int(np.nonzero(tpr == tpr[k])[0][0])  # the start of a horizontal run
    found = {
        "balanced": float(thresholds[int(np.argmax(tpr - fpr))]),  # Youden's J
        "high sensitivity": float(thresholds[i]),
        "high specificity": float(thresholds[k]),
    }
    return order_points({name: float(np.clip(t, 0.0, 1.0)) for name, t in found.items()})


def choose_threshold(
    y_true: ArrayLike, y_score: ArrayLike, rule: ThresholdRule | str, target: float = 0.9
) -> float:
    """Choose a threshold on validation data by ``rule`` (target ignored for Youden)."""
    rule = threshold_rule(rule)
    if rule is ThresholdRule.SPECIFICITY:
        return threshold_for_specificity(y_true, y_score, target)
    if rule is ThresholdRule.SENSITIVITY:
        return threshold_for_sensitivity(y_true, y_score, target)
    return youden_threshold(y_true, y_score)


@dataclass(frozen=True)
class Proportion:
    """A proportion k/n with its Wilson interval."""

    value: float
    ci: tuple[float, float]
    successes: int
    trials: int

    @classmethod
    def of(cls, successes: int, trials: int, confidence: float = 0.95) -> Proportion:
        value = successes / trials if trials else float("nan")
        return cls(value, wilson_interval(successes, trials, confidence), successes, trials)


@dataclass(frozen=True)
class OperatingPoint:
    """Counts and rates at one threshold."""

    threshold: float
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: Proportion
    specificity: Proportion
    ppv: Proportion
    npv: Proportion
    f1: float

    def at_prevalence(self, prevalence: float) -> tuple[float, float]:
        """(PPV, NPV) this sensitivity and specificity would give at ``prevalence``."""
        return predictive_values(self.sensitivity.value, self.specificity.value, prevalence)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready summary."""
        out: dict[str, object] = {
            "threshold": self.threshold,
            "tp": self.tp,
            "fp": self.fp,
            "tn": self.tn,
            "fn": self.fn,
            "f1": self.f1,
        }
        for name in ("sensitivity", "specificity", "ppv", "npv"):
            prop: Proportion = getattr(self, name)
            out[name] = prop.value
            out[f"{name}_ci"] = list(prop.ci)
        return out


def operating_point(
    y_true: ArrayLike, y_score: ArrayLike, threshold: float, confidence: float = 0.95
) -> OperatingPoint:
    """Confusion counts, sensitivity, specificity, PPV, NPV (Wilson CIs) and F1."""
    positive, score = binary_truth_and_score(y_true, y_score, need_both_classes=False)
    called = score >= threshold
    tp = int((called & positive).sum())
    fp = int((called & ~positive).sum())
    tn = int((~called & ~positive).sum())
    fn = int((~called & positive).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
    return OperatingPoint(
        threshold=float(threshold),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=Proportion.of(tp, tp + fn, confidence),
        specificity=Proportion.of(tn, tn + fp, confidence),
        ppv=Proportion.of(tp, tp + fp, confidence),
        npv=Proportion.of(tn, tn + fn, confidence),
        f1=f1,
    )


def predictive_values(
    sensitivity: float, specificity: float, prevalence: float
) -> tuple[float, float]:
    """PPV and NPV by Bayes' theorem at a deployment prevalence.

    A study enriched with positives overstates PPV; this recomputes it for the
    prevalence the model will meet.
    """
    if not 0.0 <= prevalence <= 1.0:
        raise EvaluationError(f"prevalence {prevalence} is not a proportion")
    tp = sensitivity * prevalence
    fp = (1.0 - specificity) * (1.0 - prevalence)
    tn = specificity * (1.0 - prevalence)
    fn = (1.0 - sensitivity) * prevalence
    ppv = tp / (tp + fp) if tp + fp > 0 else float("nan")
    npv = tn / (tn + fn) if tn + fn > 0 else float("nan")
    return float(ppv), float(npv)


__all__ = [
    "OperatingPoint",
    "Proportion",
    "ThresholdRule",
    "choose_threshold",
    "operating_point",
    "predictive_values",
    "threshold_for_sensitivity",
    "threshold_for_specificity",
    "threshold_proximity",
    "threshold_rule",
    "wilson_interval",
    "youden_threshold",
]
