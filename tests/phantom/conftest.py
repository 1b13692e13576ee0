"""Small phantom cohorts shared by the phantom tests (256 x 256 to stay fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from overread.phantom import CohortSummary, generate_cohort


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory: pytest.TempPathFactory) -> CohortSummary:
    """30 studies from 4 sites, with drift at one site, written by 2 workers."""
    out = tmp_path_factory.mktemp("cohort")
    return generate_cohort(
        out,
        n=30,
        seed=11,
        rows=256,
        cols=256,
        workers=2,
        modality="mixed",
        drift_site="NGH",
        drift_date="2025-01-01",
    )


@pytest.fixture(scope="session")
def cohort_dir(small_cohort: CohortSummary) -> Path:
    return small_cohort.out_dir
