"""Calibration metrics and recalibration maps."""

from __future__ import annotations

import numpy as np
import pytest
import statsmodels.api as sm
from scipy.special import expit, logit
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss

from overread.errors import EvaluationError
from overread.evaluation import (
    IsotonicCalibration,
    PlattScaling,
    SiteRecalibration,
    TemperatureScaling,
    brier_decomposition,
    brier_score,
    calibration_error,
    reliability_bins,
)


def _overconfident(seed: int = 0, n: int = 4000):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n) * 1.5
    y = (rng.random(n) < expit(z)).astype(int)
    return y, expit(2.5 * z)  # logits too large: overconfident


def test_ece_by_definition() -> None:
    y = np.array([0, 1, 1, 0, 1, 1])
    p = np.array([0.05, 0.15, 0.55, 0.6, 0.95, 0.99])
    # Five equal-width bins: [0, .2] {.05 ,.15}, (.4, .6] {.55, .6}, (.8, 1] {.95, .99}.
    result = calibration_error(y, p, n_bins=5)
    gaps = [abs(0.5 - 0.1), abs(0.5 - 0.575), abs(1.0 - 0.97)]
    assert result.ece == pytest.approx(sum(2 * g for g in gaps) / 6)
    assert result.mce == pytest.approx(max(gaps))


def test_adaptive_bins_hold_equal_counts() -> None:
    y, p = _overconfident()
    bins = reliability_bins(y, p, n_bins=10, strategy="quantile")
    assert bins.count.min() >= 399 and bins.count.max() <= 401


def test_brier_and_murphy_decomposition() -> None:
    rng = np.random.default_rng(0)
    p = rng.choice([0.1, 0.3, 0.5, 0.8], size=2000)
    y = (rng.random(2000) < np.clip(p + 0.05, 0, 1)).astype(int)
    assert brier_score(y, p) == pytest.approx(brier_score_loss(y, p))
    d = brier_decomposition(y, p)
    # With discrete forecasts the identity is exact.
    assert d.brier == pytest.approx(d.reliability - d.resolution + d.uncertainty, abs=1e-12)
    assert d.within_bin == pytest.approx(0.0, abs=1e-12)
    assert d.uncertainty == pytest.approx(y.mean() * (1 - y.mean()))


def test_temperature_scaling_fixes_overconfidence_and_keeps_ranking() -> None:
    y, p = _overconfident()
    ts = TemperatureScaling().fit(y, p)
    assert ts.temperature[0] == pytest.approx(2.5 / 1.0, rel=0.15)
    q = ts.transform(p)
    assert calibration_error(y, q).ece < calibration_error(y, p).ece / 2
    assert (np.argsort(q, kind="stable") == np.argsort(p, kind="stable")).all()
    # The fitted T minimises the NLL: compare with a fine grid.
    z = logit(np.clip(p, 1e-7, 1 - 1e-7))
    grid = np.linspace(1.5, 4.0, 2001)
    nll = [np.mean(np.logaddexp(0, z / t) - y * z / t) for t in grid]
    assert ts.temperature[0] == pytest.approx(grid[int(np.argmin(nll))], abs=2e-3)


def test_per_label_temperature() -> None:
    y1, p1 = _overconfident(1)
    y2, _ = _overconfident(2)
    p2 = expit(0.25 * logit(_overconfident(2)[1]))  # logits x 0.625: underconfident
    ts = TemperatureScaling(per_label=True).fit(np.c_[y1, y2], np.c_[p1, p2])
    assert ts.temperature[0] == pytest.approx(2.5, rel=0.15)
    assert ts.temperature[1] == pytest.approx(0.625, rel=0.15)
    assert ts.transform(np.c_[p1, p2]).shape == (y1.size, 2)


def test_platt_matches_statsmodels_logit() -> None:
    y, p = _overconfident(3)
    platt = PlattScaling().fit(y, p)
    z = logit(np.clip(p, 1e-7, 1 - 1e-7))
    fit = sm.Logit(y, sm.add_constant(z)).fit(disp=0)
    assert platt.intercept == pytest.approx(fit.params[0], abs=1e-5)
    assert platt.slope == pytest.approx(fit.params[1], abs=1e-5)


def test_isotonic_is_the_pav_fit() -> None:
    y, p = _overconfident(4)
    iso = IsotonicCalibration().fit(y, p)
    ref = IsotonicRegression(out_of_bounds="clip").fit(p, y)
    np.testing.assert_allclose(iso.transform(p), ref.predict(p))
    assert np.all(np.diff(iso.transform(np.sort(p))) >= 0)


def test_site_recalibration_uses_each_sites_map() -> None:
    ya, pa = _overconfident(5, 1000)
    rng = np.random.default_rng(6)
    pb = rng.random(1000)
    yb = (rng.random(1000) < pb**2).astype(int)  # site B: probabilities too high
    y = np.r_[ya, yb]
    p = np.r_[pa, pb]
    sites = np.r_[["A"] * 1000, ["B"] * 1000]
    site_cal = SiteRecalibration("platt", min_cases=100).fit(y, p, sites)
    assert set(site_cal.by_site) == {"A", "B"}
    out = site_cal.transform(p, sites)
    np.testing.assert_allclose(out[1000:], PlattScaling().fit(yb, pb).transform(pb))
    # A site not seen in fitting falls back to the pooled map.
    pooled = site_cal.transform(p[:5], ["C"] * 5)
    np.testing.assert_allclose(pooled, PlattScaling().fit(y, p).transform(p[:5]))


def test_probabilities_outside_unit_interval_are_refused() -> None:
    with pytest.raises(EvaluationError, match="probabilities"):
        calibration_error([0, 1], [0.2, 1.3])
