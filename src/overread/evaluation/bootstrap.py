"""Cluster (patient-level) bootstrap confidence intervals.

Several images of one patient are not independent; resampling images would
make intervals too narrow. Here whole patients are resampled with replacement
and a resample is represented by a weight per image (how many times its
patient was drawn), so every statistic is a weighted statistic and thousands of
resamples become a few large array operations instead of a Python loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray


@dataclass(frozen=True)
class BootstrapResult:
    """Point estimates, percentile intervals and the replicate matrix.

    ``replicates`` has shape (n_resamples, k); a replicate is NaN where the
    resample left a label with one class only (reported in ``n_valid``).
    """

    estimate: FloatArray
    ci_low: FloatArray
    ci_high: FloatArray
    replicates: FloatArray
    n_valid: NDArray[np.int64]


def patient_index(patient_ids: ArrayLike | None, n: int) -> tuple[NDArray[np.int64], int]:
    """Map each row to a patient number 0..P-1 (each row its own patient if None)."""
    if patient_ids is None:
        return np.arange(n, dtype=np.int64), n
    ids = np.asarray(patient_ids)
    if ids.shape != (n,):
        raise EvaluationError(f"{ids.size} patient ids for {n} rows")
    _, inverse = np.unique(ids.astype(str), return_inverse=True)
    return inverse.astype(np.int64), int(inverse.max()) + 1


def resample_counts(
    n_patients: int, n_resamples: int, rng: np.random.Generator
) -> NDArray[np.int32]:
    """How often each patient is drawn in each resample: (n_patients, n_resamples).

    Each resample draws ``n_patients`` patients uniformly with replacement
    (the ordinary nonparametric bootstrap over clusters). The patient axis
    comes first so that gathering the weights of a set of rows copies
    contiguous memory.
    """
    draws = rng.integers(0, n_patients, size=(n_resamples, n_patients), dtype=np.int64)
    draws += (np.arange(n_resamples, dtype=np.int64) * n_patients)[:, None]
    counts = np.bincount(draws.ravel(), minlength=n_resamples * n_patients)
    return np.ascontiguousarray(counts.reshape(n_resamples, n_patients).T.astype(np.int32))


@dataclass(frozen=True)
class _LabelPlan:
    """What one label needs per resample: negatives in score order, positives,
    and for each positive the range of negatives tied with it."""

    negative_patients: NDArray[np.int64]
    positive_patients: NDArray[np.int64]
    below: NDArray[np.intp]
    below_or_tied: NDArray[np.intp]

    @classmethod
    def build(
        cls, truth: FloatArray, score: FloatArray, patient: NDArray[np.int64]
    ) -> _LabelPlan | None:
        known = ~np.isnan(truth)
        negatives = np.nonzero(known & (truth == 0.0))[0]
        positives = np.nonzero(known & (truth == 1.0))[0]
        if negatives.size == 0 or positives.size == 0:
            return None
        negatives = negatives[np.argsort(score[negatives], kind="mergesort")]
        negative_scores = score[negatives]
        positive_scores = score[positives]
        return cls(
            negative_patients=patient[negatives],
            positive_patients=patient[positives],
            below=np.searchsorted(negative_scores, positive_scores, side="left"),
            below_or_tied=np.searchsorted(negative_scores, positive_scores, side="right"),
        )

    def auc(self, weights: NDArray[np.int32]) -> FloatArray:
        """Weighted Mann-Whitney AUC for each column of ``weights`` (patients x b).

        With C the cumulative weight of negatives in score order, a positive
        beats C[below] negatives and ties with C[below_or_tied] - C[below], so
        it scores (C[below] + C[below_or_tied]) / 2. Integer weights keep the
        sums exact.
        """
        negative_weights = weights[self.negative_patients]
        cumulative = np.empty(
            (negative_weights.shape[0] + 1, negative_weights.shape[1]), dtype=np.int32
        )
        cumulative[0] = 0
        np.cumsum(negative_weights, axis=0, out=cumulative[1:])
        twice_beaten = cumulative[self.below] + cumulative[self.below_or_tied]
        positive_weights = weights[self.positive_patients].astype(np.float64)
        numerator = 0.5 * np.einsum("ij,ij->j", positive_weights, twice_beaten.astype(np.float64))
        denominator = positive_weights.sum(axis=0) * cumulative[-1].astype(np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            auc = numerator / denominator
        auc[denominator == 0] = np.nan
        return np.asarray(auc, dtype=np.float64)


def bootstrap_auc(
    truth: ArrayLike,
    scores: ArrayLike,
    patient_ids: ArrayLike | None = None,
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    chunk: int = 100,
) -> BootstrapResult:
    """Patient-level bootstrap percentile CIs for the AUC of every label.

    Parameters
    ----------
    truth, scores
        (n,) or (n, k); truth 0/1 with NaN for missing (left out of that label).
    patient_ids
        One id per row; rows of one patient are resampled together.
    n_resamples, confidence, seed
        The usual bootstrap settings; results are reproducible for a seed.
    chunk
        Resamples processed at once (memory about chunk x n x 12 bytes).
    """
    y = np.asarray(truth, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y, s = y[:, None], s[:, None]
    if y.shape != s.shape:
        raise EvaluationError(f"truth shape {y.shape} and score shape {s.shape} differ")
    n, k = y.shape
    if np.isnan(s).any():
        raise EvaluationError("scores contain NaN")
    patient, n_patients = patient_index(patient_ids, n)
    plans = [_LabelPlan.build(y[:, j], s[:, j], np.arange(n, dtype=np.int64)) for j in range(k)]
    estimate = np.array(
        [np.nan if p is None else p.auc(np.ones((n, 1), dtype=np.int32))[0] for p in plans]
    )
    plans = [_LabelPlan.build(y[:, j], s[:, j], patient) for j in range(k)]
    rng = np.random.default_rng(seed)
    replicates = np.full((n_resamples, k), np.nan)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        counts = resample_counts(n_patients, size, rng)
        for j, plan in enumerate(plans):
            if plan is not None:
                replicates[start : start + size, j] = plan.auc(counts)
    return _percentile_result(estimate, replicates, confidence)


def _percentile_result(
    estimate: FloatArray, replicates: FloatArray, confidence: float
) -> BootstrapResult:
    alpha = 1.0 - confidence
    n_valid = (~np.isnan(replicates)).sum(axis=0).astype(np.int64)
    lo = np.full(estimate.shape, np.nan)
    hi = np.full(estimate.shape, np.nan)
    for j in range(estimate.size):
        values = replicates[:, j][~np.isnan(replicates[:, j])]
        if values.size:
            lo[j], hi[j] = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
    return BootstrapResult(estimate, lo, hi, replicates, n_valid)


def bootstrap_statistic(
    statistic: Callable[[NDArray[np.intp]], float | FloatArray],
    n_rows: int,
    patient_ids: ArrayLike | None = None,
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Cluster bootstrap of any statistic written as a function of row indices.

    ``statistic(rows)`` receives the resampled row indices (patients drawn with
    replacement, all their rows included) and returns a float or an array; a
    resample on which it raises :class:`EvaluationError` or returns NaN counts
    as invalid. Slower than :func:`bootstrap_auc` (one call per resample), so
    meant for the smaller subgroup and operating-point analyses.
    """
    patient, n_patients = patient_index(patient_ids, n_rows)
    estimate = np.atleast_1d(np.asarray(statistic(np.arange(n_rows)), dtype=np.float64))
    rng = np.random.default_rng(seed)
    replicates = np.full((n_resamples, estimate.size), np.nan)
    all_rows = np.arange(n_rows)
    for b in range(n_resamples):
        drawn = np.bincount(rng.integers(0, n_patients, n_patients), minlength=n_patients)
        rows = np.repeat(all_rows, drawn[patient])
        try:
            replicates[b] = statistic(rows)
        except EvaluationError:
            continue
    return _percentile_result(estimate, replicates, confidence)


