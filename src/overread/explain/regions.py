"""The regions a heatmap points at: its peak, its top region, that region's outline and box.

One rule throughout (overlays, mask IoU, the trust score): the **top region** of a
map is every pixel at or above :data:`TOP_FRACTION` (one half) of the map's
maximum; an all-zero map has none. The **peak** is the maximum pixel; where
several pixels share the maximum (occlusion maps are piecewise constant), the tied
pixel nearest their centroid. The **box** drawn on overlays is the bounding box of
the top region's connected part (8-connectivity) that contains the peak: where to
look first.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

#: A pixel is in the top region when it reaches this fraction of the map's maximum.
TOP_FRACTION = 0.5


def peak(heatmap: np.ndarray) -> tuple[int, int] | None:
    """``(row, col)`` of the map's maximum (see module docstring); None for an all-zero map."""
    values = np.asarray(heatmap, dtype=np.float32)
    highest = float(values.max()) if values.size else 0.0
    if not np.isfinite(highest) or highest <= 0.0:
        return None
    rows, cols = np.nonzero(values >= highest)
    if rows.size == 1:
        return int(rows[0]), int(cols[0])
    nearest = int(np.argmin((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2))
    return int(rows[nearest]), int(cols[nearest])


def top_region(heatmap: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """Boolean mask of the pixels at or above ``fraction`` of the maximum."""
    values = np.asarray(heatmap, dtype=np.float32)
    highest = float(values.max()) if values.size else 0.0
    if not np.isfinite(highest) or highest <= 0.0:
        return np.zeros(values.shape, dtype=bool)
    result: np.ndarray = values >= fraction * highest
    return result


def peak_region(heatmap: np.ndarray, fraction: float = TOP_FRACTION) -> np.ndarray:
    """The connected part (8-connectivity) of the top region that holds the peak."""
    region = top_region(heatmap, fraction)
    where = peak(heatmap)
    if where is None:
        return region
    labelled, _ = ndimage.label(region, structure=np.ones((3, 3), dtype=bool))
    result: np.ndarray = labelled == labelled[where]
    return result


def region_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(top, left, bottom, right)`` (inclusive) of a boolean mask; None when empty."""
    rows = np.flatnonzero(np.any(mask, axis=1))
    cols = np.flatnonzero(np.any(mask, axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])


def region_outline(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """The boundary pixels of a boolean mask, ``width`` pixels thick (inside the mask)."""
    region = np.asarray(mask, dtype=bool)
    inner = ndimage.binary_erosion(region, iterations=max(1, width), border_value=0)
    result: np.ndarray = region & ~inner
    return result


__all__ = ["TOP_FRACTION", "peak", "peak_region", "region_box", "region_outline", "top_region"]
