"""Free-response ROC for lesion detection.

Each image has zero or more true lesions and the detector gives scored marks.
A mark that hits a lesion is a true positive (several hits on one lesion count
once, at the highest score); every other mark is a false positive. The FROC
curve plots lesion sensitivity against false positives per image; the CPM
(Competition Performance Metric, as in LUNA16 and ANODE09) averages the
sensitivity at 1/8, 1/4, 1/2, 1, 2, 4 and 8 false positives per image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray

CPM_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Mark:
    """One detection: its score and the lesion it hits (None for a false positive)."""

    score: float
    lesion: str | None = None


@dataclass(frozen=True)
class FrocCurve:
    """Sensitivity against false positives per image, thresholds descending."""

    fp_per_image: FloatArray
    sensitivity: FloatArray
    thresholds: FloatArray
    n_images: int
    n_lesions: int

    def sensitivity_at(self, fp_rate: float) -> float:
        """Highest sensitivity reached with at most ``fp_rate`` false positives per image."""
        ok = self.fp_per_image <= fp_rate + 1e-12
        return float(self.sensitivity[ok].max()) if ok.any() else 0.0


def match_detections(
    boxes: Sequence[Sequence[float]],
    scores: Sequence[float],
    lesions: Mapping[str, Sequence[float]],
    *,
    criterion: str = "center",
    iou_threshold: float = 0.3,
) -> list[Mark]:
    """Turn one image's detections into :class:`Mark`\\ s against its true lesions.

    Boxes are ``[x0, y0, x1, y1]`` in pixels (as in a phantom's
    ``ground_truth.json``). With ``criterion="center"`` a detection hits a
    lesion when its centre lies inside the lesion's box (the usual FROC rule
    for nodules); with ``"iou"`` when their IoU reaches ``iou_threshold``.
    A detection hitting several lesions is credited to the one with the
    highest IoU.
    """
    if len(boxes) != len(scores):
        raise EvaluationError(f"{len(boxes)} boxes but {len(scores)} scores")
    if criterion not in ("center", "iou"):
        raise EvaluationError(f"unknown hit criterion {criterion!r}: use center or iou")
    marks = []
    for box, score in zip(boxes, scores, strict=True):
        x0, y0, x1, y1 = (float(v) for v in box)
        best, best_iou = None, -1.0
        for lesion_id, lesion in lesions.items():
            lx0, ly0, lx1, ly1 = (float(v) for v in lesion)
            iw = max(0.0, min(x1, lx1) - max(x0, lx0))
            ih = max(0.0, min(y1, ly1) - max(y0, ly0))
            inter = iw * ih
            union = (x1 - x0) * (y1 - y0) + (lx1 - lx0) * (ly1 - ly0) - inter
            overlap = inter / union if union > 0 else 0.0
            if criterion == "center":
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                hit = lx0 <= cx <= lx1 and ly0 <= cy <= ly1
            else:
                hit = overlap >= iou_threshold
            if hit and overlap > best_iou:
                best, best_iou = lesion_id, overlap
        marks.append(Mark(float(score), best))
    return marks


def froc_curve(marks: Sequence[Sequence[Mark]], lesions: Sequence[Sequence[str]]) -> FrocCurve:
    """Build the FROC curve from per-image marks and per-image lesion ids."""
    if len(marks) != len(lesions):
        raise EvaluationError(f"{len(marks)} images of marks but {len(lesions)} images of lesions")
    n_images = len(marks)
    if n_images == 0:
        raise EvaluationError("FROC needs at least one image")
    n_lesions = sum(len(set(ls)) for ls in lesions)
    if n_lesions == 0:
        raise EvaluationError("FROC needs at least one true lesion")
    scores: list[float] = []
    is_tp: list[bool] = []
    for image, (image_marks, image_lesions) in enumerate(zip(marks, lesions, strict=True)):
        best: dict[str, float] = {}
        known = set(image_lesions)
        for mark in image_marks:
            if mark.lesion is None:
                scores.append(mark.score)
                is_tp.append(False)
            elif mark.lesion not in known:
                raise EvaluationError(f"image {image}: mark hits unknown lesion {mark.lesion!r}")
            else:
                best[mark.lesion] = max(best.get(mark.lesion, -np.inf), mark.score)
        for score in best.values():
            scores.append(score)
            is_tp.append(True)
    s = np.asarray(scores, dtype=np.float64)
    tp = np.asarray(is_tp, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s, tp = s[order], tp[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1] if s.size else np.zeros(0, dtype=int)
    ctp = np.cumsum(tp)[last] if s.size else np.zeros(0)
    cfp = np.cumsum(~tp)[last] if s.size else np.zeros(0)
    return FrocCurve(
        fp_per_image=np.r_[0.0, cfp / n_images],
        sensitivity=np.r_[0.0, ctp / n_lesions],
        thresholds=np.r_[np.inf, s[last]] if s.size else np.array([np.inf]),
        n_images=n_images,
        n_lesions=n_lesions,
    )


def cpm_score(
    curve: FrocCurve, fp_rates: Sequence[float] = CPM_FP_RATES
) -> tuple[float, dict[float, float]]:
    """Mean sensitivity at the given false-positive rates, and each of them."""
    at = {rate: curve.sensitivity_at(rate) for rate in fp_rates}
    return float(np.mean(list(at.values()))), at


__all__ = [
    "CPM_FP_RATES",
    "FrocCurve",
    "Mark",
    "cpm_score",
    "froc_curve",
    "match_detections",
]