@dataclass(frozen=True)
class RocBand:
    """Pointwise percentile band of the TPR at fixed FPR values."""

    fpr: FloatArray
    tpr: FloatArray
    tpr_low: FloatArray
    tpr_high: FloatArray


def bootstrap_roc_band(
    truth: ArrayLike,
    score: ArrayLike,
    patient_ids: ArrayLike | None = None,
    *,
    n_resamples: int = 200,
    confidence: float = 0.95,
    n_points: int = 101,
    seed: int = 0,
) -> RocBand:
    """Patient-level bootstrap band for one ROC curve (vertical averaging).

    Each resample's curve is read at ``n_points`` FPR values by linear
    interpolation; the band is the pointwise percentile interval.
    """
    y = np.asarray(truth, dtype=np.float64).ravel()
    s = np.asarray(score, dtype=np.float64).ravel()
    known = ~np.isnan(y)
    patient, n_patients = patient_index(
        None if patient_ids is None else np.asarray(patient_ids)[known], int(known.sum())
    )
    y, s = y[known], s[known]
    if y.size == 0 or y.min() == y.max():
        raise EvaluationError("ROC band needs both positive and negative cases")
    order = np.argsort(-s, kind="mergesort")
    ends = np.r_[np.nonzero(np.diff(s[order]))[0], order.size - 1]
    positive = y[order] == 1.0
    grid = np.linspace(0.0, 1.0, n_points)

    def curve(weights: NDArray[np.int32]) -> FloatArray:
        w = weights.astype(np.float64)
        tp = np.cumsum(w * positive[:, None], axis=0)[ends]
        fp = np.cumsum(w * ~positive[:, None], axis=0)[ends]
        out = np.full((grid.size, w.shape[1]), np.nan)
        for b in range(w.shape[1]):
            if tp[-1, b] > 0 and fp[-1, b] > 0:
                fpr = np.r_[0.0, fp[:, b] / fp[-1, b]]
                tpr = np.r_[0.0, tp[:, b] / tp[-1, b]]
                out[:, b] = np.interp(grid, fpr, tpr)
        return out

    point = curve(np.ones((y.size, 1), dtype=np.int32))[:, 0]
    rng = np.random.default_rng(seed)
    blocks = []
    for start in range(0, n_resamples, 50):  # bounded memory: 50 curves at a time
        counts = resample_counts(n_patients, min(50, n_resamples - start), rng)
        blocks.append(curve(counts[patient[order]]))
    curves = np.hstack(blocks)
    alpha = 1.0 - confidence
    lo, hi = np.nanquantile(curves, [alpha / 2.0, 1.0 - alpha / 2.0], axis=1)
    return RocBand(grid, point, lo, hi)


