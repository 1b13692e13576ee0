"""ROC and precision-recall curves, and the area under them.

The AUC is computed as the Mann-Whitney statistic on mid-ranks, so ties count
one half (as in pROC and scikit-learn); curves use the convention "positive when
score >= threshold", with one point per distinct score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray, binary_truth_and_score


@dataclass(frozen=True)
class RocCurve:
    """An empirical ROC curve: points from (0, 0) to (1, 1), thresholds descending.

    ``thresholds[0]`` is ``inf`` (nothing called positive).
    """

    fpr: FloatArray
    tpr: FloatArray
    thresholds: FloatArray


@dataclass(frozen=True)
class PrCurve:
    """Precision-recall points by decreasing threshold (recall increasing)."""

    precision: FloatArray
    recall: FloatArray
    thresholds: FloatArray


def _cumulative_counts(
    y_true: ArrayLike, y_score: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray, int, int]:
    positive, score = binary_truth_and_score(y_true, y_score)
    order = np.argsort(-score, kind="mergesort")
    score_sorted = score[order]
    pos_sorted = positive[order].astype(np.float64)
    last_of_value = np.r_[np.nonzero(np.diff(score_sorted))[0], score_sorted.size - 1]
    tp = np.cumsum(pos_sorted)[last_of_value]
    fp = (last_of_value + 1) - tp
    return tp, fp, score_sorted[last_of_value], int(positive.sum()), int((~positive).sum())


def roc_curve(y_true: ArrayLike, y_score: ArrayLike) -> RocCurve:
    """Compute the empirical ROC curve (every distinct score is a threshold)."""
    tp, fp, thresholds, n_pos, n_neg = _cumulative_counts(y_true, y_score)
    return RocCurve(
        fpr=np.r_[0.0, fp / n_neg],
        tpr=np.r_[0.0, tp / n_pos],
        thresholds=np.r_[np.inf, thresholds],
    )


def pr_curve(y_true: ArrayLike, y_score: ArrayLike) -> PrCurve:
    """Compute the precision-recall curve, one point per distinct score."""
    tp, fp, thresholds, n_pos, _ = _cumulative_counts(y_true, y_score)
    return PrCurve(precision=tp / (tp + fp), recall=tp / n_pos, thresholds=thresholds)


def average_precision(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Average precision: sum over thresholds of (recall step) x precision.

    This is the step-wise area (no interpolation), as scikit-learn defines it,
    which is the honest summary of a PR curve for rare findings.
    """
    curve = pr_curve(y_true, y_score)
    recall_steps = np.diff(np.r_[0.0, curve.recall])
    return float(np.sum(recall_steps * curve.precision))


def roc_auc(y_true: ArrayLike, y_score: ArrayLike) -> float:
    """Area under the ROC curve as the Mann-Whitney U / (n_pos x n_neg).

    Equal to the probability that a random positive scores above a random
    negative, ties counting one half.
    """
    positive, score = binary_truth_and_score(y_true, y_score)
    ranks = rankdata(score)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    u = float(ranks[positive].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _label_matrix(truth: ArrayLike, scores: ArrayLike) -> tuple[FloatArray, FloatArray]:
    y = np.asarray(truth, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    if s.ndim == 1:
        s = s[:, None]
    if y.shape != s.shape:
        raise EvaluationError(f"truth shape {y.shape} and score shape {s.shape} differ")
    return y, s


def per_label_auc(truth: ArrayLike, scores: ArrayLike) -> FloatArray:
    """AUC of each column; missing truth (NaN) is left out of that column only.

    A column that cannot be scored (one class only after dropping missing
    values) gives NaN; :func:`macro_auc` then averages the others.
    """
    y, s = _label_matrix(truth, scores)
    out = np.full(y.shape[1], np.nan)
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        try:
            out[j] = roc_auc(y[known, j], s[known, j])
        except EvaluationError:
            out[j] = np.nan
    return out


def macro_auc(truth: ArrayLike, scores: ArrayLike) -> float:
    """Unweighted mean of the per-label AUCs that can be computed."""
    aucs = per_label_auc(truth, scores)
    if np.isnan(aucs).all():
        raise EvaluationError("no label has both positive and negative cases")
    return float(np.nanmean(aucs))


def micro_auc(truth: ArrayLike, scores: ArrayLike) -> float:
    """AUC of all (case, label) pairs pooled into one binary problem."""
    y, s = _label_matrix(truth, scores)
    known = ~np.isnan(y)
    return roc_auc(y[known], s[known])


__all__ = [
    "PrCurve",
    "RocCurve",
    "average_precision",
    "macro_auc",
    "micro_auc",
    "per_label_auc",
    "pr_curve",
    "roc_auc",
    "roc_curve",
]
