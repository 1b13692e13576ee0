"""Running a grey chain on an area-reduced film: the same result, a fraction of the work.

The chest chain (:func:`overread.imaging.transforms.cxr_chain`) maps every
pixel of a 3000 x 3000 film through the Modality LUT, a VOI window and a clip
before averaging it down to 224 x 224, so most of its time goes to float
passes over nine million values that the area average then throws away. The
Modality LUT (slope and intercept), a LINEAR or LINEAR_EXACT window and the
MONOCHROME1 inversion are affine, and an affine map commutes with averaging;
only the window's clip does not, and the clip is moved to the stored values:
a stored value outside the window is clamped to the stored integer nearest
the window's end before averaging. This module therefore sums the clamped
stored integers over exactly the bins of the area resize (those of
``torch.nn.functional.adaptive_avg_pool2d``), reading the film once through a
memory map, and applies the window to the 224 x 224 means.

Tolerance
    Against the full-resolution order the output differs by at most half a
    stored unit through the window (``|slope| / 2 / window width``, the
    clamp's rounding) plus float rounding; the plan is used only when that is
    at most :data:`TOLERANCE` (1e-3 of the [0, 1] range), i.e. for windows at
    least 500 stored values wide, which every 10-bit or deeper radiograph has.
    The percentile fallback window is computed from the very same strided
    sample of the same float32 values as :class:`VoiWindow` uses. Measured on
    phantom CR/DX films: model inputs within 3.5e-4, the bundled model's FP32
    probabilities within 5e-4 (tests/inference/test_reduced_read.py).

Anything else (a VOI LUT Sequence, a SIGMOID window, a chain of another shape,
a colour, compressed, big-endian or multi-frame file, an enlargement) runs the
chain as written on the fully read image. The chain's spec is unchanged: the
reduced run is how a recorded chain is executed, for training as for serving.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from overread.imaging.dicom import StoredPixels
from overread.imaging.image import FloatArray, Image
from overread.imaging.lut import apply_rescale
from overread.imaging.transforms.base import Transform
from overread.imaging.transforms.intensity import WINDOW_PRESETS as _PRESETS
from overread.imaging.transforms.intensity import (
    InvertMonochrome1,
    Normalize,
    ToGrayscale,
    VoiWindow,
)
from overread.imaging.transforms.spatial import Resize, SelectFrame

#: Largest difference from the full-resolution order that the plan accepts, in [0, 1] units.
TOLERANCE = 1e-3
#: The sample size of :func:`overread.imaging.transforms.intensity._sample`.
SAMPLE_LIMIT = 1 << 18


@dataclass(frozen=True)
class ReducedPlan:
    """A chain recognised as ``window -> (invert, clip) -> area resize`` on a grey film."""

    window: VoiWindow
    invert: bool
    clip: bool
    resize: Resize

    @classmethod
    def of(cls, transforms: list[Transform]) -> ReducedPlan | None:
        """The plan for a chain, or ``None`` when its steps are not of that shape."""
        steps = list(transforms)
        head: list[Transform] = []
        while steps and isinstance(steps[0], SelectFrame | ToGrayscale):
            head.append(steps.pop(0))
        if any(isinstance(t, SelectFrame) and t.index not in (0, -1) for t in head):
            return None
        window = steps.pop(0) if steps else None
        if not isinstance(window, VoiWindow):
            return None
        invert = clip = False
        while steps and isinstance(steps[0], InvertMonochrome1 | Normalize):
            step = steps.pop(0)
            if isinstance(step, InvertMonochrome1):
                if invert:
                    return None
                invert = True
            elif isinstance(step, Normalize) and step.mode == "clip":
                clip = True
            else:
                return None
        resize = steps[0] if len(steps) == 1 else None
        if not isinstance(resize, Resize) or resize.method != "area":
            return None
        return cls(window, invert, clip, resize)

    def run(self, stored: StoredPixels) -> Image | None:
        """The chain's output for ``stored``, or ``None`` when the plan does not apply."""
        values = stored.values
        rows, cols = int(values.shape[0]), int(values.shape[1])
        box = self.resize.geometry(rows, cols)
        if box.new_rows > rows or box.new_cols > cols:
            return None
        line = self._line(stored)
        if line is None:
            return None
        scale, offset, label = line
        if abs(scale) / 2 > TOLERANCE:  # half a stored unit through the window
            return None
        means = area_means(values, box.new_rows, box.new_cols, _window_ends(scale, offset))
        out_small = np.clip(means * scale + offset, 0.0, 1.0)
        meta = stored.metadata
        steps = [*stored.provenance, label]
        changes: dict[str, Any] = {}
        inverse_shape = (
            meta.photometric_interpretation == "MONOCHROME2"
            and (meta.presentation_lut_shape or "").upper() == "INVERSE"
        )
        if self.invert and (meta.photometric_interpretation == "MONOCHROME1" or inverse_shape):
            why = "Presentation LUT Shape INVERSE" if inverse_shape else "MONOCHROME1"
            out_small = 1.0 - out_small
            steps.append(f"{why}: inverted around [0, 1] -> MONOCHROME2")
            changes.update(
                photometric_interpretation="MONOCHROME2", presentation_lut_shape="IDENTITY"
            )
        if self.clip:
            steps.append("clip to [0, 1]")
        out_rows, out_cols = self.resize.size
        pad = self.resize.pad_value
        pixels: FloatArray = np.full((out_rows, out_cols), pad, dtype=np.float32)
        pixels[box.top : box.top + box.new_rows, box.left : box.left + box.new_cols] = out_small
        spacing = meta.pixel_spacing
        steps.append(
            f"resize {rows}x{cols} -> {box.new_rows}x{box.new_cols} (area), "
            f"pad to {out_rows}x{out_cols} at top {box.top} left {box.left} with {pad:g}"
        )
        steps.append(f"area reduction before the window (within {TOLERANCE:g} of full resolution)")
        changes.update(
            rows=out_rows,
            columns=out_cols,
            pixel_spacing=(spacing[0] / box.scale_y, spacing[1] / box.scale_x)
            if spacing is not None
            else None,
        )
        return Image(
            pixels=pixels,
            metadata=replace(meta, **changes),
            provenance=steps,
            warnings=list(stored.warnings),
            dataset=stored.dataset,
            value_range=(0.0, 1.0),
        )

    def _line(self, stored: StoredPixels) -> tuple[float, float, str] | None:
        """``y = scale * stored + offset`` before the clip, as the window would compute it."""
        w = self.window
        meta = stored.metadata
        m, b = stored.slope, stored.intercept
        function = (w.function or "LINEAR").upper()
        if w.preset is not None:
            center, width = _PRESETS[w.preset]
            return _window_line(m, b, center, width, function, f"preset {w.preset}")
        if w.center is not None and w.width is not None:
            return _window_line(m, b, w.center, w.width, function, "explicit")
        if w.use_file:
            ds = stored.dataset
            if ds is not None and ds.get("VOILUTSequence"):
                return None
            centers, widths = meta.window_center, meta.window_width
            if centers and widths:
                i = min(w.index, len(centers) - 1, len(widths) - 1)
                file_function = (w.function or meta.voi_lut_function or "LINEAR").upper()
                valid = widths[i] >= 1 if file_function == "LINEAR" else widths[i] > 0
                if not valid or file_function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
                    return None
                label = f"file window {i + 1} of {len(centers)}"
                return _window_line(m, b, centers[i], widths[i], file_function, label)
        flat = stored.values.reshape(-1)
        sample = flat[:: max(1, flat.size // SAMPLE_LIMIT)]
        lower, upper = (w.lower, w.upper) if w.fallback == "percentile" else (0.0, 100.0)
        lo, hi = integer_percentiles(sample, lower, upper, m, b)
        how = f"percentiles {w.lower:g}-{w.upper:g}" if w.fallback == "percentile" else "min-max"
        if not hi > lo:
            return None
        label = f"VOI window from {how}: [{lo:g}, {hi:g}] -> [0, 1]"
        return m / (hi - lo), (b - lo) / (hi - lo), label


def integer_percentiles(
    sample: npt.NDArray[Any], lower: float, upper: float, slope: float, intercept: float
) -> tuple[float, float]:
    """:func:`sample_range` of ``apply_rescale(sample, slope, intercept)`` from a histogram.

    The order statistics of integer stored values come from a ``bincount``
    (a sort of 262,144 floats costs more than the whole area reduction), are
    mapped through the same float32 rescale, and interpolated linearly as
    ``numpy.percentile`` does; a negative slope reverses the order.
    """
    base = int(sample.min())
    counts = np.cumsum(np.bincount((sample - base).astype(np.intp, copy=False)))
    n = int(counts[-1])

    def order(k: int) -> float:
        value = np.array([int(np.searchsorted(counts, k, side="right")) + base])
        return float(apply_rescale(value, slope, intercept)[0])

    def percentile(q: float) -> float:
        if slope < 0:
            q = 100.0 - q
        position = q / 100.0 * (n - 1)
        below = math.floor(position)
        a = order(below)
        if below + 1 >= n:
            return a
        b, t = order(below + 1), position - below
        return a + (b - a) * t if t < 0.5 else b - (b - a) * (1.0 - t)

    return percentile(lower), percentile(upper)


def _window_line(
    slope: float, intercept: float, center: float, width: float, function: str, label: str
) -> tuple[float, float, str] | None:
    """The straight line of a LINEAR or LINEAR_EXACT window (PS3.3 C.11.2.1.2) on stored values."""
    if function == "LINEAR" and width > 1:
        start, step = center - 0.5, 1.0 / (width - 1)
    elif function == "LINEAR_EXACT" and width > 0:
        start, step = center, 1.0 / width
    else:
        return None  # SIGMOID or a threshold: not affine
    text = f"VOI window ({label}): C={center:g} W={width:g} {function} -> [0, 1]"
    return slope * step, (intercept - start) * step + 0.5, text


def _window_ends(scale: float, offset: float) -> tuple[float, float]:
    """Stored values where ``scale * x + offset`` leaves [0, 1]: the window's clip points."""
    a, b = (0.0 - offset) / scale, (1.0 - offset) / scale
    return (a, b) if a <= b else (b, a)


def _bins(size: int, out: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """Start and end of each bin of ``adaptive_avg_pool`` from ``size`` to ``out``."""
    i = np.arange(out)
    return (i * size) // out, -((-(i + 1) * size) // out)


def _column_sums(
    per_row_bin: npt.NDArray[Any], col_start: npt.NDArray[np.intp], col_end: npt.NDArray[np.intp]
) -> npt.NDArray[np.int64]:
    """Sums over the column bins of ``(out_rows, cols)`` integers, through a cumulative sum."""
    out_rows, cols = per_row_bin.shape
    cumulative = np.zeros((out_rows, cols + 1), dtype=np.int64)
    np.cumsum(per_row_bin, axis=1, out=cumulative[:, 1:])
    block: npt.NDArray[np.int64] = cumulative[:, col_end] - cumulative[:, col_start]
    return block


def area_means(
    values: npt.NDArray[Any],
    out_rows: int,
    out_cols: int,
    clip: tuple[float, float] = (-math.inf, math.inf),
) -> npt.NDArray[np.float64]:
    """Means of ``values`` clamped to ``clip`` over the bins of an area resize.

    The bins are those of ``adaptive_avg_pool2d`` (row ``i`` covers
    ``floor(i H / h)`` to ``ceil((i + 1) H / h)``), so the result is what
    :class:`~overread.imaging.transforms.Resize` gives for the clamped values.
    Rows are summed in integers one band at a time (the band is clamped in a
    small buffer that stays in cache), then columns through a cumulative sum
    of the small result. The values are integers, so the clip points are
    rounded to the nearest integer: a clamped value is off by at most half a
    stored unit (counting the values at the clip points to restore them
    exactly tripled the cost, for a change far below the tolerance).
    """
    rows, cols = values.shape
    row_start, row_end = _bins(rows, out_rows)
    col_start, col_end = _bins(cols, out_cols)
    widest = int((row_end - row_start).max())
    info = np.iinfo(values.dtype)
    low, high = clip
    # A clip point outside the dtype's range clips nothing.
    clamp_low = round(low) if math.isfinite(low) and low > info.min else None
    clamp_high = round(high) if math.isfinite(high) and high < info.max else None
    if clamp_low is not None and clamp_high is not None and clamp_high < clamp_low:
        clamp_high = clamp_low
    clamped = values
    if clamp_low is not None or clamp_high is not None:
        # One call over the whole film: per-band calls cost more in overhead than work.
        # Both bounds as the stored type: numpy's fast (vectorised) clip needs both.
        bounds = (
            values.dtype.type(info.min if clamp_low is None else clamp_low),
            values.dtype.type(info.max if clamp_high is None else clamp_high),
        )
        clamped = np.clip(values, *bounds, out=np.empty_like(values))
    # Sum in the stored type when a band's sum cannot overflow it (12-bit films in
    # bands of up to 16 rows): no widening cast, several times faster.
    peak = int(info.max) if clamp_high is None else clamp_high
    if values.dtype.kind == "u" and widest * peak <= int(info.max):
        total: type[np.integer[Any]] = values.dtype.type
    elif values.dtype.kind == "u" and widest * peak < 2**32:
        total = np.uint32
    else:
        total = np.int64
    sums = np.empty((out_rows, cols), dtype=total)
    for i in range(out_rows):
        np.add.reduce(
            clamped[int(row_start[i]) : int(row_end[i])], axis=0, dtype=total, out=sums[i]
        )
    block = _column_sums(sums, col_start, col_end)
    counts = np.outer(row_end - row_start, col_end - col_start)
    means: npt.NDArray[np.float64] = block / counts
    return means


__all__ = ["TOLERANCE", "ReducedPlan", "area_means", "integer_percentiles"]
