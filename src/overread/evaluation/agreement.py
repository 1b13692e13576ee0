"""Reader comparison and agreement statistics.

McNemar's test compares two readers (or a reader and a model) on the same
cases; Cohen's and Fleiss' kappa measure agreement on categories beyond
chance; the intraclass correlation (Shrout & Fleiss 1979) measures agreement
on continuous ratings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import binom, chi2, f, norm

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's test on the discordant pairs b (A yes, B no) and c (A no, B yes)."""

    statistic: float
    p: float
    b: int
    c: int
    method: str

    def as_dict(self) -> dict[str, object]:
        return {
            "statistic": self.statistic,
            "p": self.p,
            "b": self.b,
            "c": self.c,
            "method": self.method,
        }


def mcnemar(table: ArrayLike, *, exact: bool = True, correction: bool = True) -> McNemarResult:
    """McNemar's test on a 2x2 table of paired outcomes.

    ``exact`` uses the binomial distribution of b given b + c (two-sided,
    doubled one tail, capped at 1; the statistic is min(b, c)); otherwise the
    chi-square statistic (|b - c| - 1)^2 / (b + c) with Edwards' continuity
    correction, or (b - c)^2 / (b + c) without.
    """
    t = np.asarray(table, dtype=np.float64)
    if t.shape != (2, 2) or (t < 0).any() or (t != np.round(t)).any():
        raise EvaluationError("McNemar's test needs a 2x2 table of non-negative counts")
    b, c = int(t[0, 1]), int(t[1, 0])
    n = b + c
    if exact:
        p = 1.0 if n == 0 else float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))
        return McNemarResult(float(min(b, c)), p, b, c, "exact binomial")
    if n == 0:
        # No discordant pairs: no evidence of a difference (the chi-square is 0/0).
        return McNemarResult(0.0, 1.0, b, c, "chi-square, no discordant pairs")
    diff = abs(b - c) - (1.0 if correction else 0.0)
    stat = diff**2 / n  # as R's mcnemar.test and statsmodels, even when b == c
    method = "chi-square, continuity corrected" if correction else "chi-square"
    return McNemarResult(stat, float(chi2.sf(stat, 1)), b, c, method)


def paired_table(a: ArrayLike, b: ArrayLike) -> FloatArray:
    """2x2 table of two paired binary outcomes: rows A 1/0, columns B 1/0."""
    x = np.asarray(a, dtype=np.float64).ravel()
    y = np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise EvaluationError("paired outcomes must have the same length")
    if not (np.isin(x, (0, 1)).all() and np.isin(y, (0, 1)).all()):
        raise EvaluationError("paired outcomes must be 0/1 without missing values")
    return np.array(
        [
            [np.sum((x == 1) & (y == 1)), np.sum((x == 1) & (y == 0))],
            [np.sum((x == 0) & (y == 1)), np.sum((x == 0) & (y == 0))],
        ],
        dtype=np.float64,
    )


class KappaWeights(StrEnum):
    """Disagreement weighting for ordered categories."""

    NONE = "none"
    LINEAR = "linear"
    QUADRATIC = "quadratic"


@dataclass(frozen=True)
class KappaResult:
    """A kappa with its large-sample standard error and Wald interval."""

    kappa: float
    se: float
    ci: tuple[float, float]
    observed_agreement: float
    expected_agreement: float

    def as_dict(self) -> dict[str, object]:
        return {
            "kappa": self.kappa,
            "se": self.se,
            "ci": list(self.ci),
            "observed_agreement": self.observed_agreement,
            "expected_agreement": self.expected_agreement,
        }


def agreement_weights(k: int, weights: KappaWeights | str) -> FloatArray:
    """Agreement weights w_ij (1 on the diagonal) for k ordered categories."""
    try:
        weights = KappaWeights(weights)
    except ValueError:
        known = ", ".join(w.value for w in KappaWeights)
        raise EvaluationError(f"unknown kappa weights {weights!r} (known: {known})") from None
    i, j = np.indices((k, k))
    if weights is KappaWeights.NONE or k == 1:
        return np.asarray(i == j, dtype=np.float64)
    if weights is KappaWeights.LINEAR:
        linear: FloatArray = 1.0 - np.abs(i - j) / (k - 1)
        return linear
    return np.asarray(1.0 - (i - j) ** 2 / (k - 1) ** 2, dtype=np.float64)


