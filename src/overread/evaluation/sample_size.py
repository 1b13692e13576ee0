"""Sample size for diagnostic accuracy studies.

How many positive cases are needed to tell two sensitivities apart, to
measure an AUC to a given precision, or to show a model is not worse than a
reference by more than a margin.
"""

from __future__ import annotations

import math

from scipy.stats import norm

from overread.errors import EvaluationError


def _check(p: float, name: str) -> None:
    if not 0.0 < p < 1.0:
        raise EvaluationError(f"{name} must lie strictly between 0 and 1, got {p}")


def two_proportions(
    p1: float, p2: float, alpha: float = 0.05, power: float = 0.8, ratio: float = 1.0
) -> tuple[int, int]:
    """Cases per arm to detect p1 vs p2 with a two-sided z test (no continuity correction).

    n1 = [z_(1-a/2) sqrt(pbar qbar (1 + 1/r)) + z_(1-b) sqrt(p1 q1 + p2 q2 / r)]^2 / (p1 - p2)^2,
    n2 = r n1 (Fleiss, Levin & Paik 2003, eq. 4.14). For 85% vs 75% sensitivity at
    alpha 0.05 and power 0.8 this is 250 positives per arm.
    """
    _check(p1, "p1")
    _check(p2, "p2")
    if p1 == p2:
        raise EvaluationError("p1 and p2 are equal: no sample size detects no difference")
    za = norm.ppf(1 - alpha / 2)
    zb = norm.ppf(power)
    pbar = (p1 + ratio * p2) / (1 + ratio)
    root = za * math.sqrt(pbar * (1 - pbar) * (1 + 1 / ratio)) + zb * math.sqrt(
        p1 * (1 - p1) + p2 * (1 - p2) / ratio
    )
    n1 = math.ceil(root**2 / (p1 - p2) ** 2 - 1e-9)
    return n1, math.ceil(ratio * n1 - 1e-9)


def hanley_mcneil_se(auc: float, n_positive: int, n_negative: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC (their eq. 2, exponential Q1, Q2)."""
    _check(auc, "AUC")
    q1 = auc / (2 - auc)
    q2 = 2 * auc * auc / (1 + auc)
    var = (
        auc * (1 - auc) + (n_positive - 1) * (q1 - auc * auc) + (n_negative - 1) * (q2 - auc * auc)
    ) / (n_positive * n_negative)
    return math.sqrt(var)


def auc_precision(
    auc: float, half_width: float, prevalence: float, confidence: float = 0.95
) -> tuple[int, int]:
    """Smallest (positives, negatives) whose Hanley-McNeil CI half-width <= ``half_width``.

    Negatives follow from the prevalence of the intended population.
    """
    _check(prevalence, "prevalence")
    z = norm.ppf(0.5 + confidence / 2)
    ratio = (1 - prevalence) / prevalence

    def ok(n_pos: int) -> bool:
        n_neg = max(1, math.ceil(n_pos * ratio))
        return bool(z * hanley_mcneil_se(auc, n_pos, n_neg) <= half_width)

    hi = 2
    while not ok(hi):
        hi *= 2
        if hi > 10**8:
            raise EvaluationError("half-width not reachable with fewer than 10^8 positives")
    lo = max(1, hi // 2)
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(mid):
            hi = mid
        else:
            lo = mid + 1
    return hi, max(1, math.ceil(hi * ratio))


def non_inferiority_proportions(
    p_new: float, p_reference: float, margin: float, alpha: float = 0.025, power: float = 0.8
) -> int:
    """Cases per arm to show p_new > p_reference - margin (one-sided, level ``alpha``).

    n = (z_(1-a) + z_(1-b))^2 (p1 q1 + p2 q2) / (p1 - p2 + margin)^2 (Chow, Shao &
    Wang 2008, sec. 4.2), unpooled variance, equal arms.
    """
    _check(p_new, "p_new")
    _check(p_reference, "p_reference")
    if margin <= 0:
        raise EvaluationError("the non-inferiority margin must be positive")
    effect = p_new - p_reference + margin
    if effect <= 0:
        raise EvaluationError("p_new is already below the margin: non-inferiority cannot be shown")
    z = float(norm.ppf(1 - alpha) + norm.ppf(power))
    var = p_new * (1 - p_new) + p_reference * (1 - p_reference)
    return math.ceil(z * z * var / effect**2 - 1e-9)


__all__ = ["auc_precision", "hanley_mcneil_se", "non_inferiority_proportions", "two_proportions"]
