"""Fairness gaps: an alert when a gap's interval leaves the band, none otherwise."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from overread.errors import ConfigError
from overread.monitoring.alerts import AlertKind
from overread.monitoring.fairness import FairnessMonitor, FairnessSettings, gap_outside

from .conftest import make_observation

END = dt.date(2025, 5, 30)


def _studies(miss_in_d: float, seed: int = 0):
    """Group D's positives are called negative with probability ``miss_in_d``."""
    rng = np.random.default_rng(seed)
    observations, truth = [], {}
    for i in range(1200):
        group = "D" if i % 3 == 0 else "A"
        o = make_observation(rng, date=END - dt.timedelta(days=i % 30), uid=str(i), group=group)
        y = int(rng.random() < 0.4)
        p = rng.uniform(0.6, 1.0) if y else rng.uniform(0.0, 0.4)
        if y and group == "D" and rng.random() < miss_in_d:
            p = rng.uniform(0.0, 0.4)
        o = o.__class__(**{**o.__dict__, "probabilities": (p, 0.1)})
        observations.append(o)
        truth[str(i)] = {"Pneumothorax": y}
    return observations, truth


def test_gap_outside_band() -> None:
    assert gap_outside((0.25, 0.4), 0.2)
    assert gap_outside((-0.4, -0.21), 0.2)
    assert not gap_outside((0.1, 0.4), 0.2)
    assert not gap_outside((float("nan"), 0.5), 0.2)


def test_equal_opportunity_gap_alert() -> None:
    monitor = FairnessMonitor(
        FairnessSettings(thresholds={"Pneumothorax": 0.5}, n_resamples=100, reference="A")
    )
    alerts = monitor.evaluate(END, *_studies(miss_in_d=0.5))
    tpr = [a for a in alerts if a.statistic == "tpr_gap"]
    assert len(tpr) == 1 and tpr[0].kind is AlertKind.FAIRNESS
    assert tpr[0].value == pytest.approx(-0.5, abs=0.1)
    assert "group=D vs A" in tpr[0].subject
    # Raised once, not every time the gap is judged.
    assert not monitor.evaluate(END, *_studies(miss_in_d=0.5))


def test_no_fairness_alert_without_a_gap() -> None:
    monitor = FairnessMonitor(
        FairnessSettings(thresholds={"Pneumothorax": 0.5}, n_resamples=100, reference="A")
    )
    assert monitor.evaluate(END, *_studies(miss_in_d=0.0)) == []
    assert any(p.metric == "tpr" for p in monitor.history)


def test_fairness_settings_are_checked() -> None:
    with pytest.raises(ConfigError):
        FairnessMonitor(FairnessSettings(tolerance={"auc": 0.1}))
