"""Input checks shared by the metric modules.

Every statistic in this package starts from the same two arrays (0/1 truth and
a score), and the same degenerate inputs (NaN, one class only, mismatched
lengths) must give the same clear message wherever they reach.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

from overread.errors import EvaluationError

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]


def binary_truth_and_score(
    y_true: ArrayLike, y_score: ArrayLike, *, need_both_classes: bool = True
) -> tuple[BoolArray, FloatArray]:
    """Return (truth as bool, score as float64), refusing what cannot be scored.

    Raises
    ------
    EvaluationError
        If the lengths differ, the arrays are empty, truth is not 0/1, there is a
        NaN, or (``need_both_classes``) only one class is present.
    """
    truth = np.asarray(y_true, dtype=np.float64).ravel()
    score = np.asarray(y_score, dtype=np.float64).ravel()
    if truth.shape != score.shape:
        raise EvaluationError(
            f"truth has {truth.size} values but scores have {score.size}; they must pair up"
        )
    if truth.size == 0:
        raise EvaluationError("no cases: truth and scores are empty")
    if np.isnan(truth).any():
        raise EvaluationError(f"truth has {int(np.isnan(truth).sum())} missing value(s)")
    if np.isnan(score).any():
        raise EvaluationError(f"scores have {int(np.isnan(score).sum())} NaN value(s)")
    if not np.isin(truth, (0.0, 1.0)).all():
        raise EvaluationError("truth must be 0/1")
    positive = truth == 1.0
    if need_both_classes:
        n_pos = int(positive.sum())
        if n_pos == 0 or n_pos == positive.size:
            only = "positive" if n_pos else "negative"
            raise EvaluationError(
                f"only {only} cases ({positive.size}): AUC and ROC need both classes"
            )
    return positive, score