def benchmark_bootstrap(
    n_predictions: int = 100_000,
    n_labels: int = 14,
    n_resamples: int = 2000,
    images_per_patient: int = 2,
    seed: int = 0,
) -> dict[str, float]:
    """Time :func:`bootstrap_auc` on synthetic data of the given size.

    Returns the wall-clock and CPU seconds and the problem size, for the
    benchmark record in the documentation (on a shared machine the CPU time is
    the steadier figure).
    """
    rng = np.random.default_rng(seed)
    truth = (rng.random((n_predictions, n_labels)) < 0.1).astype(np.float64)
    scores = np.round(rng.normal(size=truth.shape) + 1.2 * truth, 4)
    patients = np.arange(n_predictions) // images_per_patient
    start, cpu_start = time.perf_counter(), time.process_time()
    result = bootstrap_auc(truth, scores, patients, n_resamples=n_resamples, seed=seed)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    return {
        "seconds": elapsed,
        "cpu_seconds": cpu,
        "n_predictions": float(n_predictions),
        "n_labels": float(n_labels),
        "n_resamples": float(n_resamples),
        "n_patients": float(patients.max() + 1),
        "mean_ci_width": float(np.mean(result.ci_high - result.ci_low)),
    }


__all__ = [
    "BootstrapResult",
    "RocBand",
    "benchmark_bootstrap",
    "bootstrap_auc",
    "bootstrap_roc_band",
    "bootstrap_statistic",
    "patient_index",
    "resample_counts",
]
