"""DeLong's nonparametric AUC variance, confidence interval and tests.

DeLong, DeLong & Clarke-Pearson (Biometrics 1988) write the AUC as a mean of
"structural components" (one per positive, one per negative) whose sample
covariances give the covariance matrix of several correlated AUCs measured on
the same cases. Sun & Xu (IEEE SPL 2014) showed the components come from
mid-ranks, so the whole computation is O(n log n) rather than O(n_pos x n_neg).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata
from scipy.stats import t as student_t

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray, binary_truth_and_score


@dataclass(frozen=True)
class AucEstimate:
    """An AUC with its DeLong standard error and confidence interval."""

    auc: float
    se: float
    ci: tuple[float, float]
    n_positive: int
    n_negative: int


@dataclass(frozen=True)
class AucComparison:
    """The difference of two AUCs (a - b) with its interval, statistic and two-sided p."""

    auc_a: float
    auc_b: float
    difference: float
    se: float
    ci: tuple[float, float]
    z: float
    p: float
    method: str
    df: float | None = None

    def as_dict(self) -> dict[str, object]:
        """The JSON form used by ``overread stats delong --json``.

        ``z`` is the test statistic; for the unpaired test it is referred to a
        t distribution with ``df`` degrees of freedom.
        """
        out: dict[str, object] = {
            "auc_a": self.auc_a,
            "auc_b": self.auc_b,
            "difference": self.difference,
            "se": self.se,
            "ci": list(self.ci),
            "z": self.z,
            "p": self.p,
            "method": self.method,
        }
        if self.df is not None:
            out["df"] = self.df
        return out


def structural_components(
    y_true: ArrayLike, scores: ArrayLike
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """AUCs and DeLong's structural components for one or more score rows.

    Parameters
    ----------
    y_true
        0/1 truth, length n.
    scores
        Shape (n,) or (k, n): k scores for the same n cases.

    Returns
    -------
    aucs, v10, v01
        ``aucs`` (k,), ``v10`` (k, n_pos) the components of the positives and
        ``v01`` (k, n_neg) those of the negatives (Sun & Xu 2014, eq. 5-7).
    """
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    positive, _ = binary_truth_and_score(y_true, s[0])
    for row in s[1:]:
        binary_truth_and_score(y_true, row)
    m = int(positive.sum())
    n = positive.size - m
    x = s[:, positive]
    y = s[:, ~positive]
    tz = rankdata(s, axis=1)
    tx = rankdata(x, axis=1)
    ty = rankdata(y, axis=1)
    v10 = (tz[:, positive] - tx) / n
    v01 = 1.0 - (tz[:, ~positive] - ty) / m
    aucs = v10.mean(axis=1)
    return aucs, v10, v01


def delong_covariance(y_true: ArrayLike, scores: ArrayLike) -> tuple[FloatArray, FloatArray]:
    """AUCs (k,) and their DeLong covariance matrix (k, k).

    The covariance is NaN when there are fewer than two positives or two
    negatives: it cannot be estimated, and zero would claim certainty.
    """
    aucs, v10, v01 = structural_components(y_true, scores)
    m = v10.shape[1]
    n = v01.shape[1]
    if m < 2 or n < 2:
        # The sample covariances need two cases of each class; report "unknown".
        return aucs, np.full((aucs.size, aucs.size), np.nan)
    s10 = np.atleast_2d(np.cov(v10))
    s01 = np.atleast_2d(np.cov(v01))
    return aucs, s10 / m + s01 / n


def delong_ci(y_true: ArrayLike, y_score: ArrayLike, confidence: float = 0.95) -> AucEstimate:
    """AUC with DeLong's standard error and a Wald interval clipped to [0, 1].

    This is what pROC's ``ci.auc(method = "delong")`` reports.
    """
    positive, _ = binary_truth_and_score(y_true, y_score)
    aucs, cov = delong_covariance(y_true, y_score)
    auc = float(aucs[0])
    se = float(np.sqrt(max(cov[0, 0], 0.0))) if np.isfinite(cov[0, 0]) else float("nan")
    z = float(norm.ppf(0.5 + confidence / 2.0))
    if np.isnan(se):
        lo = hi = float("nan")
    else:
        lo, hi = max(0.0, auc - z * se), min(1.0, auc + z * se)
    return AucEstimate(auc, se, (lo, hi), int(positive.sum()), int((~positive).sum()))


def clustered_delong_ci(
    y_true: ArrayLike, y_score: ArrayLike, cluster_ids: ArrayLike, confidence: float = 0.95
) -> AucEstimate:
    """AUC CI when cases come in clusters (several images per patient).

    Obuchowski (Biometrics 1997) sums DeLong's structural components within
    each cluster and takes their between-cluster variances and covariance:
    Var = S10/M + S01/N + 2 S11/(M N), with M positives and N negatives in all.
    With one case per cluster it is exactly DeLong's variance.
    """
    positive, _ = binary_truth_and_score(y_true, y_score)
    clusters = np.asarray(cluster_ids)
    if clusters.shape != positive.shape:
        raise EvaluationError(f"{clusters.size} cluster ids for {positive.size} cases")
    _, cluster = np.unique(clusters.astype(str), return_inverse=True)
    n_clusters = int(cluster.max()) + 1
    aucs, v10, v01 = structural_components(positive, y_score)
    auc = float(aucs[0])
    big_m, big_n = int(positive.sum()), int((~positive).sum())
    m_i = np.bincount(cluster[positive], minlength=n_clusters).astype(np.float64)
    n_i = np.bincount(cluster[~positive], minlength=n_clusters).astype(np.float64)
    # Sum of components within each cluster, scaled back to U-statistic counts per case.
    v10_i = np.bincount(cluster[positive], weights=v10[0], minlength=n_clusters)
    v01_i = np.bincount(cluster[~positive], weights=v01[0], minlength=n_clusters)
    i10 = int((m_i > 0).sum())
    i01 = int((n_i > 0).sum())
    if i10 < 2 or i01 < 2:
        nan = float("nan")
        return AucEstimate(auc, nan, (nan, nan), big_m, big_n)
    d10 = v10_i - m_i * auc
    d01 = v01_i - n_i * auc
    s10 = i10 / ((i10 - 1) * big_m) * float(np.sum(d10**2))
    s01 = i01 / ((i01 - 1) * big_n) * float(np.sum(d01**2))
    s11 = n_clusters / (n_clusters - 1) * float(np.sum(d10 * d01))
    var = s10 / big_m + s01 / big_n + 2.0 * s11 / (big_m * big_n)
    se = float(np.sqrt(max(var, 0.0)))
    z = float(norm.ppf(0.5 + confidence / 2.0))
    return AucEstimate(auc, se, (max(0.0, auc - z * se), min(1.0, auc + z * se)), big_m, big_n)


def _comparison(
    auc_a: float, auc_b: float, variance: float, confidence: float, method: str
) -> AucComparison:
    diff = auc_a - auc_b
    zq = float(norm.ppf(0.5 + confidence / 2.0))
    if not np.isfinite(variance):
        nan = float("nan")
        return AucComparison(
            auc_a,
            auc_b,
            diff,
            nan,
            (nan, nan),
            nan,
            nan,
            method + " (variance not estimable: fewer than 2 cases of a class)",
        )
    se = float(np.sqrt(max(variance, 0.0)))
    if se == 0.0:
        # Identical score orderings: no evidence of any difference.
        z, p = (0.0, 1.0) if diff == 0.0 else (float(np.sign(diff) * np.inf), 0.0)
    else:
        z = diff / se
        p = float(2.0 * norm.sf(abs(z)))
    return AucComparison(auc_a, auc_b, diff, se, (diff - zq * se, diff + zq * se), z, p, method)


def delong_test(
    y_true: ArrayLike, score_a: ArrayLike, score_b: ArrayLike, confidence: float = 0.95
) -> AucComparison:
    """DeLong's test for two correlated AUCs (two scores on the same cases).

    Matches pROC's ``roc.test(method = "delong", paired = TRUE)``.
    """
    sa = np.asarray(score_a, dtype=np.float64).ravel()
    sb = np.asarray(score_b, dtype=np.float64).ravel()
    if sa.shape != sb.shape:
        raise EvaluationError("paired DeLong test needs both scores on the same cases")
    aucs, cov = delong_covariance(y_true, np.vstack([sa, sb]))
    variance = float(cov[0, 0] + cov[1, 1] - 2.0 * cov[0, 1])
    return _comparison(float(aucs[0]), float(aucs[1]), variance, confidence, "delong-paired")


def unpaired_auc_test(
    y_true_a: ArrayLike,
    score_a: ArrayLike,
    y_true_b: ArrayLike,
    score_b: ArrayLike,
    confidence: float = 0.95,
) -> AucComparison:
    """Compare AUCs measured on two independent sets of cases.

    The variances add; like pROC's ``roc.test(method = "delong", paired =
    FALSE)`` the statistic is referred to a t distribution with
    Welch-Satterthwaite degrees of freedom,
    df = (Va + Vb)^2 / (Va^2 / (Na - 1) + Vb^2 / (Nb - 1)) with N the number of
    cases in each set.
    """
    a = delong_ci(y_true_a, score_a)
    b = delong_ci(y_true_b, score_b)
    va, vb = a.se**2, b.se**2
    diff = a.auc - b.auc
    na, nb = a.n_positive + a.n_negative, b.n_positive + b.n_negative
    if not (np.isfinite(va) and np.isfinite(vb)) or va + vb == 0.0:
        return _comparison(a.auc, b.auc, va + vb, confidence, "delong-unpaired")
    se = float(np.sqrt(va + vb))
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    t = diff / se
    p = float(2.0 * student_t.sf(abs(t), df))
    tq = float(student_t.ppf(0.5 + confidence / 2.0, df))
    return AucComparison(
        a.auc,
        b.auc,
        diff,
        se,
        (diff - tq * se, diff + tq * se),
        t,
        p,
        "delong-unpaired",
        df=float(df),
    )


__all__ = [
    "AucComparison",
    "AucEstimate",
    "clustered_delong_ci",
    "delong_ci",
    "delong_covariance",
    "delong_test",
    "structural_components",
    "unpaired_auc_test",
]
