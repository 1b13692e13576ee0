"""Predictive entropy and mutual information: known values."""

from __future__ import annotations

import numpy as np
import pytest

from overread.errors import OverreadError
from overread.explain.uncertainty import (
    binary_entropy,
    mutual_information,
    predictive_entropy,
    summarise_samples,
)


def test_binary_entropy_known_values() -> None:
    np.testing.assert_allclose(binary_entropy(np.array([0.0, 0.5, 1.0])), [0.0, 1.0, 0.0])
    # H(0.11) = 0.49992 bits; H(0.2) = 0.72193 bits.
    assert binary_entropy(0.11) == pytest.approx(0.499916, abs=1e-6)
    assert binary_entropy(0.2) == pytest.approx(0.721928, abs=1e-6)
    assert binary_entropy(0.3) == pytest.approx(binary_entropy(0.7))


def test_mutual_information_known_values() -> None:
    # Two confident samples that disagree: all the uncertainty is disagreement.
    assert mutual_information(np.array([0.0, 1.0])) == pytest.approx(1.0)
    # 0.2 and 0.8: H(0.5) - H(0.2) = 1 - 0.721928.
    assert mutual_information(np.array([0.2, 0.8])) == pytest.approx(0.278072, abs=1e-6)
    # Samples that agree carry no disagreement, however unsure each is.
    same = np.full((5, 2, 3), 0.5)
    np.testing.assert_allclose(mutual_information(same), 0.0, atol=1e-12)
    np.testing.assert_allclose(predictive_entropy(same), 1.0)


def test_one_sample_has_zero_mutual_information() -> None:
    p = np.array([[[0.1, 0.5, 0.93]]])
    mean, entropy, mi = summarise_samples(p)
    np.testing.assert_allclose(mean, p[0])
    np.testing.assert_allclose(entropy, binary_entropy(p[0]))
    np.testing.assert_allclose(mi, 0.0)


def test_mutual_information_is_bounded_by_entropy() -> None:
    rng = np.random.default_rng(0)
    samples = rng.uniform(size=(7, 50, 4))
    _, entropy, mi = summarise_samples(samples)
    assert np.all(mi >= 0) and np.all(mi <= entropy + 1e-12)


def test_samples_must_be_probabilities() -> None:
    with pytest.raises(OverreadError):
        mutual_information(np.array([0.2, 1.2]))
    with pytest.raises(OverreadError):
        predictive_entropy(np.array([np.nan]))
