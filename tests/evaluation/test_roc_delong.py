"""AUC, curves and DeLong against scikit-learn, pROC's published output and the O(n^2) definition."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm
from statsmodels.stats.multitest import multipletests

from overread.errors import EvaluationError
from overread.evaluation import (
    adjust_p_values,
    average_precision,
    delong_ci,
    delong_covariance,
    delong_test,
    macro_auc,
    micro_auc,
    per_label_auc,
    pr_curve,
    roc_auc,
    roc_curve,
    unpaired_auc_test,
)


def _tied_data(seed: int, n: int = 400) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    s = np.round(rng.normal(size=n) + y, 1)  # rounding makes many ties
    return y, s


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_and_curves_match_sklearn(seed: int) -> None:
    y, s = _tied_data(seed)
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    curve = roc_curve(y, s)
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(curve.fpr, fpr)
    np.testing.assert_allclose(curve.tpr, tpr)
    np.testing.assert_allclose(curve.thresholds[1:], thr[1:])
    assert average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    pr = pr_curve(y, s)
    precision, recall, _ = skm.precision_recall_curve(y, s, drop_intermediate=False)
    # scikit-learn lists increasing thresholds plus the (1, 0) end point.
    np.testing.assert_allclose(pr.precision, precision[:-1][::-1])
    np.testing.assert_allclose(pr.recall, recall[:-1][::-1])


def test_macro_micro_match_sklearn_and_skip_missing() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random((300, 4)) < 0.25).astype(float)
    s = rng.normal(size=y.shape) + y
    assert macro_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s, average="macro"))
    assert micro_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s, average="micro"))
    y[:10, 1] = np.nan
    y[:, 3] = 0.0  # one class only: NaN for that label, left out of the mean
    aucs = per_label_auc(y, s)
    assert np.isnan(aucs[3])
    keep = ~np.isnan(y[:, 1])
    assert aucs[1] == pytest.approx(skm.roc_auc_score(y[keep, 1], s[keep, 1]))
    assert macro_auc(y, s) == pytest.approx(np.mean(aucs[:3]))


def test_delong_ci_matches_proc_on_asah(asah) -> None:
    # pROC: roc(aSAH$outcome, aSAH$s100b, ci=TRUE) -> "Area under the curve: 0.7314,
    # 95% CI: 0.6301-0.8326 (DeLong)".
    poor = (asah["outcome"] == "Poor").to_numpy().astype(int)
    est = delong_ci(poor, asah["s100b"])
    assert round(est.auc, 4) == 0.7314
    assert (round(est.ci[0], 4), round(est.ci[1], 4)) == (0.6301, 0.8326)
    assert (est.n_positive, est.n_negative) == (41, 72)


def test_delong_test_matches_proc_on_asah(asah) -> None:
    # pROC: roc.test(roc(aSAH$outcome, aSAH$s100b), roc(aSAH$outcome, aSAH$wfns))
    # -> "Z = -2.209, p-value = 0.02718", AUC of roc1 0.7313686, of roc2 0.8237 (4 d.p.).
    poor = (asah["outcome"] == "Poor").to_numpy().astype(int)
    result = delong_test(poor, asah["s100b"], asah["wfns"])
    assert result.auc_a == pytest.approx(0.7313686, abs=5e-8)
    assert round(result.auc_b, 4) == 0.8237
    assert round(result.z, 3) == -2.209
    assert round(result.p, 5) == 0.02718
    assert result.ci[0] < result.difference < result.ci[1] < 0


def test_fast_delong_equals_definition(asah, delong_by_definition) -> None:
    poor = (asah["outcome"] == "Poor").to_numpy().astype(int)
    scores = asah[["s100b", "ndka", "wfns", "age"]].to_numpy(float).T
    aucs, cov = delong_covariance(poor, scores)
    ref_aucs, ref_cov = delong_by_definition(poor, scores)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-14)
    y, s = _tied_data(7, 300)
    s2 = np.round(s + np.random.default_rng(8).normal(size=s.size), 0)
    aucs, cov = delong_covariance(y, np.vstack([s, s2]))
    ref_aucs, ref_cov = delong_by_definition(y, np.vstack([s, s2]))
    np.testing.assert_allclose(cov, ref_cov, atol=1e-14)


def test_unpaired_test_adds_variances() -> None:
    y1, s1 = _tied_data(1)
    y2, s2 = _tied_data(2)
    a, b = delong_ci(y1, s1), delong_ci(y2, s2)
    result = unpaired_auc_test(y1, s1, y2, s2)
    assert result.se == pytest.approx(np.hypot(a.se, b.se))
    assert result.difference == pytest.approx(a.auc - b.auc)


def test_same_scores_give_no_difference() -> None:
    y, s = _tied_data(4)
    result = delong_test(y, s, s)
    assert result.difference == 0.0 and result.p == 1.0


@pytest.mark.parametrize(
    ("truth", "score", "message"),
    [
        ([1, 1, 1], [0.1, 0.2, 0.3], "only positive"),
        ([0, 0], [0.1, 0.2], "only negative"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([], [], "empty"),
        ([0, 1, 2], [0.1, 0.2, 0.3], "0/1"),
    ],
)
def test_degenerate_inputs_are_refused(truth, score, message) -> None:
    with pytest.raises(EvaluationError, match=message):
        delong_ci(truth, score)


def test_all_equal_scores_give_auc_one_half() -> None:
    est = delong_ci([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5])
    assert est.auc == 0.5 and est.se == 0.0


@pytest.mark.parametrize(
    ("ours", "theirs"), [("bonferroni", "bonferroni"), ("holm", "holm"), ("bh", "fdr_bh")]
)
def test_multiplicity_matches_statsmodels(ours: str, theirs: str) -> None:
    p = np.random.default_rng(0).random(14) ** 3
    expected = multipletests(p, method=theirs)[1]
    np.testing.assert_allclose(adjust_p_values(p, ours), expected, atol=1e-12)
    p[3] = np.nan
    got = adjust_p_values(p, ours)
    assert np.isnan(got[3])
    np.testing.assert_allclose(np.delete(got, 3), multipletests(np.delete(p, 3), method=theirs)[1])


def test_single_positive_gives_auc_but_no_interval() -> None:
    est = delong_ci([1, 0, 0, 0], [0.9, 0.1, 0.5, 0.95])
    assert est.auc == pytest.approx(2 / 3)
    assert np.isnan(est.se) and np.isnan(est.ci[0])
    result = delong_test([1, 0, 0, 0], [0.9, 0.1, 0.5, 0.95], [0.2, 0.1, 0.5, 0.3])
    assert np.isnan(result.p) and "not estimable" in result.method


def _obuchowski_by_definition(y, s, clusters):
    """Obuchowski (1997) written as loops over clusters with the m x n comparison matrix."""
    y = np.asarray(y)
    s = np.asarray(s, dtype=float)
    pos, neg = s[y == 1], s[y == 0]
    psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
    big_m, big_n = psi.shape
    auc = psi.mean()
    c_pos, c_neg = np.asarray(clusters)[y == 1], np.asarray(clusters)[y == 0]
    ids = np.unique(clusters)
    v10 = {c: psi[c_pos == c].sum() / big_n for c in ids}
    v01 = {c: psi[:, c_neg == c].sum() / big_m for c in ids}
    m = {c: (c_pos == c).sum() for c in ids}
    n = {c: (c_neg == c).sum() for c in ids}
    i10 = sum(m[c] > 0 for c in ids)
    i01 = sum(n[c] > 0 for c in ids)
    s10 = i10 / ((i10 - 1) * big_m) * sum((v10[c] - m[c] * auc) ** 2 for c in ids)
    s01 = i01 / ((i01 - 1) * big_n) * sum((v01[c] - n[c] * auc) ** 2 for c in ids)
    s11 = (
        len(ids) / (len(ids) - 1) * sum((v10[c] - m[c] * auc) * (v01[c] - n[c] * auc) for c in ids)
    )
    return auc, s10 / big_m + s01 / big_n + 2 * s11 / (big_m * big_n)


def test_clustered_delong_matches_definition_and_reduces_to_delong() -> None:
    from overread.evaluation import clustered_delong_ci

    y, s = _tied_data(11, 300)
    clusters = np.arange(300) // 3
    est = clustered_delong_ci(y, s, clusters)
    auc, var = _obuchowski_by_definition(y, s, clusters)
    assert est.auc == pytest.approx(auc) and est.se == pytest.approx(np.sqrt(var), rel=1e-10)
    single = clustered_delong_ci(y, s, np.arange(300))
    assert single.se == pytest.approx(delong_ci(y, s).se, rel=1e-12)


def test_clustered_delong_widens_for_duplicated_images() -> None:
    from overread.evaluation import clustered_delong_ci

    y, s = _tied_data(12, 200)
    y4, s4 = np.repeat(y, 4), np.repeat(s, 4)
    naive = delong_ci(y4, s4)
    clustered = clustered_delong_ci(y4, s4, np.repeat(np.arange(200), 4))
    # Four copies carry the information of one: the honest SE is about twice the naive one.
    assert clustered.se == pytest.approx(delong_ci(y, s).se, rel=0.02)
    assert clustered.se > 1.8 * naive.se
