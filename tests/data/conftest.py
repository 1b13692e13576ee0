"""Fixtures for the data tests: real label files and small hand-written ones."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TXV_DIR = REPO / ".cache" / "testdata" / "torchxrayvision"


@pytest.fixture(scope="session")
def txv_dir() -> Path:
    """The real label files from the torchxrayvision wheel (scripts/fetch_test_data.sh)."""
    if not (TXV_DIR / "chexpert_train.csv.gz").is_file():
        pytest.skip(
            f"real label files not found in {TXV_DIR}: run scripts/fetch_test_data.sh to fetch them"
        )
    return TXV_DIR
