"""Split conformal prediction for multi-label output, and selective prediction.

Each label is its own yes/no question. For an image with calibrated probability
``p`` of a label, class 1 scores ``1 - p`` and class 0 scores ``p`` (the
nonconformity score ``s(x, y) = 1 - p_y(x)``). On a held-out calibration cohort of
``n`` images with known truth, the quantile

    q = the ceil((n + 1)(1 - alpha))-th smallest of the n calibration scores
        (+inf, "always include", when that rank exceeds n)

gives the prediction set ``C(x) = {y in {0, 1} : s(x, y) <= q}``: ``{1}``
("positive"), ``{0}`` ("negative"), ``{0, 1}`` ("both": either answer is
plausible) or ``{}`` ("empty": neither is, an image unlike the calibration ones).

Guarantees (Vovk et al. 2005; Angelopoulos & Bates 2021), for a test image
exchangeable with the calibration images (the same population; in particular not
another site, scanner or prevalence):

- **marginal** (one quantile per label from all its calibration scores):
  ``P(Y in C(X)) >= 1 - alpha``, averaged over calibration sets and test images,
  and ``<= 1 - alpha + 1 / (n + 1)`` when scores have no ties. Nothing is promised
  for positives alone: with 5 % prevalence a set rule can miss most positives and
  still cover 90 % of images.
- **class-conditional** (Mondrian: one quantile per label *and* true class, from
  the ``n_y`` calibration images of that class): ``P(Y in C(X) | Y = y) >= 1 -
  alpha`` for each class ``y`` separately, positives included. When
  ``n_y < (1 - alpha) / alpha`` the rank exceeds ``n_y`` and class ``y`` is always
  included (the guarantee then holds trivially; the set says "both" more often).

The coverage is over images, per label; it is not a guarantee that all fourteen
labels of one image are covered at once.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from overread.errors import EvaluationError
from overread.evaluation.operating_points import threshold_proximity


class ConformalMethod(StrEnum):
    """Which quantiles a set is built from."""

    MARGINAL = "marginal"
    CLASS_CONDITIONAL = "class-conditional"


class ConformalSet(StrEnum):
    """A binary prediction set, by name (the wire value of ``conformal_set``)."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    BOTH = "both"
    EMPTY = "empty"

    @property
    def ambiguous(self) -> bool:
        """True for ``both`` and ``empty``: the set does not name one answer."""
        return self in (ConformalSet.BOTH, ConformalSet.EMPTY)


def conformal_quantile(scores: np.ndarray, alpha: float) -> float:
    """The split-conformal quantile of ``scores`` at miscoverage ``alpha``.

    The ``ceil((n + 1)(1 - alpha))``-th smallest score, or ``inf`` when that rank
    exceeds ``n`` (too few scores for this ``alpha``: always include).
    """
    if not 0.0 < alpha < 1.0:
        raise EvaluationError(f"alpha must be in (0, 1), not {alpha}")
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = len(s)
    rank = math.ceil((n + 1) * (1.0 - alpha) - 1e-9)
    if rank > n or n == 0:
        return math.inf
    return float(s[rank - 1])


@dataclass(frozen=True)
class LabelQuantiles:
    """One label's conformal quantiles: marginal, and per true class (Mondrian)."""

    marginal: float
    negative: float
    positive: float
    n: int
    n_negative: int
    n_positive: int

    def pair(self, method: ConformalMethod | str) -> tuple[float, float]:
        """``(q for class 0, q for class 1)`` under ``method``."""
        if ConformalMethod(method) is ConformalMethod.MARGINAL:
            return self.marginal, self.marginal
        return self.negative, self.positive

    def to_dict(self) -> dict[str, Any]:
        """JSON form; an infinite quantile ("always include") is ``None``."""

        def finite(q: float) -> float | None:
            return q if math.isfinite(q) else None

        return {
            "marginal": finite(self.marginal),
            "negative": finite(self.negative),
            "positive": finite(self.positive),
            "n": self.n,
            "n_negative": self.n_negative,
            "n_positive": self.n_positive,
        }

    @classmethod
    def from_dict(cls, data: Any) -> LabelQuantiles:
        """Read :meth:`to_dict`'s form (``None`` is ``inf``)."""

        def value(key: str) -> float:
            q = data.get(key)
            return math.inf if q is None else float(q)

        return cls(
            marginal=value("marginal"),
            negative=value("negative"),
            positive=value("positive"),
            n=int(data.get("n", 0)),
            n_negative=int(data.get("n_negative", 0)),
            n_positive=int(data.get("n_positive", 0)),
        )


