"""From logits to decisions: calibration, thresholds, threshold proximity and referral.

Threshold proximity is about the *decision*, not about what the model knows: how
close the calibrated probability lies to the operating point's threshold, scaled so
0 is as far as possible on that side and 1 is on the threshold. A finding whose
proximity exceeds the package's ``refer_uncertainty`` (the manifest key keeps its
name) is decided :attr:`~overread.results.Decision.INDETERMINATE`: the software
declines to call it and a reader must look. The model's own uncertainty (predictive
entropy, mutual information, the conformal prediction set) is separate; see
docs/uncertainty.md.
"""

from __future__ import annotations

import numpy as np

from overread.evaluation.operating_points import threshold_proximity
from overread.models.manifest import Calibration
from overread.results import Decision


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    positive = x >= 0
    out[positive] = 1.0 / (1.0 + np.exp(-x[positive]))
    exp = np.exp(x[~positive])
    out[~positive] = exp / (1.0 + exp)
    return out.astype(np.float32)


def calibrate(logits: np.ndarray, calibration: Calibration, labels: list[str]) -> np.ndarray:
    """Calibrated probabilities ``(N, L)`` from logits ``(N, L)``."""
    scaled = np.asarray(logits, dtype=np.float64).copy()
    for index, label in enumerate(labels):
        params = calibration.parameters.get(label)
        if not params or calibration.method == "none":
            continue
        if calibration.method == "temperature":
            scaled[:, index] /= max(params.get("temperature", 1.0), 1e-6)
        else:  # platt
            scaled[:, index] = params.get("a", 1.0) * scaled[:, index] + params.get("b", 0.0)
    return sigmoid(scaled)


def decide(
    probabilities: np.ndarray, thresholds: np.ndarray, refer_uncertainty: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Positive flags, threshold proximities and :class:`~overread.results.Decision` s
    (an object array)."""
    positive = probabilities >= thresholds
    proximity = threshold_proximity(probabilities, thresholds)
    decisions = np.empty(np.shape(positive), dtype=object)
    decisions[...] = Decision.NEGATIVE
    decisions[positive] = Decision.POSITIVE
    decisions[proximity > refer_uncertainty] = Decision.INDETERMINATE
    return positive, proximity, decisions


__all__ = ["calibrate", "decide", "sigmoid", "threshold_proximity"]
