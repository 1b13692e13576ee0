"""McNemar, kappas and ICC against statsmodels, scikit-learn and Shrout & Fleiss (1979)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from statsmodels.stats import inter_rater
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from overread.errors import EvaluationError
from overread.evaluation import (
    IccForm,
    cohens_kappa,
    cohens_kappa_table,
    fleiss_kappa,
    icc,
    mcnemar,
    paired_table,
)

TABLES = [
    [[30, 12], [4, 54]],
    [[10, 0], [0, 10]],
    [[5, 9], [1, 20]],
    [[100, 40], [25, 300]],
    [[7, 5], [5, 9]],
]


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize(("exact", "correction"), [(True, False), (False, True), (False, False)])
def test_mcnemar_matches_statsmodels(table, exact: bool, correction: bool) -> None:
    if not exact and table[0][1] + table[1][0] == 0:
        # statsmodels returns 0/0 = NaN here; we report "no evidence" explicitly.
        result = mcnemar(table, exact=False, correction=correction)
        assert (result.statistic, result.p) == (0.0, 1.0) and "no discordant" in result.method
        return
    ours = mcnemar(table, exact=exact, correction=correction)
    theirs = sm_mcnemar(np.array(table), exact=exact, correction=correction)
    assert ours.statistic == pytest.approx(theirs.statistic)
    assert ours.p == pytest.approx(theirs.pvalue, abs=1e-12)


def test_paired_table_from_outcomes() -> None:
    a = [1, 1, 0, 0, 1]
    b = [1, 0, 1, 0, 0]
    np.testing.assert_array_equal(paired_table(a, b), [[1, 2], [1, 1]])
    with pytest.raises(EvaluationError, match="0/1"):
        paired_table([1, np.nan], [1, 0])


@pytest.mark.parametrize(
    ("ours", "theirs"), [("none", None), ("linear", "linear"), ("quadratic", "quadratic")]
)
def test_cohens_kappa_matches_statsmodels_and_sklearn(ours: str, theirs: str | None) -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, 300)
    b = np.clip(a + rng.integers(-1, 2, 300) * (rng.random(300) < 0.5), 0, 3)
    result = cohens_kappa(a, b, weights=ours)
    table = np.zeros((4, 4))
    np.add.at(table, (a, b), 1)
    sm = inter_rater.cohens_kappa(table, wt=theirs)
    assert result.kappa == pytest.approx(sm.kappa, abs=1e-12)
    assert result.se == pytest.approx(sm.std_kappa, rel=1e-9)
    assert result.kappa == pytest.approx(cohen_kappa_score(a, b, weights=theirs), abs=1e-12)


def test_kappa_single_category_is_refused() -> None:
    with pytest.raises(EvaluationError, match="single category"):
        cohens_kappa_table([[10, 0], [0, 0]])


def test_fleiss_kappa_matches_statsmodels() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 3, 40)
    ratings = np.where(rng.random((40, 5)) < 0.7, truth[:, None], rng.integers(0, 3, (40, 5)))
    counts, _ = inter_rater.aggregate_raters(ratings)
    assert fleiss_kappa(counts) == pytest.approx(
        inter_rater.fleiss_kappa(counts, method="fleiss"), abs=1e-12
    )
    # Fleiss (1971) worked example (10 subjects, 14 raters, 5 categories): kappa 0.210.
    fleiss_1971 = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    assert round(fleiss_kappa(fleiss_1971), 3) == 0.210
    with pytest.raises(EvaluationError, match="same number"):
        fleiss_kappa([[1, 2], [2, 2]])


def test_icc_reproduces_shrout_fleiss_table() -> None:
    # Shrout & Fleiss (1979), Table 2 data (6 targets x 4 judges) and their Table 4 values.
    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9], [6, 2, 4, 7]]
    published = {
        IccForm.ICC1: 0.17,
        IccForm.ICC2: 0.29,
        IccForm.ICC3: 0.71,
        IccForm.ICC1K: 0.44,
        IccForm.ICC2K: 0.62,
        IccForm.ICC3K: 0.91,
    }
    result = icc(ratings)
    for form, value in published.items():
        assert round(result[form].value, 2) == value, form
        lo, hi = result[form].ci
        assert lo < result[form].value < hi


def test_icc_needs_complete_matrix() -> None:
    with pytest.raises(EvaluationError, match="missing"):
        icc([[1, 2], [np.nan, 3], [2, 2]])
