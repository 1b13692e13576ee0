"""Split conformal prediction: the finite-sample guarantees, checked by repetition."""

from __future__ import annotations

import math

import numpy as np
import pytest

from overread.errors import EvaluationError
from overread.evaluation.conformal import (
    ConformalMethod,
    ConformalSet,
    LabelQuantiles,
    calibrate_conformal,
    conformal_quantile,
    coverage,
    prediction_sets,
    risk_coverage,
    selective_summary,
    set_names,
)


def _beta_sd(n: int, alpha: float) -> float:
    """SD of the coverage given one calibration set: Beta(k, n + 1 - k) (Vovk 2012)."""
    k = math.ceil((n + 1) * (1 - alpha))
    a, b = k, n + 1 - k
    return math.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))


def _balanced(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.uniform(size=n) < 0.3).astype(float)
    logit = 2.0 * (2 * y - 1) + rng.normal(scale=1.5, size=n)
    return y, 1.0 / (1.0 + np.exp(-logit))


def _imbalanced(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """5 % positives that the model scores poorly; confident negatives."""
    y = (rng.uniform(size=n) < 0.05).astype(float)
    p = np.where(y == 1, rng.uniform(0.05, 0.6, size=n), rng.beta(1.0, 12.0, size=n))
    return y, p


def test_quantile_is_the_finite_sample_rank() -> None:
    scores = np.arange(1, 20) / 20.0  # 19 scores
    # ceil(20 * 0.9) = 18th smallest.
    assert conformal_quantile(scores, 0.1) == pytest.approx(18 / 20)
    # Too few scores for alpha 0.01: always include.
    assert conformal_quantile(scores, 0.01) == math.inf
    assert conformal_quantile(np.array([]), 0.1) == math.inf
    with pytest.raises(EvaluationError):
        conformal_quantile(scores, 0.0)


@pytest.mark.parametrize("alpha", [0.1, 0.05])
def test_marginal_coverage_holds_over_repetitions(alpha: float) -> None:
    rng = np.random.default_rng(1)
    n_cal, n_test, reps = 100, 2000, 300
    achieved = []
    for _ in range(reps):
        y, p = _balanced(rng, n_cal + n_test)
        q = calibrate_conformal(y[:n_cal, None], p[:n_cal, None], ["A"], alpha)["A"]
        h0, h1 = prediction_sets(p[n_cal:, None], [q.marginal], [q.marginal])
        achieved.append(coverage(y[n_cal:], h0[:, 0], h1[:, 0])["coverage"])
    mean = float(np.mean(achieved))
    # The mean coverage lies in [1 - alpha, 1 - alpha + 1/(n + 1)]; tolerance: four
    # standard errors of a mean of `reps` Beta coverages plus test-set noise.
    se = math.sqrt(_beta_sd(n_cal, alpha) ** 2 + alpha * (1 - alpha) / n_test) / math.sqrt(reps)
    assert 1 - alpha - 4 * se <= mean <= 1 - alpha + 1 / (n_cal + 1) + 4 * se


def test_class_conditional_covers_positives_where_marginal_fails() -> None:
    rng = np.random.default_rng(2)
    alpha, n_cal, n_test, reps = 0.1, 400, 4000, 200
    marginal_all, marginal_pos, mondrian_pos, mondrian_neg = [], [], [], []
    for _ in range(reps):
        y, p = _imbalanced(rng, n_cal + n_test)
        q = calibrate_conformal(y[:n_cal, None], p[:n_cal, None], ["A"], alpha)["A"]
        yt, pt = y[n_cal:], p[n_cal:, None]
        m = coverage(yt, *(a[:, 0] for a in prediction_sets(pt, [q.marginal], [q.marginal])))
        c = coverage(yt, *(a[:, 0] for a in prediction_sets(pt, [q.negative], [q.positive])))
        marginal_all.append(m["coverage"])
        marginal_pos.append(m["coverage_positive"])
        mondrian_pos.append(c["coverage_positive"])
        mondrian_neg.append(c["coverage_negative"])
    # Marginal conformal keeps its promise over all images ...
    assert np.mean(marginal_all) >= 1 - alpha - 0.01
    # ... while missing most of the minority class.
    assert np.mean(marginal_pos) < 0.5
    # Class-conditional conformal covers each class at 1 - alpha. Tolerance: four
    # standard errors of a mean of Beta coverages with ~20 positives per calibration.
    se_pos = math.sqrt(_beta_sd(20, alpha) ** 2 + 0.09 / 200) / math.sqrt(reps)
    assert np.mean(mondrian_pos) >= 1 - alpha - 4 * se_pos
    assert np.mean(mondrian_neg) >= 1 - alpha - 0.01


def test_set_names_and_counts() -> None:
    p = np.array([[0.05], [0.5], [0.95]])
    h0, h1 = prediction_sets(p, [0.3], [0.3])
    names = set_names(h0, h1)[:, 0].tolist()
    assert names == [ConformalSet.NEGATIVE, ConformalSet.EMPTY, ConformalSet.POSITIVE]
    h0, h1 = prediction_sets(p, [0.6], [0.6])
    assert set_names(h0, h1)[1, 0] is ConformalSet.BOTH
    assert ConformalSet.BOTH.ambiguous and ConformalSet.EMPTY.ambiguous
    assert not ConformalSet.POSITIVE.ambiguous
    report = coverage(np.array([0.0, 1.0, np.nan]), h0[:, 0], h1[:, 0])
    assert report["n"] == 2 and report["coverage"] == 1.0
    assert report["mean_set_size"] == pytest.approx(1.5)


def test_missing_truth_is_left_out_and_counted() -> None:
    y = np.array([[0, 1], [1, np.nan], [0, 0], [np.nan, 1]], dtype=float)
    p = np.full_like(y, 0.5)
    q = calibrate_conformal(y, p, ["A", "B"], 0.5)
    assert (q["A"].n, q["A"].n_positive, q["A"].n_negative) == (3, 1, 2)
    assert (q["B"].n, q["B"].n_positive) == (3, 2)
    again = LabelQuantiles.from_dict(q["A"].to_dict())
    assert again == q["A"]
    assert q["A"].pair(ConformalMethod.MARGINAL) == (q["A"].marginal, q["A"].marginal)


def test_infinite_quantiles_round_trip_as_null() -> None:
    q = LabelQuantiles(math.inf, 0.2, math.inf, n=3, n_negative=2, n_positive=1)
    data = q.to_dict()
    assert data["marginal"] is None and data["positive"] is None
    assert LabelQuantiles.from_dict(data) == q


def test_risk_coverage_curve() -> None:
    errors = np.array([0, 0, 1, 0, 1], dtype=float)
    confidence = np.array([0.9, 0.8, 0.1, 0.7, 0.2])
    curve = risk_coverage(errors, confidence)
    np.testing.assert_allclose(curve.coverage, [0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve.risk, [0, 0, 0, 0.25, 0.4])
    assert curve.aurc == pytest.approx(0.13)
    summary = selective_summary(
        np.array([1, 0, 1, 0]), np.array([True, True, False, False]), np.array([0, 1, 0, 0])
    )
    assert summary["coverage"] == 0.75 and summary["referral_rate"] == 0.25
    assert summary["selective_risk"] == pytest.approx(1 / 3)
    assert summary["risk_without_referral"] == 0.5
    # Positives: case 0 (called positive) and case 2 (called negative, kept): one missed.
    assert summary["positives_missed"] == 0.5
    # Negatives: case 1 (called positive, referred) and case 3 (negative): none flagged.
    assert summary["negatives_flagged"] == 0.0