def _aligned(truth: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(truth, dtype=np.float64)
    p = np.asarray(probabilities, dtype=np.float64)
    if y.ndim == 1:
        y, p = y[:, None], p[:, None]
    if y.shape != p.shape:
        raise EvaluationError(f"truth {y.shape} and probabilities {p.shape} differ in shape")
    known = y[~np.isnan(y)]
    if not np.isin(known, (0.0, 1.0)).all():
        raise EvaluationError("truth must be 0, 1 or NaN (missing)")
    if not np.all(np.isfinite(p)) or p.min(initial=0) < 0 or p.max(initial=1) > 1:
        raise EvaluationError("conformal prediction needs probabilities in [0, 1]")
    return y, p


def calibrate_conformal(
    truth: np.ndarray, probabilities: np.ndarray, labels: list[str], alpha: float
) -> dict[str, LabelQuantiles]:
    """Per-label marginal and class-conditional quantiles from a calibration cohort.

    ``truth`` and ``probabilities`` are ``(n, L)``; truth NaN (missing) rows are left
    out of that label.
    """
    y, p = _aligned(truth, probabilities)
    if y.shape[1] != len(labels):
        raise EvaluationError(f"{len(labels)} labels for {y.shape[1]} columns")
    out: dict[str, LabelQuantiles] = {}
    for j, name in enumerate(labels):
        known = ~np.isnan(y[:, j])
        yj, pj = y[known, j], p[known, j]
        scores = np.where(yj == 1, 1.0 - pj, pj)
        out[name] = LabelQuantiles(
            marginal=conformal_quantile(scores, alpha),
            negative=conformal_quantile(scores[yj == 0], alpha),
            positive=conformal_quantile(scores[yj == 1], alpha),
            n=int(known.sum()),
            n_negative=int((yj == 0).sum()),
            n_positive=int((yj == 1).sum()),
        )
    return out


def prediction_sets(
    probabilities: np.ndarray,
    q_negative: np.ndarray | float | list[float],
    q_positive: np.ndarray | float | list[float],
) -> tuple[np.ndarray, np.ndarray]:
    """Whether each set holds class 0 and class 1: two boolean arrays shaped like
    ``probabilities`` (``(N, L)``; the quantiles are ``(L,)``)."""
    p = np.asarray(probabilities, dtype=np.float64)
    q0 = np.asarray(q_negative, dtype=np.float64)
    q1 = np.asarray(q_positive, dtype=np.float64)
    return p <= q0, (1.0 - p) <= q1


def set_names(has_negative: np.ndarray, has_positive: np.ndarray) -> np.ndarray:
    """:class:`ConformalSet` names (an object array) from the two membership arrays."""
    names = np.empty(np.shape(has_negative), dtype=object)
    names[...] = ConformalSet.EMPTY
    names[has_negative & has_positive] = ConformalSet.BOTH
    names[has_negative & ~has_positive] = ConformalSet.NEGATIVE
    names[~has_negative & has_positive] = ConformalSet.POSITIVE
    return names


def coverage(
    truth: np.ndarray, has_negative: np.ndarray, has_positive: np.ndarray
) -> dict[str, float | int | None]:
    """Coverage of one label's sets: overall, among positives and among negatives,
    with the mean set size and the share of ambiguous (``both`` or ``empty``) sets."""
    y = np.asarray(truth, dtype=np.float64).ravel()
    h0 = np.asarray(has_negative, dtype=bool).ravel()
    h1 = np.asarray(has_positive, dtype=bool).ravel()
    known = ~np.isnan(y)
    y, h0, h1 = y[known], h0[known], h1[known]
    covered = np.where(y == 1, h1, h0)
    pos, neg = y == 1, y == 0

    def rate(mask: np.ndarray) -> float | None:
        return float(covered[mask].mean()) if mask.any() else None

    return {
        "n": len(y),
        "n_positive": int(pos.sum()),
        "n_negative": int(neg.sum()),
        "coverage": rate(np.ones_like(pos)),
        "coverage_positive": rate(pos),
        "coverage_negative": rate(neg),
        "mean_set_size": float((h0.astype(int) + h1.astype(int)).mean()) if len(y) else None,
        "ambiguous_rate": float((h0 == h1).mean()) if len(y) else None,
        "empty_rate": float((~h0 & ~h1).mean()) if len(y) else None,
    }


@dataclass(frozen=True)
class RiskCoverage:
    """Selective risk against coverage as the referral threshold varies.

    ``coverage[k]`` is the share of cases the model keeps (decides itself) when it
    keeps the ``k + 1`` most confident; ``risk[k]`` the error rate among those.
    ``aurc`` is the area under the curve (lower is better).
    """

    coverage: np.ndarray
    risk: np.ndarray
    aurc: float


def risk_coverage(errors: np.ndarray, confidence: np.ndarray) -> RiskCoverage:
    """The risk-coverage curve of decisions ranked by ``confidence`` (high: kept first)."""
    e = np.asarray(errors, dtype=np.float64).ravel()
    c = np.asarray(confidence, dtype=np.float64).ravel()
    if e.shape != c.shape:
        raise EvaluationError("errors and confidence differ in length")
    if len(e) == 0:
        raise EvaluationError("no cases for a risk-coverage curve")
    order = np.argsort(-c, kind="stable")
    kept = np.arange(1, len(e) + 1)
    risk = np.cumsum(e[order]) / kept
    cover = kept / len(e)
    return RiskCoverage(coverage=cover, risk=risk, aurc=float(risk.mean()))


def selective_summary(
    truth: np.ndarray, decisions: np.ndarray, refer: np.ndarray
) -> dict[str, float | None]:
    """Coverage (share not referred) and the error rate among the rest, against the
    error rate without referral; ``positives_missed``: the share of all positives the
    model calls negative *and* does not refer (the misses a reader never sees), and
    ``negatives_flagged``: the share of all negatives called positive and not referred."""
    y = np.asarray(truth, dtype=np.float64).ravel()
    d = np.asarray(decisions, dtype=bool).ravel()
    r = np.asarray(refer, dtype=bool).ravel()
    known = ~np.isnan(y)
    y, d, r = y[known], d[known], r[known]
    wrong = d != (y == 1)
    kept = ~r
    pos, neg = y == 1, y == 0
    return {
        "coverage": float(kept.mean()) if len(y) else None,
        "referral_rate": float(r.mean()) if len(y) else None,
        "selective_risk": float(wrong[kept].mean()) if kept.any() else None,
        "risk_without_referral": float(wrong.mean()) if len(y) else None,
        "positives_missed": float((kept & pos & ~d).sum() / pos.sum()) if pos.any() else None,
        "negatives_flagged": float((kept & neg & d).sum() / neg.sum()) if neg.any() else None,
    }


def _label_quantiles(conformal: Mapping[str, Any], label: str) -> LabelQuantiles | None:
    data = conformal.get("quantiles", {}).get(label)
    return LabelQuantiles.from_dict(data) if data else None


def conformal_report(
    truth: np.ndarray, probabilities: np.ndarray, labels: list[str], conformal: Mapping[str, Any]
) -> dict[str, Any]:
    """Coverage achieved against coverage asked, per label, for both kinds of sets.

    ``conformal`` is a package's ``conformal`` section (``alpha``, ``method``,
    ``quantiles``). Each label gets, under ``marginal`` and ``class-conditional``
    quantiles, the coverage over all images, among positives and among negatives,
    the mean set size and the share of ambiguous sets; ``pooled`` sums every label.
    """
    y, p = _aligned(truth, probabilities)
    alpha = float(conformal["alpha"])
    out: dict[str, Any] = {
        "alpha": alpha,
        "asked": 1.0 - alpha,
        "served": str(conformal.get("method", ConformalMethod.CLASS_CONDITIONAL.value)),
        "labels": {},
        "pooled": {},
    }
    pooled: dict[str, list[np.ndarray]] = {}
    for j, label in enumerate(labels):
        quantiles = _label_quantiles(conformal, label)
        if quantiles is None:
            continue
        entry: dict[str, Any] = {}
        for kind in ConformalMethod:
            q0, q1 = quantiles.pair(kind)
            h0, h1 = prediction_sets(p[:, j], q0, q1)
            entry[kind.value] = coverage(y[:, j], h0, h1)
            parts = pooled.setdefault(kind.value, [np.empty(0)] * 3)
            pooled[kind.value] = [
                np.concatenate([parts[0], y[:, j]]),
                np.concatenate([parts[1], h0]),
                np.concatenate([parts[2], h1]),
            ]
        out["labels"][label] = entry
    for kind_name, (yy, h0, h1) in pooled.items():
        out["pooled"][kind_name] = coverage(yy, h0.astype(bool), h1.astype(bool))
    return out


def selective_report(
    truth: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    thresholds: Mapping[str, float],
    *,
    refer_proximity: float | None = None,
    conformal: Mapping[str, Any] | None = None,
    points: int = 51,
) -> dict[str, Any]:
    """Selective prediction per label: the risk-coverage curve and the referral rules.

    The curve ranks each label's decisions (at its threshold) by confidence, ``1 -
    threshold proximity``, and refers the least confident first: ``points`` (coverage,
    risk) pairs and the AURC. The rules: ``proximity`` (refer when threshold
    proximity exceeds ``refer_proximity``), ``conformal`` (refer when the served
    conformal set is ``both`` or ``empty``) and ``joined`` (either), each with its
    coverage, referral rate and selective risk; ``pooled`` sums every label.
    """
    y, p = _aligned(truth, probabilities)
    out: dict[str, Any] = {"labels": {}, "pooled": {}}
    method = ConformalMethod(str((conformal or {}).get("method", "class-conditional")))
    pooled: dict[str, list[np.ndarray]] = {}
    grid = np.linspace(0.0, 1.0, points)
    for j, label in enumerate(labels):
        if label not in thresholds:
            continue
        known = ~np.isnan(y[:, j])
        yj, pj = y[known, j], p[known, j]
        if len(yj) == 0:
            continue
        t = float(thresholds[label])
        decided = pj >= t
        errors = (decided != (yj == 1)).astype(float)
        proximity = threshold_proximity(pj, np.full_like(pj, t)).astype(np.float64)
        curve = risk_coverage(errors, 1.0 - proximity)
        sampled = np.interp(grid[1:], curve.coverage, curve.risk)
        entry: dict[str, Any] = {
            "curve": {"coverage": grid[1:].tolist(), "risk": sampled.tolist()},
            "aurc": curve.aurc,
            "rules": {},
        }
        rules: dict[str, np.ndarray] = {}
        if refer_proximity is not None:
            rules["proximity"] = proximity > refer_proximity
        quantiles = _label_quantiles(conformal, label) if conformal else None
        if quantiles is not None:
            h0, h1 = prediction_sets(pj, *quantiles.pair(method))
            rules["conformal"] = h0 == h1
            if "proximity" in rules:
                rules["joined"] = rules["proximity"] | rules["conformal"]
        for name, refer in rules.items():
            entry["rules"][name] = selective_summary(yj, decided, refer)
            parts = pooled.setdefault(name, [np.empty(0)] * 3)
            pooled[name] = [
                np.concatenate([parts[0], yj]),
                np.concatenate([parts[1], decided]),
                np.concatenate([parts[2], refer]),
            ]
        out["labels"][label] = entry
    for name, (yy, dd, rr) in pooled.items():
        out["pooled"][name] = selective_summary(yy, dd.astype(bool), rr.astype(bool))
    return out


__all__ = [
    "ConformalMethod",
    "ConformalSet",
    "LabelQuantiles",
    "RiskCoverage",
    "calibrate_conformal",
    "conformal_quantile",
    "conformal_report",
    "coverage",
    "prediction_sets",
    "risk_coverage",
    "selective_report",
    "selective_summary",
    "set_names",
]