def cohens_kappa_table(
    table: ArrayLike, weights: KappaWeights | str = KappaWeights.NONE, confidence: float = 0.95
) -> KappaResult:
    """Cohen's (weighted) kappa from a k x k table of counts (rows rater 1).

    The standard error is the large-sample one of Fleiss, Cohen & Everitt (1969).
    """
    t = np.asarray(table, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] != t.shape[1]:
        raise EvaluationError("kappa needs a square table")
    n = t.sum()
    if n == 0:
        raise EvaluationError("kappa of an empty table")
    p = t / n
    w = agreement_weights(t.shape[0], weights)
    row, col = p.sum(axis=1), p.sum(axis=0)
    po = float(np.sum(w * p))
    pe = float(np.sum(w * np.outer(row, col)))
    if pe == 1.0:
        raise EvaluationError("kappa is undefined: both raters used a single category")
    kappa = (po - pe) / (1.0 - pe)
    w_row = w @ col
    w_col = row @ w
    term = np.sum(p * (w - (w_row[:, None] + w_col[None, :]) * (1 - kappa)) ** 2)
    var = (term - (kappa - pe * (1 - kappa)) ** 2) / (n * (1 - pe) ** 2)
    se = float(np.sqrt(max(var, 0.0)))
    z = float(norm.ppf(0.5 + confidence / 2.0))
    return KappaResult(float(kappa), se, (kappa - z * se, kappa + z * se), po, pe)


def cohens_kappa(
    rater_a: ArrayLike,
    rater_b: ArrayLike,
    weights: KappaWeights | str = KappaWeights.NONE,
    categories: ArrayLike | None = None,
) -> KappaResult:
    """Cohen's kappa of two raters' category labels on the same cases.

    Categories are ordered as given in ``categories`` (default: sorted values
    seen), which matters for the weighted forms.
    """
    a = np.asarray(rater_a).ravel()
    b = np.asarray(rater_b).ravel()
    if a.shape != b.shape or a.size == 0:
        raise EvaluationError("kappa needs two non-empty rating arrays of equal length")
    cats = np.unique(np.r_[a, b]) if categories is None else np.asarray(categories)
    lookup = {v: i for i, v in enumerate(cats.tolist())}
    try:
        ia = np.array([lookup[v] for v in a.tolist()])
        ib = np.array([lookup[v] for v in b.tolist()])
    except KeyError as exc:
        raise EvaluationError(f"rating {exc.args[0]!r} is not among the categories") from None
    table = np.zeros((cats.size, cats.size))
    np.add.at(table, (ia, ib), 1)
    return cohens_kappa_table(table, weights)


def fleiss_kappa(counts: ArrayLike) -> float:
    """Fleiss' kappa (1971) from an (n subjects x k categories) table of rater counts.

    Every subject must be rated by the same number of raters.
    """
    t = np.asarray(counts, dtype=np.float64)
    if t.ndim != 2 or t.shape[0] == 0:
        raise EvaluationError("Fleiss' kappa needs a subjects x categories table")
    raters = t.sum(axis=1)
    if not np.allclose(raters, raters[0]) or raters[0] < 2:
        raise EvaluationError("Fleiss' kappa needs the same number (>= 2) of raters per subject")
    m = raters[0]
    p_subject = (np.sum(t * t, axis=1) - m) / (m * (m - 1))
    p_category = t.sum(axis=0) / t.sum()
    p_bar = p_subject.mean()
    p_e = float(np.sum(p_category**2))
    if p_e == 1.0:
        raise EvaluationError("Fleiss' kappa is undefined: every rating is the same category")
    return float((p_bar - p_e) / (1.0 - p_e))


class IccForm(StrEnum):
    """Shrout & Fleiss (1979) forms: single rater (x,1) or mean of k raters (x,k)."""

    ICC1 = "ICC(1,1)"
    ICC2 = "ICC(2,1)"
    ICC3 = "ICC(3,1)"
    ICC1K = "ICC(1,k)"
    ICC2K = "ICC(2,k)"
    ICC3K = "ICC(3,k)"


