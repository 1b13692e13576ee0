"""Drift statistics: a known shift is found, no shift is not flagged, values are right."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from overread.errors import ConfigError
from overread.monitoring.alerts import AlertKind
from overread.monitoring.drift import (
    Cusum,
    DriftMonitor,
    DriftSettings,
    Ewma,
    PrevalenceMonitor,
    PrevalenceSettings,
    chi_square_p_value,
    family_score,
    ks_p_value,
    mmd_test,
    population_stability_index,
)

from .conftest import make_observation


def test_psi_of_identical_distributions_is_near_zero() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=5000), rng.normal(size=5000)
    assert population_stability_index(a, b) < 0.01


def test_psi_matches_the_formula_on_known_bins() -> None:
    # Reference uniform on 0..1 (deciles are the bins); current has all its mass in
    # the lowest half: five bins at 0.2 share, five at the 1e-4 floor.
    reference = np.linspace(0.0, 1.0, 100001)
    current = np.linspace(0.0, 0.4999, 10000)
    expected = 5 * (0.2 - 0.1) * np.log(0.2 / 0.1) + 5 * (1e-4 - 0.1) * np.log(1e-4 / 0.1)
    assert population_stability_index(reference, current) == pytest.approx(expected, rel=0.01)


def test_psi_flags_a_mean_shift_as_major() -> None:
    rng = np.random.default_rng(1)
    assert population_stability_index(rng.normal(size=3000), rng.normal(1.0, 1, 3000)) > 0.25


def test_ks_detects_a_shift_and_not_its_absence() -> None:
    rng = np.random.default_rng(2)
    assert ks_p_value(rng.normal(size=300), rng.normal(0.5, 1, 300)) < 1e-4
    assert ks_p_value(rng.normal(size=300), rng.normal(size=300)) > 0.01


def test_chi_square_on_header_mix() -> None:
    same = ["A"] * 50 + ["B"] * 50
    assert chi_square_p_value(same, same) == pytest.approx(1.0)
    assert chi_square_p_value(["A"] * 60, ["A"] * 60) == 1.0
    assert chi_square_p_value(["A"] * 100, ["B"] * 30 + ["A"] * 70) < 1e-6


def test_mmd_of_known_distributions() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(80, 4))
    same = mmd_test(x, rng.normal(size=(80, 4)), n_permutations=200, seed=0)
    shifted = mmd_test(x, rng.normal(0.8, 1, size=(80, 4)), n_permutations=200, seed=0)
    assert abs(same.mmd2) < 0.02
    assert same.p_value > 0.05
    assert shifted.mmd2 > 0.05
    assert shifted.p_value == pytest.approx(1 / 201)


def test_mmd_with_a_fixed_kernel_equals_the_closed_form() -> None:
    # Two points each, gamma 1: unbiased MMD^2 = k(x1,x2) + k(y1,y2) - 2 mean k(x, y).
    x = np.array([[0.0], [1.0]])
    y = np.array([[3.0], [4.0]])
    k = lambda a, b: np.exp(-((a - b) ** 2))  # noqa: E731
    expected = k(0, 1) + k(3, 4) - 2 * np.mean([k(0, 3), k(0, 4), k(1, 3), k(1, 4)])
    assert mmd_test(x, y, n_permutations=10, gamma=1.0).mmd2 == pytest.approx(expected)


def test_mmd_refuses_mismatched_samples() -> None:
    with pytest.raises(ConfigError):
        mmd_test(np.zeros((5, 2)), np.zeros((5, 3)))


def test_family_score_uses_holm() -> None:
    # Holm: smallest p 0.001 of 10 -> 0.01 -> score 2.
    assert family_score([0.001] + [0.5] * 9) == pytest.approx(2.0)
    assert family_score([]) == 0.0
    assert family_score([1e-300]) == 10.0


def test_cusum_accumulates_and_alarms() -> None:
    chart = Cusum(k=1.0, h=3.0)
    assert [chart.update(x) for x in (0.5, 0.5, 0.5)] == [False] * 3
    assert chart.value == 0.0
    alarms = [chart.update(2.0) for _ in range(4)]
    assert alarms == [False, False, False, True]  # 1, 2, 3 (not > 3), 4 > 3
    assert chart.value == 0.0  # restarted


def test_ewma_limit_and_alarm() -> None:
    chart = Ewma(lam=0.5, width=3.0, mean=0.0, sd=1.0)
    assert chart.upper == pytest.approx(3.0 * np.sqrt(0.5 / 1.5))
    assert not chart.update(1.0)  # 0.5
    assert chart.update(3.0)  # 1.75 > 1.732


def _feed(monitor: DriftMonitor, days: int, drift_from: int | None, **drift: object) -> list:
    rng = np.random.default_rng(4)
    alerts = []
    start = dt.date(2025, 1, 1)
    for d in range(days):
        day = start + dt.timedelta(days=d)
        drifted = drift_from is not None and d >= drift_from
        todays = [
            make_observation(rng, date=day, uid=f"{d}-{k}", **(drift if drifted else {}))
            for k in range(15)
        ]
        alerts.extend(monitor.update(day, todays))
    return alerts


def test_drift_monitor_quiet_without_drift() -> None:
    monitor = DriftMonitor(DriftSettings(mmd_permutations=30))
    assert _feed(monitor, 40, None) == []
    assert monitor.history and all(p.acquisition_cusum < 6 for p in monitor.history)


def test_drift_monitor_finds_a_noise_change() -> None:
    monitor = DriftMonitor(DriftSettings(mmd_permutations=30))
    alerts = _feed(monitor, 40, 25, noise=0.02)
    kinds = {a.kind for a in alerts}
    assert AlertKind.ACQUISITION_DRIFT in kinds
    first = min(a.date for a in alerts if a.kind is AlertKind.ACQUISITION_DRIFT)
    assert first >= dt.date(2025, 1, 26)
    assert "image:noise" in str(alerts[0].evidence["strongest_test"])


def test_drift_monitor_finds_an_output_shift() -> None:
    alerts = _feed(DriftMonitor(DriftSettings(mmd_permutations=30)), 40, 25, shift=1.5)
    assert AlertKind.OUTPUT_DRIFT in {a.kind for a in alerts}


def test_drift_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        DriftMonitor(DriftSettings(ewma_lambda=0.0))


def test_prevalence_monitor_finds_a_rise_and_not_noise() -> None:
    start = dt.date(2025, 1, 1)

    def run(shift_from: int | None) -> list:
        rng = np.random.default_rng(5)
        monitor = PrevalenceMonitor(PrevalenceSettings(reference_days=10))
        out = []
        for d in range(50):
            day = start + dt.timedelta(days=d)
            shift = 1.5 if shift_from is not None and d >= shift_from else 0.0
            todays = [make_observation(rng, date=day, shift=shift) for _ in range(40)]
            out.extend(monitor.update(day, todays))
        return out

    assert run(None) == []
    raised = run(30)
    assert raised and all(a.kind is AlertKind.PREVALENCE for a in raised)
    assert min(a.date for a in raised) >= start + dt.timedelta(days=30)


def test_combined_score_is_the_larger_family_score() -> None:
    monitor = DriftMonitor(DriftSettings(mmd_permutations=30))
    _feed(monitor, 35, 25, noise=0.02)
    assert monitor.history
    for point in monitor.history:
        assert point.combined_score == max(point.acquisition_score, point.output_score)
        assert point.combined_cusum >= 0.0
    assert max(p.combined_cusum for p in monitor.history) > 0.0
