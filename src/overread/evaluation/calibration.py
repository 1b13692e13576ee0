"""Calibration: do predicted probabilities mean what they say?

Metrics (ECE with equal-width or equal-mass bins, MCE, Brier score and
Murphy's decomposition), the reliability diagram's data, and recalibration
maps fitted on validation data: temperature scaling (Guo et al. 2017), Platt
scaling (Platt 1999) and isotonic regression (Zadrozny & Elkan 2002), per
model, per label or per site.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import minimize, minimize_scalar
from scipy.special import expit, logit

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray, binary_truth_and_score

_EPS = 1e-7


class BinStrategy(StrEnum):
    """Equal-width bins on [0, 1], or adaptive bins holding equal numbers of cases."""

    UNIFORM = "uniform"
    QUANTILE = "quantile"


@dataclass(frozen=True)
class ReliabilityBins:
    """Per-bin mean prediction, observed frequency and count (empty bins dropped)."""

    edges: FloatArray
    mean_predicted: FloatArray
    observed: FloatArray
    count: FloatArray


@dataclass(frozen=True)
class CalibrationSummary:
    """ECE, MCE and the bins they came from."""

    ece: float
    mce: float
    bins: ReliabilityBins


def _probabilities(y_true: ArrayLike, y_prob: ArrayLike) -> tuple[FloatArray, FloatArray]:
    positive, prob = binary_truth_and_score(y_true, y_prob, need_both_classes=False)
    if ((prob < 0) | (prob > 1)).any():
        raise EvaluationError("calibration needs probabilities in [0, 1]")
    return positive.astype(np.float64), prob


def reliability_bins(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    n_bins: int = 15,
    strategy: BinStrategy | str = BinStrategy.UNIFORM,
) -> ReliabilityBins:
    """Group predictions into bins (right-closed, the first also left-closed)."""
    y, p = _probabilities(y_true, y_prob)
    if BinStrategy(strategy) is BinStrategy.UNIFORM:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.unique(np.quantile(p, np.linspace(0.0, 1.0, n_bins + 1)))
        edges[0], edges[-1] = 0.0, 1.0
    index = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, edges.size - 2)
    count = np.bincount(index, minlength=edges.size - 1).astype(np.float64)
    sum_p = np.bincount(index, weights=p, minlength=edges.size - 1)
    sum_y = np.bincount(index, weights=y, minlength=edges.size - 1)
    used = count > 0
    return ReliabilityBins(
        edges=edges,
        mean_predicted=sum_p[used] / count[used],
        observed=sum_y[used] / count[used],
        count=count[used],
    )


def calibration_error(
    y_true: ArrayLike,
    y_prob: ArrayLike,
    n_bins: int = 15,
    strategy: BinStrategy | str = BinStrategy.UNIFORM,
) -> CalibrationSummary:
    """Expected (count-weighted mean) and maximum calibration error over bins."""
    bins = reliability_bins(y_true, y_prob, n_bins, strategy)
    gaps = np.abs(bins.observed - bins.mean_predicted)
    ece = float(np.sum(bins.count * gaps) / np.sum(bins.count))
    return CalibrationSummary(ece=ece, mce=float(gaps.max()), bins=bins)


def brier_score(y_true: ArrayLike, y_prob: ArrayLike) -> float:
    """Mean squared difference between probability and outcome."""
    y, p = _probabilities(y_true, y_prob)
    return float(np.mean((p - y) ** 2))


@dataclass(frozen=True)
class BrierDecomposition:
    """Murphy (1973): Brier = reliability - resolution + uncertainty (+ within-bin term).

    ``within_bin`` is zero when every bin holds a single forecast value; with
    binned continuous forecasts it is the small remainder that makes the parts
    add up exactly to ``brier``.
    """

    brier: float
    reliability: float
    resolution: float
    uncertainty: float
    within_bin: float


def brier_decomposition(
    y_true: ArrayLike, y_prob: ArrayLike, n_bins: int | None = None
) -> BrierDecomposition:
    """Murphy's decomposition; ``n_bins=None`` bins by distinct forecast value."""
    y, p = _probabilities(y_true, y_prob)
    if n_bins is None:
        _, index = np.unique(p, return_inverse=True)
    else:
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        index = np.clip(np.searchsorted(edges, p, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(index).astype(np.float64)
    used = count > 0
    mean_p = np.bincount(index, weights=p)[used] / count[used]
    mean_y = np.bincount(index, weights=y)[used] / count[used]
    weight = count[used] / y.size
    base = y.mean()
    reliability = float(np.sum(weight * (mean_p - mean_y) ** 2))
    resolution = float(np.sum(weight * (mean_y - base) ** 2))
    uncertainty = float(base * (1 - base))
    brier = float(np.mean((p - y) ** 2))
    return BrierDecomposition(
        brier,
        reliability,
        resolution,
        uncertainty,
        brier - (reliability - resolution + uncertainty),
    )


class Recalibrator(Protocol):
    """A map from raw probabilities to recalibrated ones, fitted on validation data."""

    def fit(self, y_true: ArrayLike, y_prob: ArrayLike) -> Recalibrator: ...

    def transform(self, y_prob: ArrayLike) -> FloatArray: ...


def _logits(prob: ArrayLike) -> FloatArray:
    return np.asarray(logit(np.clip(np.asarray(prob, dtype=np.float64), _EPS, 1 - _EPS)))


def _nll(y: FloatArray, z: FloatArray) -> float:
    # Stable binary cross-entropy on logits.
    return float(np.mean(np.logaddexp(0.0, z) - y * z))


@dataclass
class TemperatureScaling:
    """Divide logits by one temperature T > 0 fitted by minimising the NLL.

    Fit on a (n, k) matrix to get one temperature per model (``per_label``
    False) or one per column. It cannot change the ranking, so AUC is kept.
    """

    per_label: bool = False
    temperature: FloatArray = field(default_factory=lambda: np.ones(1))

    def fit(self, y_true: ArrayLike, y_prob: ArrayLike) -> TemperatureScaling:
        y = np.asarray(y_true, dtype=np.float64)
        z = _logits(y_prob)
        if y.ndim == 1:
            y, z = y[:, None], z[:, None]
        columns = [[j] for j in range(y.shape[1])] if self.per_label else [list(range(y.shape[1]))]
        temps = []
        for cols in columns:
            yy, zz = y[:, cols], z[:, cols]
            known = ~np.isnan(yy)
            if not known.any():
                raise EvaluationError("temperature scaling needs labelled cases")
            result = minimize_scalar(
                lambda log_t, yy=yy[known], zz=zz[known]: _nll(yy, zz / np.exp(log_t)),
                bounds=(-5.0, 5.0),
                method="bounded",
                options={"xatol": 1e-8},
            )
            temps.append(float(np.exp(result.x)))
        self.temperature = np.asarray(temps)
        return self

    def transform(self, y_prob: ArrayLike) -> FloatArray:
        z = _logits(y_prob)
        return np.asarray(expit(z / (self.temperature if z.ndim > 1 else self.temperature[0])))


@dataclass
class PlattScaling:
    """Logistic regression of the outcome on the logit: p' = sigmoid(a * logit(p) + b)."""

    slope: float = 1.0
    intercept: float = 0.0

    def fit(self, y_true: ArrayLike, y_prob: ArrayLike) -> PlattScaling:
        y, p = _probabilities(y_true, y_prob)
        z = _logits(p)

        def loss(theta: FloatArray) -> float:
            return _nll(y, theta[0] * z + theta[1])

        def grad(theta: FloatArray) -> FloatArray:
            r = expit(theta[0] * z + theta[1]) - y
            return np.array([np.mean(r * z), np.mean(r)])

        result = minimize(
            loss, np.array([1.0, 0.0]), jac=grad, method="BFGS", options={"gtol": 1e-10}
        )
        self.slope, self.intercept = float(result.x[0]), float(result.x[1])
        return self

    def transform(self, y_prob: ArrayLike) -> FloatArray:
        return np.asarray(expit(self.slope * _logits(y_prob) + self.intercept))


@dataclass
class IsotonicCalibration:
    """Monotone step map fitted by pool-adjacent-violators (scikit-learn's)."""

    model: object | None = None

    def fit(self, y_true: ArrayLike, y_prob: ArrayLike) -> IsotonicCalibration:
        from sklearn.isotonic import IsotonicRegression

        y, p = _probabilities(y_true, y_prob)
        self.model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
        return self

    def transform(self, y_prob: ArrayLike) -> FloatArray:
        if self.model is None:
            raise EvaluationError("isotonic calibration used before fit")
        p = np.asarray(y_prob, dtype=np.float64)
        return np.asarray(self.model.predict(p.ravel())).reshape(p.shape)  # type: ignore[attr-defined]


class RecalibrationMethod(StrEnum):
    """The recalibration maps offered."""

    TEMPERATURE = "temperature"
    PLATT = "platt"
    ISOTONIC = "isotonic"


def make_recalibrator(method: RecalibrationMethod | str) -> Recalibrator:
    """A fresh, unfitted recalibrator of the named kind."""
    method = RecalibrationMethod(method)
    if method is RecalibrationMethod.TEMPERATURE:
        return TemperatureScaling()
    if method is RecalibrationMethod.PLATT:
        return PlattScaling()
    return IsotonicCalibration()


@dataclass
class SiteRecalibration:
    """One recalibrator per site, with a pooled one for sites not seen in fitting.

    Sites differ in scanners and prevalence, so one map rarely fits all; sites
    with fewer than ``min_cases`` validation cases (or one class) use the pooled map.
    """

    method: RecalibrationMethod | str = RecalibrationMethod.PLATT
    min_cases: int = 50
    by_site: dict[str, Recalibrator] = field(default_factory=dict)
    pooled: Recalibrator | None = None

    def fit(self, y_true: ArrayLike, y_prob: ArrayLike, sites: ArrayLike) -> SiteRecalibration:
        y = np.asarray(y_true, dtype=np.float64)
        p = np.asarray(y_prob, dtype=np.float64)
        site = np.asarray(sites).astype(str)
        self.pooled = make_recalibrator(self.method).fit(y, p)
        self.by_site = {}
        for name in np.unique(site):
            rows = site == name
            if rows.sum() >= self.min_cases and 0 < y[rows].sum() < rows.sum():
                self.by_site[str(name)] = make_recalibrator(self.method).fit(y[rows], p[rows])
        return self

    def transform(self, y_prob: ArrayLike, sites: ArrayLike) -> FloatArray:
        if self.pooled is None:
            raise EvaluationError("site recalibration used before fit")
        p = np.asarray(y_prob, dtype=np.float64)
        site = np.asarray(sites).astype(str)
        out = self.pooled.transform(p)
        for name, recal in self.by_site.items():
            rows = site == name
            if rows.any():
                out[rows] = recal.transform(p[rows])
        return out


__all__ = [
    "BinStrategy",
    "BrierDecomposition",
    "CalibrationSummary",
    "IsotonicCalibration",
    "PlattScaling",
    "RecalibrationMethod",
    "Recalibrator",
    "ReliabilityBins",
    "SiteRecalibration",
    "TemperatureScaling",
    "brier_decomposition",
    "brier_score",
    "calibration_error",
    "make_recalibrator",
    "reliability_bins",
]
