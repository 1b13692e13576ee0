"""Validation metrics used during training: per-class ROC AUC and bootstrap intervals.

The evaluation package has the full clinical statistics; training only needs a
fast, dependency-light AUC to select checkpoints and stop early, and a
patient-clustered bootstrap for the model card.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import roc_auc_score


def per_class_auc(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray | None = None
) -> list[float | None]:
    """ROC AUC per column; ``None`` where a column has only one class among unmasked rows."""
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    m = np.ones_like(t, dtype=bool) if mask is None else np.asarray(mask) > 0
    out: list[float | None] = []
    for c in range(t.shape[1]):
        keep = m[:, c]
        y = t[keep, c] > 0.5
        if y.all() or not y.any():
            out.append(None)
        else:
            out.append(float(roc_auc_score(y, p[keep, c])))
    return out


def mean_auc(aucs: Sequence[float | None]) -> float:
    """Mean over the classes that have an AUC (NaN if none)."""
    vals = [a for a in aucs if a is not None]
    return float(np.mean(vals)) if vals else float("nan")


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
    interval honest when a patient has several studies.
    """
    p = np.asarray(probs, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64) > 0.5
    n = len(p)
    if clusters is None:
        groups = [np.array([i]) for i in range(n)]
    else:
        index: dict[str, list[int]] = {}
        for i, cluster in enumerate(clusters):
            index.setdefault(str(cluster), []).append(i)
        groups = [np.array(v) for v in index.values()]
    rng = np.random.default_rng(seed)
    samples: list[list[float]] = [[] for _ in range(t.shape[1])]
    for _ in range(n_boot):
        pick = rng.integers(0, len(groups), len(groups))
        rows = np.concatenate([groups[i] for i in pick])
        for c in range(t.shape[1]):
            y = t[rows, c]
            if y.all() or not y.any():
                continue
            samples[c].append(float(roc_auc_score(y, p[rows, c])))
    lo, hi = (1 - level) / 2 * 100, (1 + level) / 2 * 100
    return [
        (float(np.percentile(s, lo)), float(np.percentile(s, hi))) if len(s) >= 10 else None
        for s in samples
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
