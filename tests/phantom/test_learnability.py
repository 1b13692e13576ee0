"""The learnability check runs end to end (the real figure is in docs/phantom.md)."""

from __future__ import annotations

import pytest

from overread.phantom.learnability import check_learnability


@pytest.mark.slow
def test_learnability_check_runs_on_a_tiny_cohort() -> None:
    result = check_learnability(n=160, size=64, epochs=2, workers=1)
    assert result.n_train + result.n_test == 160
    assert result.n_test > 0
    assert result.auc and all(0.0 <= v <= 1.0 for v in result.auc.values())
    assert 0.0 <= result.mean_auc <= 1.0
