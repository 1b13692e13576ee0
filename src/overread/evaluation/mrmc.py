"""Multi-reader multi-case comparison of two or more modalities.

Obuchowski & Rockette (1995) analyse the AUCs of every (modality, reader)
pair with an ANOVA whose error covariances come from the case sampling; here
they are DeLong covariances (all readers read all cases), and the test uses
Hillis' (2007) denominator degrees of freedom. Readers and cases are both
treated as random, so the conclusion generalises to new readers and new cases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import f as f_dist
from scipy.stats import t as t_dist

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray
from overread.evaluation.delong import delong_covariance, structural_components


@dataclass(frozen=True)
class OrCovariances:
    """The OR error variance and covariances (Cov1 same reader, Cov2 same
    modality, Cov3 neither), averaged over the matching pairs."""

    var: float
    cov1: float
    cov2: float
    cov3: float


@dataclass(frozen=True)
class MrmcResult:
    """Reader-averaged AUC per modality and the random-reader random-case test."""

    auc: FloatArray
    reader_auc: FloatArray
    covariances: OrCovariances
    f_statistic: float
    df_numerator: float
    df_denominator: float
    p: float
    difference: float
    ci: tuple[float, float]

    def as_dict(self) -> dict[str, object]:
        return {
            "auc": self.auc.tolist(),
            "reader_auc": self.reader_auc.tolist(),
            "var": self.covariances.var,
            "cov1": self.covariances.cov1,
            "cov2": self.covariances.cov2,
            "cov3": self.covariances.cov3,
            "f": self.f_statistic,
            "df1": self.df_numerator,
            "df2": self.df_denominator,
            "p": self.p,
            "difference": self.difference,
            "ci": list(self.ci),
        }


def jackknife_covariance(y_true: ArrayLike, scores: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """AUCs and their case-jackknife covariance matrix.

    Leaving out positive i gives (m AUC - V10_i) / (m - 1), leaving out
    negative j gives (n AUC - V01_j) / (n - 1), so all N = m + n
    leave-one-out AUCs come from DeLong's structural components without
    refitting; Cov = (N - 1) / N * sum (theta_(k) - mean)(theta'_(k) - mean').
    """
    aucs, v10, v01 = structural_components(y_true, scores)
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        return aucs, np.full((aucs.size, aucs.size), np.nan)
    left_out = np.hstack([(m * aucs[:, None] - v10) / (m - 1), (n * aucs[:, None] - v01) / (n - 1)])
    total = m + n
    centred = left_out - left_out.mean(axis=1, keepdims=True)
    return aucs, (total - 1) / total * (centred @ centred.T)


def or_covariances(cov: FloatArray, n_modalities: int, n_readers: int) -> OrCovariances:
    """Average the (T*R x T*R) covariance matrix, ordered modality-major, into OR's terms."""
    t_idx = np.repeat(np.arange(n_modalities), n_readers)
    r_idx = np.tile(np.arange(n_readers), n_modalities)
    same_t = t_idx[:, None] == t_idx[None, :]
    same_r = r_idx[:, None] == r_idx[None, :]

    def mean(mask: np.ndarray) -> float:
        return float(cov[mask].mean()) if mask.any() else 0.0

    return OrCovariances(
        var=mean(same_t & same_r),
        cov1=mean(~same_t & same_r),
        cov2=mean(same_t & ~same_r),
        cov3=mean(~same_t & ~same_r),
    )


def obuchowski_rockette(
    y_true: ArrayLike, scores: ArrayLike, confidence: float = 0.95, covariance: str = "delong"
) -> MrmcResult:
    """Obuchowski-Rockette test of equal AUCs across modalities (Hillis df).

    Parameters
    ----------
    y_true
        0/1 truth for the n cases.
    scores
        (T modalities, R readers, n cases) ratings.
    covariance
        ``"delong"`` or ``"jackknife"`` (case jackknife, as Hillis' OR-DBM
        MRMC software uses by default).

    Returns
    -------
    MrmcResult
        F test of "all modalities have the same reader-averaged AUC"; the
        difference and CI are modality 0 minus modality 1.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 3 or s.shape[0] < 2 or s.shape[1] < 2:
        raise EvaluationError("MRMC needs scores shaped (modalities >= 2, readers >= 2, cases)")
    n_t, n_r, n = s.shape
    if covariance not in ("delong", "jackknife"):
        raise EvaluationError(f"unknown covariance method {covariance!r}: use delong or jackknife")
    estimator = delong_covariance if covariance == "delong" else jackknife_covariance
    aucs, cov = estimator(y_true, s.reshape(n_t * n_r, n))
    if not np.isfinite(cov).all():
        raise EvaluationError("MRMC needs at least two positive and two negative cases")
    theta = aucs.reshape(n_t, n_r)
    c = or_covariances(cov, n_t, n_r)
    grand = theta.mean()
    by_t = theta.mean(axis=1)
    by_r = theta.mean(axis=0)
    ms_t = n_r * np.sum((by_t - grand) ** 2) / (n_t - 1)
    ms_tr = np.sum((theta - by_t[:, None] - by_r[None, :] + grand) ** 2) / ((n_t - 1) * (n_r - 1))
    ms_den = ms_tr + n_r * max(c.cov2 - c.cov3, 0.0)
    if ms_den <= 0:
        raise EvaluationError(
            "MRMC denominator is zero: readers agree exactly and cases carry no variance"
        )
    f_stat = float(ms_t / ms_den)
    df2 = float(ms_den**2 / (ms_tr**2 / ((n_t - 1) * (n_r - 1)))) if ms_tr > 0 else float("inf")
    p = float(f_dist.sf(f_stat, n_t - 1, df2))
    diff = float(by_t[0] - by_t[1])
    se = float(np.sqrt(2.0 / n_r * ms_den))
    tq = float(t_dist.ppf(0.5 + confidence / 2.0, df2))
    return MrmcResult(
        auc=by_t,
        reader_auc=theta,
        covariances=c,
        f_statistic=f_stat,
        df_numerator=float(n_t - 1),
        df_denominator=df2,
        p=p,
        difference=diff,
        ci=(diff - tq * se, diff + tq * se),
    )


__all__ = [
    "MrmcResult",
    "OrCovariances",
    "jackknife_covariance",
    "obuchowski_rockette",
    "or_covariances",
]