@dataclass(frozen=True)
class IccResult:
    """One ICC form with its F-based confidence interval (McGraw & Wong 1996)."""

    form: IccForm
    value: float
    ci: tuple[float, float]


def icc(ratings: ArrayLike, confidence: float = 0.95) -> dict[IccForm, IccResult]:
    """All six Shrout-Fleiss ICCs of an (n targets x k raters) matrix.

    ICC(1,*) treats raters as random and different per target (one-way);
    ICC(2,*) raters random, the same for all targets (two-way random, absolute
    agreement); ICC(3,*) the raters fixed (two-way mixed, consistency).
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 2:
        raise EvaluationError("ICC needs at least 2 targets x 2 raters")
    if np.isnan(x).any():
        raise EvaluationError("ICC needs a complete targets x raters matrix (no missing ratings)")
    n, k = x.shape
    grand = x.mean()
    ss_rows = k * np.sum((x.mean(axis=1) - grand) ** 2)
    ss_cols = n * np.sum((x.mean(axis=0) - grand) ** 2)
    ss_total = np.sum((x - grand) ** 2)
    ss_error = ss_total - ss_rows - ss_cols
    msr = ss_rows / (n - 1)
    msc = ss_cols / (k - 1)
    mse = ss_error / ((n - 1) * (k - 1))
    msw = (ss_cols + ss_error) / (n * (k - 1))
    alpha = 1.0 - confidence
    out: dict[IccForm, IccResult] = {}

    def add(form: IccForm, value: float, ci: tuple[float, float]) -> None:
        out[form] = IccResult(form, float(value), (float(ci[0]), float(ci[1])))

    # One-way random.
    f1 = msr / msw
    fl = f1 / f.ppf(1 - alpha / 2, n - 1, n * (k - 1))
    fu = f1 * f.ppf(1 - alpha / 2, n * (k - 1), n - 1)
    add(
        IccForm.ICC1,
        (msr - msw) / (msr + (k - 1) * msw),
        ((fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1)),
    )
    add(IccForm.ICC1K, (msr - msw) / msr, (1 - 1 / fl, 1 - 1 / fu))
    # Two-way mixed, consistency.
    f3 = msr / mse
    fl = f3 / f.ppf(1 - alpha / 2, n - 1, (n - 1) * (k - 1))
    fu = f3 * f.ppf(1 - alpha / 2, (n - 1) * (k - 1), n - 1)
    add(
        IccForm.ICC3,
        (msr - mse) / (msr + (k - 1) * mse),
        ((fl - 1) / (fl + k - 1), (fu - 1) / (fu + k - 1)),
    )
    add(IccForm.ICC3K, (msr - mse) / msr, (1 - 1 / fl, 1 - 1 / fu))
    # Two-way random, absolute agreement (Satterthwaite df for the interval).
    icc2 = (msr - mse) / (msr + (k - 1) * mse + k * (msc - mse) / n)
    fj = msc / mse
    vn = (k - 1) * (n - 1) * (k * icc2 * fj + n * (1 + (k - 1) * icc2) - k * icc2) ** 2
    vd = (n - 1) * k**2 * icc2**2 * fj**2 + (n * (1 + (k - 1) * icc2) - k * icc2) ** 2
    v = vn / vd
    f_up = f.ppf(1 - alpha / 2, n - 1, v)
    f_lo = f.ppf(1 - alpha / 2, v, n - 1)
    lo2 = n * (msr - f_up * mse) / (f_up * (k * msc + (k * n - k - n) * mse) + n * msr)
    hi2 = n * (f_lo * msr - mse) / (k * msc + (k * n - k - n) * mse + n * f_lo * msr)
    add(IccForm.ICC2, icc2, (lo2, hi2))
    add(
        IccForm.ICC2K,
        (msr - mse) / (msr + (msc - mse) / n),
        (lo2 * k / (1 + lo2 * (k - 1)), hi2 * k / (1 + hi2 * (k - 1))),
    )
    return {form: out[form] for form in IccForm}


__all__ = [
    "IccForm",
    "IccResult",
    "KappaResult",
    "KappaWeights",
    "McNemarResult",
    "agreement_weights",
    "cohens_kappa",
    "cohens_kappa_table",
    "fleiss_kappa",
    "icc",
    "mcnemar",
    "paired_table",
]
