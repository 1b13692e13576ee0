"""Decoding a 3-D centre-heatmap detector's output into boxes and scores.

A centre-heatmap (CenterNet-style) detector has, per voxel of its grid, one
channel of nodule-centre probability and three channels of box size (slice, row,
column), each a sigmoid output scaled to ``max_size_mm``. Peaks are the voxels
equal to the maximum of their 3x3x3 neighbourhood (max-pooling NMS) reaching
``floor``; a peak whose centre lies inside the half-size box of a stronger kept
peak is dropped (one nodule, one mark). The box is the peak's centre plus and
minus half its predicted size. Used by the volumetric pipeline
(``postprocess = "centre-heatmap"``) and by training's evaluation, so both decode
alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage


@dataclass(frozen=True)
class Peak:
    """One detection on the network's grid: centre (voxels), size (mm), score."""

    centre: tuple[float, float, float]
    size_mm: tuple[float, float, float]
    score: float


def decode_peaks(
    heat: npt.NDArray[np.float32],
    sizes: npt.NDArray[np.float32],
    spacing_mm: Sequence[float],
    *,
    floor: float,
    max_detections: int,
    max_size_mm: float,
    min_size_mm: float = 0.0,
) -> list[Peak]:
    """Peaks of ``heat`` ``(d, h, w)`` (probabilities) with sizes from ``sizes`` ``(3, d, h, w)``.

    ``sizes`` are probabilities too: the size in mm is ``probability * max_size_mm``,
    at least ``min_size_mm``.
    """
    if heat.size == 0:
        return []
    local = ndimage.maximum_filter(heat, size=3, mode="nearest")
    candidates = np.argwhere((heat >= local) & (heat >= floor))
    if len(candidates) == 0:
        return []
    values = heat[tuple(candidates.T)]
    order = np.argsort(-values, kind="stable")
    step = np.asarray(spacing_mm, dtype=np.float64)
    kept: list[Peak] = []
    for i in order:
        if len(kept) >= max_detections:
            break
        p = candidates[i]
        size = np.maximum(sizes[(slice(None), *p)].astype(np.float64) * max_size_mm, min_size_mm)
        here = p.astype(np.float64) * step
        duplicate = any(
            np.all(np.abs(here - np.asarray(k.centre) * step) <= np.asarray(k.size_mm) / 2)
            for k in kept
        )
        if duplicate:
            continue
        kept.append(
            Peak(
                (float(p[0]), float(p[1]), float(p[2])),
                (float(size[0]), float(size[1]), float(size[2])),
                float(values[i]),
            )
        )
    return kept


__all__ = ["Peak", "decode_peaks"]
