"""Validation metrics used during training: per-class ROC AUC and bootstrap intervals.

The AUCs and their patient-clustered bootstrap intervals are the evaluation
package's (:func:`overread.evaluation.per_label_auc`,
:func:`overread.evaluation.bootstrap_auc`), so a model card and an evaluation
report compute the same statistic the same way; the functions here only adapt
them to the trainer's arrays (a mask of known labels, ``None`` for what cannot
be computed).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from overread.evaluation.bootstrap import bootstrap_auc
from overread.evaluation.roc import per_label_auc

#: A bootstrap interval needs at least this many resamples in which the label has
#: both classes; with fewer the interval is not reported.
MIN_VALID_RESAMPLES = 10


def per_class_auc(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None
) -> list[float | None]:
    """ROC AUC per column; ``None`` where a column has only one class among unmasked rows."""
    t = np.asarray(targets, dtype=np.float64)
    m = np.ones_like(t, dtype=bool) if mask is None else np.asarray(mask) > 0
    truth = np.where(m, (t > 0.5).astype(np.float64), np.nan)  # NaN: left out of the column
    aucs = per_label_auc(truth, np.asarray(probs, dtype=np.float64))
    return [None if np.isnan(a) else float(a) for a in aucs]


def mean_auc(aucs: Sequence[float | None]) -> float:
    """Mean over the classes that have an AUC (NaN if none)."""
    vals = [a for a in aucs if a is not None]
    return float(np.mean(vals)) if vals else float("nan")


def _numbered_in_order_of_appearance(clusters: Sequence[str]) -> np.ndarray:
    """Each row's cluster as a number in order of first appearance, zero-padded.

    :func:`~overread.evaluation.bootstrap.patient_index` numbers patients in the
    sorted order of their ids; ids that sort in order of first appearance make a
    seed draw the same resamples as the model cards made so far did.
    """
    numbers: dict[str, int] = {}
    rows = [numbers.setdefault(str(cluster), len(numbers)) for cluster in clusters]
    width = len(str(max(len(numbers) - 1, 0)))
    return np.array([f"{number:0{width}d}" for number in rows])


def bootstrap_auc_ci(
    probs: np.ndarray,
    targets: np.ndarray,
    *,
    clusters: Sequence[str] | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> list[tuple[float, float] | None]:
    """Percentile bootstrap CI of each class's AUC, resampling patients (clusters).

    Images of one patient are correlated; resampling whole patients keeps the
    interval honest when a patient has several studies. ``None`` for a class with
    fewer than :data:`MIN_VALID_RESAMPLES` resamples that contain both classes.
    """
    truth = (np.asarray(targets, dtype=np.float64) > 0.5).astype(np.float64)
    result = bootstrap_auc(
        truth,
        np.asarray(probs, dtype=np.float64),
        None if clusters is None else _numbered_in_order_of_appearance(clusters),
        n_resamples=n_boot,
        confidence=level,
        seed=seed,
    )
    return [
        (float(low), float(high)) if valid >= MIN_VALID_RESAMPLES else None
        for low, high, valid in zip(result.ci_low, result.ci_high, result.n_valid, strict=True)
    ]


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None, *, n_bins: int = 10
) -> list[float | None]:
    """Expected calibration error per column: equal-width bins, weighted by their counts.

    ``sum_b n_b / n * |mean(p in b) - mean(y in b)|`` over ``n_bins`` bins of [0, 1];
    ``None`` for a column without unmasked rows.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64) > 0.5
    m = np.ones_like(t, dtype=bool) if mask is None else np.asarray(mask) > 0
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    out: list[float | None] = []
    for c in range(t.shape[1]):
        keep = m[:, c]
        pc, yc = p[keep, c], t[keep, c]
        if not len(pc):
            out.append(None)
            continue
        bins = np.clip(np.digitize(pc, edges[1:-1]), 0, n_bins - 1)
        ece = 0.0
        for b in range(n_bins):
            sel = bins == b
            if sel.any():
                ece += sel.mean() * abs(float(pc[sel].mean()) - float(yc[sel].mean()))
        out.append(float(ece))
    return out


__all__ = ["bootstrap_auc_ci", "expected_calibration_error", "mean_auc", "per_class_auc"]
