"""Sample size against statsmodels.stats.power and published examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm
from statsmodels.stats.power import NormalIndPower
from statsmodels.stats.proportion import proportion_effectsize

from overread.errors import EvaluationError
from overread.evaluation import (
    auc_precision,
    hanley_mcneil_se,
    non_inferiority_proportions,
    two_proportions,
)


def test_field_example_85_vs_75_percent_sensitivity() -> None:
    n1, n2 = two_proportions(0.85, 0.75, alpha=0.05, power=0.8)
    assert (n1, n2) == (250, 250)
    # statsmodels' arcsine-transformed version of the same design agrees within 1%.
    h = proportion_effectsize(0.85, 0.75)
    theirs = NormalIndPower().solve_power(effect_size=h, alpha=0.05, power=0.8, ratio=1.0)
    assert n1 == pytest.approx(theirs, rel=0.01)


def test_two_proportions_power_is_reached() -> None:
    # Power of the pooled z test at the returned size, by the normal approximation.
    p1, p2 = 0.6, 0.45
    n1, n2 = two_proportions(p1, p2, ratio=2.0)
    assert n2 == math.ceil(2 * n1)
    pbar = (n1 * p1 + n2 * p2) / (n1 + n2)
    se0 = math.sqrt(pbar * (1 - pbar) * (1 / n1 + 1 / n2))
    se1 = math.sqrt(p1 * (1 - p1) / n1 + p2 * (1 - p2) / n2)
    power = norm.cdf((abs(p1 - p2) - norm.ppf(0.975) * se0) / se1)
    assert 0.8 <= power < 0.805


def test_hanley_mcneil_reduces_to_mann_whitney_null_variance() -> None:
    # At AUC 0.5 Hanley-McNeil equals the exact null variance of U/(mn): (m+n+1)/(12mn).
    for m, n in [(10, 10), (30, 70), (200, 5)]:
        assert hanley_mcneil_se(0.5, m, n) ** 2 == pytest.approx((m + n + 1) / (12 * m * n))


def test_hanley_mcneil_published_example() -> None:
    # Hanley & McNeil (1982), Table 1: 109 CT images on a 5-point scale
    # (58 normal: 33, 6, 6, 11, 2; 51 abnormal: 3, 2, 2, 11, 33); they report A = 0.893, SE 0.032.
    from overread.evaluation import roc_auc

    ratings = np.arange(1, 6)
    score = np.r_[np.repeat(ratings, [33, 6, 6, 11, 2]), np.repeat(ratings, [3, 2, 2, 11, 33])]
    truth = np.r_[np.zeros(58), np.ones(51)]
    auc = roc_auc(truth, score)
    assert round(auc, 3) == 0.893
    assert round(hanley_mcneil_se(auc, 51, 58), 3) == 0.032


def test_auc_precision_is_the_smallest_sufficient_size() -> None:
    n_pos, n_neg = auc_precision(0.85, 0.05, prevalence=0.2)
    z = norm.ppf(0.975)
    assert z * hanley_mcneil_se(0.85, n_pos, n_neg) <= 0.05
    assert z * hanley_mcneil_se(0.85, n_pos - 1, math.ceil((n_pos - 1) * 4)) > 0.05
    assert n_neg == math.ceil(n_pos * 4)


def test_non_inferiority_matches_statsmodels() -> None:
    p_new, p_ref, margin = 0.85, 0.85, 0.05
    ours = non_inferiority_proportions(p_new, p_ref, margin, alpha=0.025, power=0.8)
    es = (p_new - p_ref + margin) / np.sqrt((p_new * (1 - p_new) + p_ref * (1 - p_ref)) / 2)
    theirs = NormalIndPower().solve_power(
        effect_size=es, alpha=0.025, power=0.8, alternative="larger"
    )
    assert ours == math.ceil(theirs)
    with pytest.raises(EvaluationError, match="margin"):
        non_inferiority_proportions(0.7, 0.85, 0.05)
