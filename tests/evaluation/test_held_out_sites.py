"""Leave-one-site-out statistics: per-site figures, remedies, DeLong tests, the table."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from overread.errors import EvaluationError
from overread.evaluation.held_out_sites import (
    HeldOutCohort,
    remedies_table,
    summarise,
)


def _cohort(seed: int = 0) -> HeldOutCohort:
    rng = np.random.default_rng(seed)
    n = 240
    sites = np.array(["A", "B", "C"])[rng.integers(0, 3, n)]
    truth = (rng.random(n) < 0.4).astype(float)
    patients = np.array([f"p{i // 2}" for i in range(n)])
    scores = 1 / (1 + np.exp(-(1.5 * truth - 0.7 + rng.normal(0, 1, n))))
    cohort = HeldOutCohort("Edema", truth, sites, patients)
    cohort.add("none", scores, np.full(n, 0.5))
    return cohort


def test_per_site_figures_match_an_independent_computation() -> None:
    cohort = _cohort()
    summary = summarise(cohort, resamples=50)
    assert set(summary["sites"]) == {"A", "B", "C"}
    for site, entry in summary["sites"].items():
        rows = cohort.sites == site
        y, s = cohort.truth[rows], cohort.remedies["none"].scores[rows]
        assert entry["n"] == rows.sum()
        assert entry["auc"] == pytest.approx(roc_auc_score(y, s))
        lo, hi = entry["auc_ci"]
        assert lo < entry["auc"] < hi
        assert entry["sensitivity"] == pytest.approx(np.mean(s[y == 1] >= 0.5))
        assert 0.0 <= entry["ece"] <= 1.0
        lo, hi = entry["sensitivity_ci"]
        assert lo <= entry["sensitivity"] <= hi


def test_a_remedy_that_changes_nothing_has_p_one_and_a_better_one_a_small_p() -> None:
    cohort = _cohort()
    base = cohort.remedies["none"]
    cohort.add("tta", base.scores.copy(), base.thresholds)
    # A remedy that sees the truth: far better ranking.
    better = np.clip(0.6 * base.scores + 0.4 * cohort.truth, 0, 1)
    cohort.add("all", better, base.thresholds)
    summary = summarise(cohort, resamples=20)
    assert summary["remedies"]["tta"]["delong_p"] == 1.0
    assert summary["remedies"]["tta"]["auc_difference"] == 0.0
    assert summary["remedies"]["all"]["auc_difference"] > 0.05
    assert summary["remedies"]["all"]["delong_p"] < 0.001
    assert "delong_p" not in summary["remedies"]["none"]


def test_table_lists_every_remedy_and_those_not_run() -> None:
    cohort = _cohort()
    cohort.add("per_site_calibration", cohort.remedies["none"].scores ** 0.8, np.full(240, 0.45))
    table = remedies_table(summarise(cohort, resamples=10), missing=["harmonisation"])
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")]
    assert rows[:3] == ["remedy", "none", "harmonisation"]
    assert "| harmonisation | not run |" in table
    assert "per-site calibration" in rows
    assert {"A", "B", "C"} <= set(rows)


def test_mismatched_lengths_are_refused() -> None:
    cohort = _cohort()
    with pytest.raises(EvaluationError):
        cohort.add("tta", np.zeros(3), np.zeros(3))
    with pytest.raises(EvaluationError, match="'none'"):
        summarise(HeldOutCohort("x", np.zeros(2), np.array(["a", "b"]), np.array(["1", "2"])))
