"""Corrections for testing many labels at once.

With 14 findings, a model compared with a reader on every one will "win"
somewhere by chance; each p-value is adjusted before anything is flagged.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np
from numpy.typing import ArrayLike

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray


class Correction(StrEnum):
    """The supported family-wise (Bonferroni, Holm) and false-discovery (BH) methods."""

    BONFERRONI = "bonferroni"
    HOLM = "holm"
    BENJAMINI_HOCHBERG = "bh"


def adjust_p_values(p_values: ArrayLike, method: Correction | str = Correction.HOLM) -> FloatArray:
    """Adjusted p-values, in the input order; NaN entries stay NaN and are not counted.

    Bonferroni multiplies by m; Holm (1979) is the step-down version; Benjamini
    & Hochberg (1995) controls the false discovery rate with a step-up rule.
    """
    method = Correction(method)
    p = np.asarray(p_values, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    known = ~np.isnan(p)
    q = p[known]
    if ((q < 0) | (q > 1)).any():
        raise EvaluationError("p-values must lie in [0, 1]")
    m = q.size
    if m == 0:
        return out
    order = np.argsort(q, kind="mergesort")
    sorted_p = q[order]
    if method is Correction.BONFERRONI:
        adjusted = np.minimum(q * m, 1.0)
    elif method is Correction.HOLM:
        steps = np.maximum.accumulate((m - np.arange(m)) * sorted_p)
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(steps, 1.0)
    else:
        ranked = sorted_p * m / np.arange(1, m + 1)
        steps = np.minimum.accumulate(ranked[::-1])[::-1]
        adjusted = np.empty(m)
        adjusted[order] = np.minimum(steps, 1.0)
    out[known] = adjusted
    return out


__all__ = ["Correction", "adjust_p_values"]
