"""Explanation trust: does the heatmap point at what the model's answer rests on?

A class activation map can look convincing and still say little about the finding:
spread over the whole chest, or bright over a region the model does not need. Two
checks, both cheap enough to run on every finding a reader acts on, give a number:

* **Map concentration**: the share of the map's mass in its top region (the
  :data:`TOP_FRACTION` of its pixels where the map is highest, ties broken by
  position), rescaled so a flat map
  scores 0 and a map whose mass lies entirely in the top region scores 1:
  ``concentration = clip((share - f) / (1 - f), 0, 1)`` with ``f = TOP_FRACTION``.
* **Deletion drop** (a one-step version of the deletion metric of Petsiuk et al.,
  BMVC 2018): the top region is removed from the model input - each of its pixels
  replaced by the local mean of the pixels around the region (a box window of
  :data:`DELETION_WINDOW` of the image side, the region itself left out) - and the
  relative fall of that label's probability is
  ``drop = clip((p - p_deleted) / p, 0, 1)``. All the labels of one image are
  deleted in one batch: one extra forward pass per image.

The trust score is their geometric mean, ``trust = sqrt(concentration * drop)``, in
[0, 1]: high only when the map is focused *and* the model's answer depends on where
it is focused. It says how faithful the explanation is, not whether the finding is
right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import uniform_filter

#: The share of a map's pixels that forms its top region.
TOP_FRACTION = 0.1

#: Side of the local-mean window that fills a deleted region, as a share of the image side.
DELETION_WINDOW = 0.25

#: Maps ``(N, C, H, W)`` model inputs to calibrated probabilities ``(N, L)``.
ProbabilityFunction = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TrustEvidence:
    """The explanation trust of one label on one image.

    Attributes
    ----------
    map_concentration
        How concentrated the map is, in [0, 1] (see the module).
    deletion_drop
        Relative fall of the label's probability with the top region removed, in [0, 1].
    trust_score
        ``sqrt(map_concentration * deletion_drop)``.
    """

    map_concentration: float
    deletion_drop: float
    trust_score: float


def top_region(heatmap: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Boolean mask of the ``fraction`` of pixels where ``heatmap`` is highest.

    Exactly ``round(fraction * size)`` pixels (ties at the cut broken arbitrarily but
    deterministically, so a flat map's region is no larger than a peaked one's), of
    those only the pixels with some evidence (``> 0``): an empty map has an empty region.
    """
    _check_fraction(fraction)
    values = np.asarray(heatmap, dtype=np.float64)
    count = max(1, round(fraction * values.size))
    flat = values.ravel()
    mask = np.zeros(flat.size, dtype=bool)
    mask[np.argpartition(-flat, count - 1)[:count]] = True
    region: np.ndarray = (mask & (flat > 0)).reshape(values.shape)
    return region


def map_concentration(
    heatmap: np.ndarray, fraction: float = TOP_FRACTION, *, region: np.ndarray | None = None
) -> float:
    """Share of the map's mass in its top region, rescaled: flat 0, all in it 1.

    ``region`` is the map's :func:`top_region` when the caller has it already.
    """
    _check_fraction(fraction)
    values = np.maximum(np.asarray(heatmap, dtype=np.float64), 0.0)
    total = float(values.sum())
    if total <= 0 or not math.isfinite(total):
        return 0.0
    top = top_region(values, fraction) if region is None else region
    share = float(values[top].sum()) / total
    return float(np.clip((share - fraction) / (1.0 - fraction), 0.0, 1.0))


def delete_region(x: np.ndarray, region: np.ndarray, window: float = DELETION_WINDOW) -> np.ndarray:
    """``x`` ``(C, H, W)`` with ``region`` ``(H, W)`` filled by the local mean around it.

    Each deleted pixel gets the mean of the pixels outside the region within a box of
    ``window`` times the image side centred on it (a normalised box filter); where no
    such pixel lies that close, the mean of all pixels outside the region.
    """
    image = np.asarray(x, dtype=np.float32)
    mask = np.asarray(region, dtype=bool)
    if image.ndim != 3 or mask.shape != image.shape[-2:]:
        raise ValueError(f"region {mask.shape} does not match the input {image.shape}")
    if not mask.any():
        return image.copy()
    keep = (~mask).astype(np.float64)
    size = max(3, round(window * max(mask.shape)) | 1)
    weight = uniform_filter(keep, size=size, mode="nearest")
    result = image.copy()
    for channel in range(image.shape[0]):
        plane = image[channel].astype(np.float64)
        outside = float(plane[~mask].mean()) if keep.any() else float(plane.mean())
        local = uniform_filter(plane * keep, size=size, mode="nearest")
        filled = np.divide(local, weight, out=np.full_like(local, outside), where=weight > 1e-6)
        result[channel][mask] = filled[mask].astype(np.float32)
    return result


def deletion_drop(probability: float, deleted: float) -> float:
    """Relative fall ``(probability - deleted) / probability``, clipped to [0, 1]."""
    if not probability > 0:
        return 0.0
    return float(np.clip((probability - deleted) / probability, 0.0, 1.0))


def trust_score(concentration: float, drop: float) -> float:
    """``sqrt(concentration * drop)``: both must be high for a high score."""
    return float(math.sqrt(max(0.0, concentration) * max(0.0, drop)))


def explanation_trust(
    x: np.ndarray,
    heatmaps: np.ndarray,
    probabilities: np.ndarray,
    label_indices: Sequence[int],
    predict: ProbabilityFunction,
    *,
    fraction: float = TOP_FRACTION,
    window: float = DELETION_WINDOW,
) -> dict[int, TrustEvidence]:
    """Trust evidence for some labels of one image, with one batched extra forward pass.

    Parameters
    ----------
    x
        The model input ``(C, H, W)`` the maps and probabilities come from.
    heatmaps
        Per-label maps ``(L, H, W)`` at the input resolution.
    probabilities
        The calibrated probabilities ``(L,)`` of ``x``.
    label_indices
        The labels to assess (those a reader acts on).
    predict
        Calibrated probabilities ``(N, L)`` for a batch of inputs ``(N, C, H, W)``.
    fraction, window
        :data:`TOP_FRACTION` and :data:`DELETION_WINDOW`.

    Returns
    -------
    dict
        Label index -> :class:`TrustEvidence`.
    """
    indices = list(dict.fromkeys(int(i) for i in label_indices))
    if not indices:
        return {}
    maps = np.asarray(heatmaps)
    regions = [top_region(maps[i], fraction) for i in indices]
    deleted = np.stack([delete_region(x, region, window) for region in regions])
    after = np.asarray(predict(deleted))
    if after.shape[0] != len(indices):
        raise ValueError(f"predict returned {after.shape[0]} rows for {len(indices)} inputs")
    evidence: dict[int, TrustEvidence] = {}
    for row, index in enumerate(indices):
        concentration = map_concentration(maps[index], fraction, region=regions[row])
        drop = deletion_drop(float(probabilities[index]), float(after[row, index]))
        evidence[index] = TrustEvidence(concentration, drop, trust_score(concentration, drop))
    return evidence


def _check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise ValueError(f"the top-region fraction must lie in (0, 1), not {fraction}")


__all__ = [
    "DELETION_WINDOW",
    "TOP_FRACTION",
    "ProbabilityFunction",
    "TrustEvidence",
    "delete_region",
    "deletion_drop",
    "explanation_trust",
    "map_concentration",
    "top_region",
    "trust_score",
]
