"""How unsure a model is of a label, from a set of probability samples.

A sample set is ``(S, N, L)`` probabilities: ``S`` answers for each of ``N`` images
and ``L`` labels, from test-time augmentation views, Monte Carlo dropout passes or
the members of an ensemble. Each label is a yes/no question, so every measure here
is binary and in bits (0 to 1):

- **predictive entropy** ``H(p̄)``, the binary entropy of the mean probability: the
  total uncertainty, 1 bit at p̄ = 0.5, 0 at 0 or 1;
- **mutual information** (BALD; Houlsby et al. 2011) ``H(p̄) - mean_s H(p_s)``: the
  part of it that comes from the samples disagreeing (the model's, "epistemic"),
  0 when every sample says the same, whatever that is. With one sample it is 0.
"""

from __future__ import annotations

import numpy as np

from overread.errors import OverreadError

#: Probabilities are clipped this far inside (0, 1) before taking logarithms.
_EPS = 1e-12


def binary_entropy(p: np.ndarray | float) -> np.ndarray:
    """``-p log2 p - (1 - p) log2 (1 - p)``, elementwise, in bits (0 at p = 0 or 1)."""
    q = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = -(q * np.log2(np.maximum(q, _EPS)) + (1 - q) * np.log2(np.maximum(1 - q, _EPS)))
    return np.clip(terms, 0.0, 1.0)


def _samples(samples: np.ndarray) -> np.ndarray:
    s = np.asarray(samples, dtype=np.float64)
    if s.ndim < 1 or s.shape[0] < 1:
        raise OverreadError(f"need at least one probability sample, got shape {s.shape}")
    if not np.all(np.isfinite(s)) or s.min() < 0 or s.max() > 1:
        raise OverreadError("probability samples must be finite and in [0, 1]")
    return s


def predictive_entropy(samples: np.ndarray) -> np.ndarray:
    """Binary entropy of the mean over the first axis of ``samples`` (bits)."""
    return binary_entropy(_samples(samples).mean(axis=0))


def mutual_information(samples: np.ndarray) -> np.ndarray:
    """BALD: ``H(mean) - mean(H(sample))`` over the first axis (bits, >= 0)."""
    s = _samples(samples)
    expected = binary_entropy(s).mean(axis=0)
    result: np.ndarray = np.clip(binary_entropy(s.mean(axis=0)) - expected, 0.0, 1.0)
    return result


def summarise_samples(samples: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean probability, predictive entropy and mutual information of a sample set."""
    s = _samples(samples)
    mean = s.mean(axis=0)
    total = binary_entropy(mean)
    return mean, total, np.clip(total - binary_entropy(s).mean(axis=0), 0.0, 1.0)


__all__ = ["binary_entropy", "mutual_information", "predictive_entropy", "summarise_samples"]
