"""Subgroup metrics and fairness gaps against Fairlearn's MetricFrame."""

from __future__ import annotations

import numpy as np
import pytest
from fairlearn.metrics import (
    MetricFrame,
    demographic_parity_difference,
    equalized_odds_difference,
    false_positive_rate,
    selection_rate,
    true_positive_rate,
)
from sklearn.metrics import roc_auc_score

from overread.errors import EvaluationError
from overread.evaluation import age_band, fairness_report, group_metrics


def _cohort(seed: int = 0, n: int = 1200):
    rng = np.random.default_rng(seed)
    group = rng.choice(["F", "M", "X"], size=n, p=[0.5, 0.4, 0.1])
    y = (rng.random(n) < 0.3).astype(int)
    shift = np.where(group == "M", 0.6, 0.0)  # the model over-calls in group M
    p = 1 / (1 + np.exp(-(rng.normal(size=n) + 2.0 * y - 1.0 + shift)))
    return y, p, group, np.arange(n) // 2


def test_group_rates_match_fairlearn() -> None:
    y, p, group, _ = _cohort()
    called = (p >= 0.5).astype(int)
    frame = MetricFrame(
        metrics={
            "tpr": true_positive_rate,
            "fpr": false_positive_rate,
            "selection_rate": selection_rate,
        },
        y_true=y,
        y_pred=called,
        sensitive_features=group,
    )
    ours = {(m.group, m.metric): m.value for m in group_metrics("sex", y, p, group, 0.5)}
    for g in ["F", "M", "X"]:
        for metric in ["tpr", "fpr", "selection_rate"]:
            assert ours[(g, metric)] == pytest.approx(frame.by_group.loc[g, metric], abs=1e-12)
        rows = group == g
        assert ours[(g, "auc")] == pytest.approx(roc_auc_score(y[rows], p[rows]))
    report = fairness_report("sex", y, p, group, 0.5, n_resamples=50)
    diff = frame.difference()
    for metric in ["tpr", "fpr", "selection_rate"]:
        assert report.differences[metric] == pytest.approx(diff[metric], abs=1e-12)
    assert report.differences["equalized_odds"] == pytest.approx(
        equalized_odds_difference(y, called, sensitive_features=group)
    )
    assert report.differences["selection_rate"] == pytest.approx(
        demographic_parity_difference(y, called, sensitive_features=group)
    )


def test_real_gap_is_flagged_and_no_gap_is_not() -> None:
    y, p, group, patients = _cohort(1, 4000)
    report = fairness_report("sex", y, p, group, 0.5, patient_ids=patients, n_resamples=200)
    gaps = {(g.group, g.metric): g for g in report.gaps}
    assert all(g.reference == "F" for g in report.gaps)  # the largest group
    assert gaps[("M", "fpr")].flagged and gaps[("M", "fpr")].ci[0] > 0
    assert gaps[("M", "selection_rate")].flagged
    assert not gaps[("X", "tpr")].flagged  # same model behaviour in X as in F
    g = gaps[("M", "tpr")]
    rows_m, rows_f = group == "M", group == "F"
    called = p >= 0.5
    expected = called[rows_m & (y == 1)].mean() - called[rows_f & (y == 1)].mean()
    assert g.gap == pytest.approx(expected)


def test_group_with_one_class_gives_nan_with_reason() -> None:
    y, p, group, _ = _cohort()
    y[group == "X"] = 0
    metrics = {(m.group, m.metric): m for m in group_metrics("sex", y, p, group, 0.5)}
    assert np.isnan(metrics[("X", "auc")].value)
    assert "one class" in metrics[("X", "auc")].reason
    assert "no positive" in metrics[("X", "tpr")].reason
    report = fairness_report("sex", y, p, group, 0.5, n_resamples=30)
    x_tpr = next(g for g in report.gaps if g.group == "X" and g.metric == "tpr")
    assert np.isnan(x_tpr.gap) and not x_tpr.flagged and x_tpr.reason


def test_empty_input_and_unknown_reference() -> None:
    with pytest.raises(EvaluationError, match="no labelled cases"):
        fairness_report("sex", [np.nan], [0.3], ["F"], 0.5)
    y, p, group, _ = _cohort()
    with pytest.raises(EvaluationError, match="reference group"):
        fairness_report("sex", y, p, group, 0.5, reference="Q", n_resamples=5)


def test_age_bands() -> None:
    assert age_band([25, 40, 59, 85, np.nan]).tolist() == [
        "0-39",
        "40-59",
        "40-59",
        "80+",
        "unknown",
    ]


def test_any_metric_by_group_matches_fairlearn() -> None:
    from sklearn.metrics import brier_score_loss

    from overread.evaluation import metric_by_group

    y, p, group, patients = _cohort(2)
    rows = metric_by_group(
        "sex", brier_score_loss, y, p, group, patient_ids=patients, n_resamples=100
    )
    frame = MetricFrame(metrics=brier_score_loss, y_true=y, y_pred=p, sensitive_features=group)
    for row in rows:
        assert row.value == pytest.approx(frame.by_group[row.group])
        assert row.ci[0] < row.value < row.ci[1]
        assert row.metric == "brier_score_loss"
    y1 = y.copy()
    y1[group == "X"] = 0
    auc_rows = {
        r.group: r for r in metric_by_group("sex", roc_auc_score, y1, p, group, n_resamples=20)
    }
    assert np.isnan(auc_rows["X"].value) and "undefined" in auc_rows["X"].reason
