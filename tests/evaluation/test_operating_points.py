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


def _rates(y: np.ndarray, s: np.ndarray, t: float) -> tuple[float, float]:
    pos = s >= t
    return float(pos[y == 1].mean()), float((~pos[y == 0]).mean())


def test_named_points_keep_their_order_on_a_strong_label() -> None:
    from overread.evaluation.operating_points import standard_points

    # Well separated: balanced already keeps 90 % sensitivity and specificity, so the
    # highest threshold keeping 90 % sensitivity lies above balanced (unordered).
    rng = np.random.default_rng(3)
    y = (rng.random(600) < 0.3).astype(int)
    s = 1 / (1 + np.exp(-(rng.normal(size=600) + 5.0 * (y - 0.5))))
    raw_hs = threshold_for_sensitivity(y, s, 0.9)
    raw_hsp = threshold_for_specificity(y, s, 0.9)
    balanced = youden_threshold(y, s)
    assert raw_hs > balanced > raw_hsp  # the disorder the rule removes
    points = standard_points(y, s)
    assert points["balanced"] == pytest.approx(balanced)
    assert points["high sensitivity"] <= points["balanced"] <= points["high specificity"]
    sens_hs, _ = _rates(y, s, points["high sensitivity"])
    _, spec_hsp = _rates(y, s, points["high specificity"])
    assert sens_hs >= 0.9 and spec_hsp >= 0.9
    # Never less sensitive than balanced at "high sensitivity" (the old point was).
    assert _rates(y, s, raw_hs)[0] < _rates(y, s, balanced)[0] == sens_hs


def test_named_points_of_a_weak_label_are_the_target_thresholds() -> None:
    from overread.evaluation.operating_points import order_points, standard_points

    y, s = _data(1)
    s = np.clip((s + 3) / 8, 0, 1)  # rounded: many ties, and runs of one class
    points = standard_points(y, s)
    assert points["high sensitivity"] < points["balanced"] < points["high specificity"]
    assert order_points(points) == points
    # At the ROC corner: at least the target, and never worse than the first
    # threshold that meets it (same specificity, at least its sensitivity).
    hs, hsp = threshold_for_sensitivity(y, s, 0.9), threshold_for_specificity(y, s, 0.9)
    sens, spec = _rates(y, s, points["high sensitivity"])
    assert sens >= 0.9 and spec == _rates(y, s, hs)[1] and sens >= _rates(y, s, hs)[0]
    sens, spec = _rates(y, s, points["high specificity"])
    assert spec >= 0.9 and sens == _rates(y, s, hsp)[0] and spec >= _rates(y, s, hsp)[1]


def test_named_points_are_the_corners_scikit_learn_keeps() -> None:
    from overread.evaluation.operating_points import standard_points

    # Continuous scores: the corner rule equals choosing on scikit-learn's curve,
    # which drops the points between corners (the training rule before ordering).
    for seed in range(20):
        rng = np.random.default_rng(seed)
        y = (rng.random(300) < 0.3).astype(int)
        s = 1 / (1 + np.exp(-(rng.normal(size=300) + 1.2 * y)))
        fpr, tpr, thr = roc_curve(y, s)
        thr = np.clip(thr, 0.0, 1.0)
        points = standard_points(y, s)
        assert points["balanced"] == pytest.approx(float(thr[np.argmax(tpr - fpr)]))
        old_hs = float(thr[np.flatnonzero(tpr >= 0.9)[0]])
        old_hsp = float(thr[np.flatnonzero(1 - fpr >= 0.9)[-1]])
        assert points["high sensitivity"] == pytest.approx(min(old_hs, points["balanced"]))
        assert points["high specificity"] == pytest.approx(max(old_hsp, points["balanced"]))
        sens, _ = _rates(y, s, points["high sensitivity"])
        _, spec = _rates(y, s, points["high specificity"])
        assert sens >= 0.9 and spec >= 0.9


def test_order_points_leaves_other_points_alone() -> None:
    from overread.evaluation.operating_points import order_points

    # Other named points are left alone; no balanced point, nothing to order against.
    odd = {"balanced": 0.5, "high sensitivity": 0.7, "screening": 0.9}
    assert order_points(odd) == {"balanced": 0.5, "high sensitivity": 0.5, "screening": 0.9}
    assert order_points({"high sensitivity": 0.7}) == {"high sensitivity": 0.7}
