"""Obuchowski-Rockette MRMC analysis against a loop-by-loop re-derivation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.stats import f as f_dist

from overread.errors import EvaluationError
from overread.evaluation import obuchowski_rockette


def _study(seed: int = 0, n: int = 120, readers: int = 4, effect: float = 0.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    case = rng.normal(size=n) + 1.2 * y
    scores = np.empty((2, readers, n))
    for t, r in itertools.product(range(2), range(readers)):
        scores[t, r] = (
            case + (effect * t) * y + rng.normal(scale=0.8, size=n) + rng.normal(scale=0.3)
        )
    return y, scores


def _reference(y, scores, delong_by_definition):
    t_n, r_n, n = scores.shape
    aucs, cov = delong_by_definition(y, scores.reshape(t_n * r_n, n))
    theta = aucs.reshape(t_n, r_n)
    var, c1, c2, c3 = [], [], [], []
    for (t1, r1), (t2, r2) in itertools.product(
        itertools.product(range(t_n), range(r_n)), repeat=2
    ):
        v = cov[t1 * r_n + r1, t2 * r_n + r2]
        if t1 == t2 and r1 == r2:
            var.append(v)
        elif r1 == r2:
            c1.append(v)
        elif t1 == t2:
            c2.append(v)
        else:
            c3.append(v)
    ms_t = r_n * sum((theta[t].mean() - theta.mean()) ** 2 for t in range(t_n)) / (t_n - 1)
    ms_tr = sum(
        (theta[t, r] - theta[t].mean() - theta[:, r].mean() + theta.mean()) ** 2
        for t in range(t_n)
        for r in range(r_n)
    ) / ((t_n - 1) * (r_n - 1))
    den = ms_tr + r_n * max(np.mean(c2) - np.mean(c3), 0)
    ddf = den**2 / (ms_tr**2 / ((t_n - 1) * (r_n - 1)))
    return ms_t / den, ddf, f_dist.sf(ms_t / den, t_n - 1, ddf), np.mean(var)


def test_matches_loop_reference(delong_by_definition) -> None:
    y, scores = _study(effect=0.6)
    result = obuchowski_rockette(y, scores)
    f_ref, ddf_ref, p_ref, var_ref = _reference(y, scores, delong_by_definition)
    assert result.f_statistic == pytest.approx(f_ref)
    assert result.df_denominator == pytest.approx(ddf_ref)
    assert result.p == pytest.approx(p_ref)
    assert result.covariances.var == pytest.approx(var_ref)
    assert result.difference == pytest.approx(result.auc[0] - result.auc[1])
    assert result.ci[0] < result.difference < result.ci[1]


def test_type_one_error_is_near_nominal() -> None:
    # Under no modality effect, the 5% test rejects about 5% of the time.
    rejections = sum(obuchowski_rockette(*_study(seed)).p < 0.05 for seed in range(200))
    assert rejections <= 20


def test_bad_shape_is_refused() -> None:
    with pytest.raises(EvaluationError, match="modalities"):
        obuchowski_rockette([0, 1], np.zeros((1, 2, 2)))


def test_jackknife_covariance_equals_leave_one_out_refits() -> None:
    from sklearn.metrics import roc_auc_score

    from overread.evaluation.mrmc import jackknife_covariance

    y, scores = _study(seed=5, n=60, readers=2)
    flat = scores.reshape(4, 60)
    aucs, cov = jackknife_covariance(y, flat)
    loo = np.array(
        [[roc_auc_score(np.delete(y, k), np.delete(row, k)) for k in range(60)] for row in flat]
    )
    centred = loo - loo.mean(axis=1, keepdims=True)
    np.testing.assert_allclose(cov, 59 / 60 * centred @ centred.T, atol=1e-14)
    result = obuchowski_rockette(y, scores, covariance="jackknife")
    assert result.auc == pytest.approx(aucs.reshape(2, 2).mean(axis=1))
    with pytest.raises(EvaluationError, match="covariance"):
        obuchowski_rockette(y, scores, covariance="bootstrap")
