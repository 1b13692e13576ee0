"""Thresholds and rates at an operating point, Wilson intervals against statsmodels."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, f1_score, roc_curve
from statsmodels.stats.proportion import proportion_confint

from overread.evaluation import (
    choose_threshold,
    operating_point,
    predictive_values,
    threshold_for_sensitivity,
    threshold_for_specificity,
    wilson_interval,
    youden_threshold,
)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (3, 10), (10, 10), (45, 50), (1, 1000)])
def test_wilson_matches_statsmodels(k: int, n: int) -> None:
    lo, hi = proportion_confint(k, n, alpha=0.05, method="wilson")
    assert wilson_interval(k, n) == pytest.approx((lo, hi), abs=1e-12)


def _data(seed: int = 0):
    rng = np.random.default_rng(seed)
    y = (rng.random(500) < 0.2).astype(int)
    return y, np.round(rng.normal(size=500) + 1.5 * y, 2)


def test_threshold_for_specificity_is_the_best_sensitivity_meeting_the_target() -> None:
    y, s = _data()
    t = threshold_for_specificity(y, s, 0.9)
    spec = np.mean(s[y == 0] < t)
    assert spec >= 0.9
    # Brute force over every candidate threshold.
    candidates = [c for c in np.unique(s) if np.mean(s[y == 0] < c) >= 0.9]
    best = max(candidates, key=lambda c: np.mean(s[y == 1] >= c))
    assert np.mean(s[y == 1] >= t) == np.mean(s[y == 1] >= best)


def test_threshold_for_sensitivity_and_youden_by_brute_force() -> None:
    y, s = _data(1)
    t = threshold_for_sensitivity(y, s, 0.8)
    assert np.mean(s[y == 1] >= t) >= 0.8
    higher = np.unique(s)[np.unique(s) > t]
    assert all(np.mean(s[y == 1] >= c) < 0.8 for c in higher)
    fpr, tpr, thr = roc_curve(y, s)
    assert youden_threshold(y, s) == thr[np.argmax(tpr - fpr)]
    assert choose_threshold(y, s, "youden") == youden_threshold(y, s)


def test_chosen_on_validation_applied_on_test() -> None:
    y_val, s_val = _data(2)
    y_test, s_test = _data(3)
    t = choose_threshold(y_val, s_val, "specificity", 0.9)
    op = operating_point(y_test, s_test, t)
    tn, fp, fn, tp = confusion_matrix(y_test, (s_test >= t).astype(int)).ravel()
    assert (op.tp, op.fp, op.tn, op.fn) == (tp, fp, tn, fn)
    assert op.sensitivity.value == pytest.approx(tp / (tp + fn))
    assert op.specificity.value == pytest.approx(tn / (tn + fp))
    assert op.ppv.value == pytest.approx(tp / (tp + fp))
    assert op.npv.value == pytest.approx(tn / (tn + fn))
    assert op.f1 == pytest.approx(f1_score(y_test, (s_test >= t).astype(int)))
    assert op.sensitivity.ci == pytest.approx(proportion_confint(tp, tp + fn, method="wilson"))


def test_predictive_values_at_deployment_prevalence() -> None:
    # Bayes by hand: sens 0.9, spec 0.8, prevalence 0.01.
    ppv, npv = predictive_values(0.9, 0.8, 0.01)
    assert ppv == pytest.approx(0.009 / (0.009 + 0.198))
    assert npv == pytest.approx(0.792 / (0.792 + 0.001))
    y, s = _data()
    op = operating_point(y, s, 0.5)
    # At the study's own prevalence the formula gives back the observed PPV.
    assert op.at_prevalence(y.mean())[0] == pytest.approx(op.ppv.value)


def test_no_positives_gives_nan_sensitivity() -> None:
    op = operating_point([0, 0, 0], [0.1, 0.6, 0.9], 0.5)
    assert np.isnan(op.sensitivity.value) and np.isnan(op.sensitivity.ci[0])
    assert op.specificity.value == pytest.approx(1 / 3)
