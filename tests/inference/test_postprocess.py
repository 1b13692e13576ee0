from __future__ import annotations

import numpy as np
import pytest

from overread.inference import calibrate, decide, sigmoid, threshold_proximity
from overread.models.manifest import Calibration
from overread.results import Decision


def test_sigmoid_is_stable_for_large_logits() -> None:
    values = sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    assert values.tolist() == pytest.approx([0.0, 0.5, 1.0])


def test_temperature_and_platt_calibration() -> None:
    logits = np.array([[2.0, 2.0, 2.0]])
    labels = ["a", "b", "c"]
    temperature = Calibration(method="temperature", parameters={"a": {"temperature": 2.0}})
    p = calibrate(logits, temperature, labels)
    assert p[0, 0] == pytest.approx(float(sigmoid(np.array(1.0))))
    assert p[0, 1] == pytest.approx(float(sigmoid(np.array(2.0))))  # uncalibrated label
    platt = Calibration(method="platt", parameters={"c": {"a": 0.5, "b": -1.0}})
    assert calibrate(logits, platt, labels)[0, 2] == pytest.approx(0.5)


def test_threshold_proximity_is_one_at_the_threshold_and_zero_at_the_ends() -> None:
    thresholds = np.array([0.3, 0.3, 0.3, 0.3])
    u = threshold_proximity(np.array([0.0, 0.3, 1.0, 0.65]), thresholds)
    assert u.tolist() == pytest.approx([0.0, 1.0, 0.0, 0.5])


def test_close_calls_are_referred() -> None:
    positive, proximity, decisions = decide(
        np.array([0.9, 0.52, 0.1, 0.47]), np.array([0.5, 0.5, 0.5, 0.5]), refer_uncertainty=0.8
    )
    assert positive.tolist() == [True, True, False, False]
    assert decisions.tolist() == [
        Decision.POSITIVE,
        Decision.INDETERMINATE,
        Decision.NEGATIVE,
        Decision.INDETERMINATE,
    ]
    assert all(isinstance(d, Decision) for d in decisions)
    assert proximity[0] < 0.8
