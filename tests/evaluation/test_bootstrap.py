"""The vectorised patient-level bootstrap against a plain loop over resamples."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from overread.errors import EvaluationError
from overread.evaluation import bootstrap_auc, bootstrap_statistic
from overread.evaluation.bootstrap import patient_index, resample_counts


def _cohort(seed: int = 0, n: int = 240, k: int = 3):
    rng = np.random.default_rng(seed)
    y = (rng.random((n, k)) < 0.3).astype(float)
    s = np.round(rng.normal(size=y.shape) + y, 1)
    patients = np.arange(n) // 3
    return y, s, patients


def test_replicates_equal_auc_of_the_explicitly_resampled_rows() -> None:
    y, s, patients = _cohort()
    y[5, 0] = np.nan
    result = bootstrap_auc(y, s, patients, n_resamples=30, seed=11)
    # Rebuild the same resamples from the same generator and compute each AUC directly.
    rng = np.random.default_rng(11)
    pid, n_p = patient_index(patients, y.shape[0])
    counts = resample_counts(n_p, 30, rng)
    for b in range(30):
        rows = np.repeat(np.arange(y.shape[0]), counts[pid, b])
        for j in range(y.shape[1]):
            keep = rows[~np.isnan(y[rows, j])]
            expected = roc_auc_score(y[keep, j], s[keep, j])
            assert result.replicates[b, j] == pytest.approx(expected, abs=1e-12)
    for j in range(y.shape[1]):
        known = ~np.isnan(y[:, j])
        assert result.estimate[j] == pytest.approx(roc_auc_score(y[known, j], s[known, j]))


def test_counts_draw_whole_patients() -> None:
    counts = resample_counts(50, 20, np.random.default_rng(0))
    assert counts.shape == (50, 20)
    assert (counts.sum(axis=0) == 50).all()


def test_cluster_intervals_are_wider_than_image_level_when_patients_repeat() -> None:
    rng = np.random.default_rng(1)
    base_y = (rng.random(150) < 0.4).astype(float)
    base_s = rng.normal(size=150) + base_y
    y = np.repeat(base_y, 4)  # four identical images per patient
    s = np.repeat(base_s, 4)
    patients = np.repeat(np.arange(150), 4)
    clustered = bootstrap_auc(y, s, patients, n_resamples=400)
    naive = bootstrap_auc(y, s, None, n_resamples=400)
    width = lambda r: float(r.ci_high[0] - r.ci_low[0])  # noqa: E731
    assert width(clustered) > 1.5 * width(naive)


def test_one_class_label_gives_nan_not_a_number() -> None:
    y, s, patients = _cohort()
    y[:, 1] = 0.0
    result = bootstrap_auc(y, s, patients, n_resamples=20)
    assert np.isnan(result.estimate[1]) and np.isnan(result.ci_low[1])
    assert result.n_valid[1] == 0 and result.n_valid[0] == 20


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(EvaluationError, match="shape"):
        bootstrap_auc(np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(EvaluationError, match="patient ids"):
        bootstrap_auc(np.zeros(4), np.zeros(4), [1, 2])


def test_generic_bootstrap_resamples_patients() -> None:
    values = np.array([1.0, 1.0, 5.0, 5.0])
    patients = np.array(["a", "a", "b", "b"])
    result = bootstrap_statistic(
        lambda rows: float(values[rows].mean()), 4, patients, n_resamples=200
    )
    # Whole patients only: every resample mean is 1, 3 or 5.
    assert set(np.unique(result.replicates)) <= {1.0, 3.0, 5.0}
    assert result.estimate[0] == 3.0
