"""Operating points and calibration fitted on the validation split, for the model package.

Thresholds are chosen on validation data, never on the test set, so the test
numbers in the model card are honest. Three operating points per label:
``balanced`` (Youden's J, max sensitivity + specificity), ``high sensitivity``
(the highest threshold keeping sensitivity >= 0.9, for triage/rule-out) and
``high specificity`` (the lowest keeping specificity >= 0.9, for alerts).
Calibration is Platt scaling per label (a logistic fit on the logit), which
corrects the over-confidence that ``pos_weight`` deliberately introduces.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_curve


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(p / (1 - p)))


def operating_points(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str]
) -> dict[str, dict[str, float]]:
    """``{label: {"balanced": t, "high sensitivity": t, "high specificity": t}}``.

    A label without both classes in validation gets 0.5 everywhere.
    """
    out: dict[str, dict[str, float]] = {}
    for c, label in enumerate(labels):
        keep = mask[:, c] > 0
        y = targets[keep, c] > 0.5
        if y.all() or not y.any():
            out[label] = {"balanced": 0.5, "high sensitivity": 0.5, "high specificity": 0.5}
            continue
        fpr, tpr, thr = roc_curve(y, probs[keep, c])
        thr = np.clip(thr, 0.0, 1.0)
        balanced = float(thr[int(np.argmax(tpr - fpr))])
        sens_ok = np.flatnonzero(tpr >= 0.9)
        spec_ok = np.flatnonzero(1 - fpr >= 0.9)
        out[label] = {
            "balanced": balanced,
            "high sensitivity": float(thr[sens_ok[0]]) if len(sens_ok) else balanced,
            "high specificity": float(thr[spec_ok[-1]]) if len(spec_ok) else balanced,
        }
    return out


def platt_calibration(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    """Per-label ``p' = sigmoid(a * logit + b)`` fitted on validation (the manifest's format).

    Labels with a single class in validation keep the identity (a=1, b=0).
    """
    params: dict[str, dict[str, float]] = {}
    for c, label in enumerate(labels):
        keep = mask[:, c] > 0
        y = (targets[keep, c] > 0.5).astype(int)
        if y.min() == y.max():
            params[label] = {"a": 1.0, "b": 0.0}
            continue
        model = LogisticRegression(C=100.0)
        model.fit(_logit(probs[keep, c])[:, None], y)
        a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
        params[label] = {"a": a if math.isfinite(a) else 1.0, "b": b if math.isfinite(b) else 0.0}
    return {"method": "platt", "parameters": params}


__all__ = ["operating_points", "platt_calibration"]
