"""Rolling performance windows: the maths and the alert rules."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from overread.evaluation.delong import delong_ci
from overread.evaluation.operating_points import wilson_interval
from overread.monitoring.alerts import AlertKind
from overread.monitoring.performance import (
    PerformanceMonitor,
    PerformanceSettings,
    performance_table,
    window_metrics,
)

from .conftest import make_observation

START = dt.date(2025, 3, 1)


def _cohort(days: int, per_day: int, seed: int = 0, noisy_group: str | None = None):
    """Observations whose Pneumothorax probability separates the truth well."""
    rng = np.random.default_rng(seed)
    observations, truth = [], {}
    for d in range(days):
        for k in range(per_day):
            uid = f"{d}-{k}"
            group = "D" if k % 4 == 0 else "A"
            o = make_observation(rng, date=START + dt.timedelta(days=d), uid=uid, group=group)
            y = int(o.probabilities[0] > 0.3)
            if noisy_group == group and rng.random() < 0.4:
                y = 1 - y
            observations.append(o)
            truth[uid] = {"Pneumothorax": y, "Pleural Effusion": int(rng.random() < 0.3)}
    return observations, truth


def test_window_metrics_match_evaluation() -> None:
    observations, truth = _cohort(10, 20)
    end = START + dt.timedelta(days=9)
    m = window_metrics(observations, truth, "Pleural Effusion", end=end, window_days=7)
    inside = [o for o in observations if o.date > end - dt.timedelta(days=7)]
    y = np.array([truth[o.study_instance_uid]["Pleural Effusion"] for o in inside], dtype=bool)
    p = np.array([o.probabilities[1] for o in inside])
    called = p >= 0.5
    assert m.n == len(inside) == 140
    assert m.n_positive == int(y.sum())
    assert m.auc == pytest.approx(delong_ci(y, p).auc)
    tp = int((called & y).sum())
    assert m.sensitivity.value == pytest.approx(tp / y.sum())
    assert m.sensitivity.ci == pytest.approx(wilson_interval(tp, int(y.sum())))
    assert m.specificity.value == pytest.approx(((~called) & ~y).sum() / (~y).sum())
    assert m.ppv.value == pytest.approx(tp / called.sum())
    assert m.alert_rate.value == pytest.approx(called.mean())


def test_window_leaves_out_unlabelled_and_old_studies() -> None:
    observations, truth = _cohort(10, 5)
    del truth["9-0"]
    m = window_metrics(
        observations, truth, "Pneumothorax", end=START + dt.timedelta(days=9), window_days=1
    )
    assert m.n == 4


def test_performance_table_slices() -> None:
    observations, truth = _cohort(5, 10)
    table = performance_table(observations, truth, end=START + dt.timedelta(days=4))
    slices = {(m.site, m.subgroup) for m in table}
    assert ("", "") in slices and ("NGH", "") in slices and ("", "group=D") in slices
    assert {m.window_days for m in table} == {7, 30}


def test_no_alert_when_performance_holds() -> None:
    observations, truth = _cohort(30, 20)
    monitor = PerformanceMonitor(
        PerformanceSettings(baseline_auc={"Pneumothorax": 0.99}, margin=0.05, attributes=("group",))
    )
    monitor.add(observations, truth)
    assert monitor.evaluate(START + dt.timedelta(days=29)) == []


def test_subgroup_alert_when_its_labels_degrade() -> None:
    observations, truth = _cohort(30, 20, noisy_group="D")
    monitor = PerformanceMonitor(
        PerformanceSettings(baseline_auc={"Pneumothorax": 0.99}, margin=0.05, attributes=("group",))
    )
    monitor.add(observations, truth)
    alerts = monitor.evaluate(START + dt.timedelta(days=29))
    subjects = {(a.kind, a.subject) for a in alerts}
    assert (AlertKind.SUBGROUP_PERFORMANCE, "Pneumothorax, group=D") in subjects
    assert not any("group=A" in a.subject for a in alerts)
    # The same alert is not raised again the next day (cooldown).
    assert not any(
        a.subject == "Pneumothorax, group=D"
        for a in monitor.evaluate(START + dt.timedelta(days=30))
    )


def test_false_critical_budget() -> None:
    observations, truth = _cohort(10, 20)
    for uid in truth:
        truth[uid]["Pneumothorax"] = 0  # every positive call is now false
    settings = PerformanceSettings(false_critical_budget=0.05, attributes=())
    monitor = PerformanceMonitor(settings)
    monitor.add(observations, truth)
    alerts = monitor.evaluate(START + dt.timedelta(days=9))
    assert any(a.subject == "false Pneumothorax alerts, all sites" for a in alerts)
