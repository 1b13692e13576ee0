"""Fixtures for the evaluation tests: pROC's aSAH data and a multi-label cohort."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def asah() -> pd.DataFrame:
    """pROC's aSAH data (113 patients, 41 poor outcomes), Robin et al. 2011."""
    return pd.read_csv(DATA / "asah.csv")


def brute_force_delong(truth: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong et al. (1988) written from the definition with the m x n comparison matrix."""
    pos = truth == 1
    k = scores.shape[0]
    v10, v01 = [], []
    for r in range(k):
        x = scores[r, pos][:, None]
        y = scores[r, ~pos][None, :]
        psi = (x > y).astype(float) + 0.5 * (x == y)
        v10.append(psi.mean(axis=1))
        v01.append(psi.mean(axis=0))
    v10a, v01a = np.array(v10), np.array(v01)
    m, n = v10a.shape[1], v01a.shape[1]
    aucs = v10a.mean(axis=1)
    s10 = np.array(
        [
            [np.sum((v10a[i] - aucs[i]) * (v10a[j] - aucs[j])) / (m - 1) for j in range(k)]
            for i in range(k)
        ]
    )
    s01 = np.array(
        [
            [np.sum((v01a[i] - aucs[i]) * (v01a[j] - aucs[j])) / (n - 1) for j in range(k)]
            for i in range(k)
        ]
    )
    return aucs, s10 / m + s01 / n


@pytest.fixture(scope="session")
def delong_by_definition():
    """The O(m x n) DeLong reference, as a fixture so test modules need no imports."""
    return brute_force_delong
