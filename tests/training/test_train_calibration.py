"""Calibration error, and operating points chosen on calibrated probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from overread.training.metrics import expected_calibration_error
from overread.training.operating import (
    apply_platt,
    operating_point_performance,
    operating_points,
    platt_calibration,
)


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A rare label (8 %) scored like a ``pos_weight``-trained net: far too high."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.08).astype(np.float32)
    z = np.where(y > 0, 1.0, -1.0) + rng.normal(0, 1.0, n)
    p = 1 / (1 + np.exp(-(3 * z + 2.5)))
    return p[:, None], y[:, None]


def test_ece_is_small_for_calibrated_and_large_for_overconfident_scores() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((20000, 1))
    y = (rng.random((20000, 1)) < p).astype(np.float32)
    [good] = expected_calibration_error(p, y)
    assert good is not None and good < 0.02
    bad_p, bad_y = _overconfident(5000, 1)
    [bad] = expected_calibration_error(bad_p, bad_y)
    assert bad is not None and bad > 0.2
    # Masked rows do not count; a column with no rows has no ECE.
    assert expected_calibration_error(p, y, np.zeros_like(y)) == [None]


def test_platt_lowers_ece_on_new_data() -> None:
    val_p, val_y = _overconfident(5000, 2)
    test_p, test_y = _overconfident(5000, 3)
    cal = platt_calibration(val_p, val_y, np.ones_like(val_y), ["x"])
    [before] = expected_calibration_error(test_p, test_y)
    [after] = expected_calibration_error(apply_platt(test_p, cal, ["x"]), test_y)
    assert before is not None and after is not None
    assert after < 0.03 < before


def test_thresholds_chosen_on_calibrated_probabilities_work_as_served() -> None:
    val_p, val_y = _overconfident(5000, 4)
    test_p, test_y = _overconfident(5000, 5)
    mask = np.ones_like(val_y)
    cal = platt_calibration(val_p, val_y, mask, ["x"])
    served = apply_platt(test_p, cal, ["x"])  # what the pipeline thresholds
    right = operating_points(apply_platt(val_p, cal, ["x"]), val_y, mask, ["x"])
    perf = operating_point_performance(served, test_y, np.ones_like(test_y), right, ["x"])
    balanced = perf["x"]["balanced"]
    assert balanced["sensitivity"] == pytest.approx(0.84, abs=0.08)
    assert balanced["specificity"] == pytest.approx(0.84, abs=0.08)
    assert perf["x"]["high sensitivity"]["sensitivity"] >= 0.85  # type: ignore[operator]
    assert perf["x"]["high specificity"]["specificity"] >= 0.85  # type: ignore[operator]
    # Thresholds chosen on the raw scores but applied to calibrated ones (the old bug)
    # sit above almost every calibrated probability.
    wrong = operating_points(val_p, val_y, mask, ["x"])
    stale = operating_point_performance(served, test_y, np.ones_like(test_y), wrong, ["x"])
    assert stale["x"]["balanced"]["sensitivity"] < 0.3  # type: ignore[operator]
