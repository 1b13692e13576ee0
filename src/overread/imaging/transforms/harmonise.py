"""Harmonisation: steps that make films from different sites look alike to a model.

A model trained at one hospital meets other vendors' detectors, exposure and
processing elsewhere; each step here removes one part of that difference from
the windowed ``[0, 1]`` image before it is resized:

- :class:`HistogramMatch` maps each image's intensity quantiles onto a reference
  quantile function (Nyul and Udupa's standardisation, piecewise linear between
  the recorded levels); the reference is the mean quantile function of the
  training images (:func:`reference_quantiles`) and is recorded in the step's
  spec, so serving matches to exactly what training did.
- :class:`Clahe` is contrast-limited adaptive histogram equalisation (Zuiderveld,
  Graphics Gems IV, 1994): per-tile equalisation with the histogram clipped at
  ``clip_limit`` times its mean bin, tiles blended bilinearly. The same algorithm
  as OpenCV's ``createCLAHE``, written in numpy so that training and serving run one
  implementation without another binary dependency.
- :class:`ZScoreNormalize` standardises each image (mean 0, SD 1) and maps
  ``[-clip_sigma, clip_sigma]`` back to ``[0, 1]`` (the model's input contract).
- Per-image percentile normalisation is :class:`~.intensity.Normalize` in mode
  ``"percentile"``; ignoring the vendor's VOI LUT and window is
  :class:`~.intensity.VoiWindow` with ``use_file=False``
  (:class:`Harmonisation` chooses both).

Every step is deterministic: no randomness, no state beyond its parameters.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from overread.errors import ConfigError
from overread.imaging.image import FloatArray, Image
from overread.imaging.transforms.base import Transform, spatial_frames
from overread.imaging.transforms.intensity import _sample

#: Quantile levels (percent) a reference distribution is recorded at.
REFERENCE_LEVELS: tuple[float, ...] = (
    0.0,
    1.0,
    2.0,
    5.0,
    *range(10, 91, 10),
    95.0,
    98.0,
    99.0,
    100.0,
)


def _quantiles(values: FloatArray, levels: Sequence[float]) -> npt.NDArray[np.float64]:
    sample = _sample(values)
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return np.linspace(0.0, 1.0, len(levels))
    return np.percentile(sample, list(levels)).astype(np.float64)


def reference_quantiles(
    images: Iterable[FloatArray], levels: Sequence[float] = REFERENCE_LEVELS
) -> list[float]:
    """The mean quantile function of ``images`` at ``levels``: a histogram-matching reference.

    Raises
    ------
    ConfigError
        If no image is given.
    """
    rows = [_quantiles(np.asarray(image, dtype=np.float32), levels) for image in images]
    if not rows:
        raise ConfigError("a histogram-matching reference needs at least one image")
    mean = np.maximum.accumulate(np.mean(rows, axis=0))
    return [float(v) for v in mean]


class HistogramMatch(Transform):
    """Map the image's quantiles at ``levels`` onto ``reference`` (piecewise linear)."""

    name = "histogram_match"

    def __init__(
        self, reference: Sequence[float], levels: Sequence[float] = REFERENCE_LEVELS
    ) -> None:
        ref = [float(v) for v in reference]
        lev = [float(v) for v in levels]
        if len(ref) != len(lev) or len(ref) < 2:
            raise ConfigError(
                f"histogram matching needs one reference value per level "
                f"({len(lev)} levels, {len(ref)} values)"
            )
        if any(b < a for a, b in itertools.pairwise(ref)) or any(
            b <= a for a, b in itertools.pairwise(lev)
        ):
            raise ConfigError("histogram matching reference and levels must be increasing")
        if not all(np.isfinite(ref)) or not 0.0 <= lev[0] < lev[-1] <= 100.0:
            raise ConfigError("histogram matching levels must lie in [0, 100], values be finite")
        self.reference = ref
        self.levels = lev

    def params(self) -> dict[str, Any]:
        return {"reference": list(self.reference), "levels": list(self.levels)}

    def apply(self, image: Image, inplace: bool = False) -> Image:
        pixels = image.pixels
        source = _quantiles(pixels, self.levels)
        # Flat stretches of the source (a padded border) would make np.interp ambiguous.
        source = source + np.arange(source.size) * 1e-9
        out = np.interp(pixels, source, np.asarray(self.reference)).astype(np.float32)
        lo, hi = self.reference[0], self.reference[-1]
        return image.evolve(
            out,
            f"histogram matched to a {len(self.levels)}-level reference [{lo:.3g}, {hi:.3g}]",
            value_range=(0.0, 1.0) if lo >= 0.0 and hi <= 1.0 else None,
        )


class ZScoreNormalize(Transform):
    """Per-image z-score, then ``[-clip_sigma, clip_sigma]`` mapped linearly to ``[0, 1]``."""

    name = "zscore_normalize"

    def __init__(self, clip_sigma: float = 3.0) -> None:
        if not np.isfinite(clip_sigma) or clip_sigma <= 0:
            raise ConfigError(f"z-score clip_sigma must be > 0, not {clip_sigma}")
        self.clip_sigma = float(clip_sigma)

    def params(self) -> dict[str, Any]:
        return {"clip_sigma": self.clip_sigma}

    def apply(self, image: Image, inplace: bool = False) -> Image:
        sample = _sample(image.pixels)
        sample = sample[np.isfinite(sample)]
        mean = float(sample.mean()) if sample.size else 0.0
        sd = float(sample.std()) if sample.size else 0.0
        if not sd > 1e-6:  # flat (float rounding leaves a tiny non-zero SD)
            out = np.full_like(image.pixels, 0.5, dtype=np.float32)
        else:
            k = self.clip_sigma
            out = ((image.pixels - np.float32(mean)) / np.float32(sd * 2.0 * k) + 0.5).astype(
                np.float32
            )
            np.clip(out, 0.0, 1.0, out=out)
        return image.evolve(
            out,
            f"z-score (mean {mean:.4g}, SD {sd:.4g}), +-{self.clip_sigma:g} SD -> [0, 1]",
            value_range=(0.0, 1.0),
        )


def clahe(
    plane: FloatArray, clip_limit: float = 2.0, tiles: int = 8, bins: int = 256
) -> FloatArray:
    """CLAHE of one 2-D plane in ``[0, 1]``; returns float32 in ``[0, 1]``.

    The plane is split into ``tiles x tiles`` regions (edge-padded to a multiple);
    each region's ``bins``-bin histogram is clipped at ``clip_limit`` times its mean
    count, the excess spread evenly over all bins, and its cumulative sum is that
    region's mapping; each pixel blends the mappings of the four nearest region
    centres bilinearly.
    """
    x = np.clip(np.nan_to_num(np.asarray(plane, dtype=np.float32)), 0.0, 1.0)
    rows, cols = x.shape
    th = -(-rows // tiles)
    tw = -(-cols // tiles)
    padded = np.pad(x, ((0, th * tiles - rows), (0, tw * tiles - cols)), mode="edge")
    level = np.minimum((padded * bins).astype(np.intp), bins - 1)
    tile_of = (np.arange(th * tiles) // th)[:, None] * tiles + (np.arange(tw * tiles) // tw)[None]
    counts = np.bincount((tile_of * bins + level).ravel(), minlength=tiles * tiles * bins)
    hist = counts.reshape(tiles * tiles, bins).astype(np.float64)
    limit = max(1.0, clip_limit * th * tw / bins)
    excess = np.clip(hist - limit, 0.0, None).sum(axis=1, keepdims=True)
    hist = np.minimum(hist, limit) + excess / bins
    cdf = np.cumsum(hist, axis=1)
    luts = (cdf / cdf[:, -1:]).reshape(tiles, tiles, bins).astype(np.float32)
    # Bilinear blend between tile centres.
    fy = (np.arange(rows) + 0.5) / th - 0.5
    fx = (np.arange(cols) + 0.5) / tw - 0.5
    y0 = np.clip(np.floor(fy).astype(np.intp), 0, tiles - 1)
    x0 = np.clip(np.floor(fx).astype(np.intp), 0, tiles - 1)
    y1 = np.minimum(y0 + 1, tiles - 1)
    x1 = np.minimum(x0 + 1, tiles - 1)
    wy = np.clip(fy - y0, 0.0, 1.0).astype(np.float32)[:, None]
    wx = np.clip(fx - x0, 0.0, 1.0).astype(np.float32)[None, :]
    q = level[:rows, :cols]
    top = luts[y0[:, None], x0[None, :], q] * (1 - wx) + luts[y0[:, None], x1[None, :], q] * wx
    bottom = luts[y1[:, None], x0[None, :], q] * (1 - wx) + luts[y1[:, None], x1[None, :], q] * wx
    out: FloatArray = (top * (1 - wy) + bottom * wy).astype(np.float32)
    return out


class Clahe(Transform):
    """Contrast-limited adaptive histogram equalisation of a ``[0, 1]`` image (:func:`clahe`)."""

    name = "clahe"

    def __init__(self, clip_limit: float = 2.0, tiles: int = 8, bins: int = 256) -> None:
        if not np.isfinite(clip_limit) or clip_limit < 1.0:
            raise ConfigError(f"CLAHE clip_limit must be >= 1, not {clip_limit}")
        if not 1 <= int(tiles) <= 64 or not 16 <= int(bins) <= 4096:
            raise ConfigError(f"CLAHE needs 1-64 tiles and 16-4096 bins, not {tiles}, {bins}")
        self.clip_limit = float(clip_limit)
        self.tiles = int(tiles)
        self.bins = int(bins)

    def params(self) -> dict[str, Any]:
        return {"clip_limit": self.clip_limit, "tiles": self.tiles, "bins": self.bins}

    def apply(self, image: Image, inplace: bool = False) -> Image:
        if image.is_color:
            raise ConfigError("CLAHE works on grey images; put to_grayscale before it")
        pixels = image.pixels
        if spatial_frames(image):
            out = np.stack([clahe(p, self.clip_limit, self.tiles, self.bins) for p in pixels])
        else:
            out = clahe(pixels, self.clip_limit, self.tiles, self.bins)
        return image.evolve(
            out,
            f"CLAHE clip {self.clip_limit:g}, {self.tiles}x{self.tiles} tiles, {self.bins} bins",
            value_range=(0.0, 1.0),
        )


class IntensityStandard(StrEnum):
    """How each image's intensities are standardised after the window."""

    NONE = "none"
    PERCENTILE = "percentile"
    ZSCORE = "zscore"
    HISTOGRAM_MATCH = "histogram_match"


class VendorLut(StrEnum):
    """What is done with the vendor's VOI LUT / window in the file."""

    FILE = "file"  # apply it (the vendor's processing is part of the input)
    IGNORE = "ignore"  # percentile window of the modality values instead


@dataclass(frozen=True)
class Harmonisation:
    """Which harmonisation steps a chest X-ray chain carries.

    Parameters
    ----------
    vendor_lut
        ``file``: the file's VOI LUT / window; ``ignore``: a percentile window of
        the modality values, the same for every vendor.
    intensity
        ``none``, ``percentile`` (``lower``-``upper`` percentiles to [0, 1]),
        ``zscore`` or ``histogram_match`` (needs ``reference``).
    clahe
        Whether CLAHE follows the intensity step.
    """

    vendor_lut: VendorLut = VendorLut.FILE
    intensity: IntensityStandard = IntensityStandard.NONE
    clahe: bool = False
    clahe_clip_limit: float = 2.0
    clahe_tiles: int = 8
    lower: float = 1.0
    upper: float = 99.0
    zscore_clip_sigma: float = 3.0
    reference: tuple[float, ...] | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Harmonisation:
        """Build from plain data (a training config section); unknown keys refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown harmonisation setting(s): {', '.join(unknown)}")
        values = dict(data)
        try:
            if "vendor_lut" in values:
                values["vendor_lut"] = VendorLut(values["vendor_lut"])
            if "intensity" in values:
                values["intensity"] = IntensityStandard(values["intensity"])
        except ValueError as exc:
            raise ConfigError(f"harmonisation: {exc}") from None
        if values.get("reference") is not None:
            values["reference"] = tuple(float(v) for v in values["reference"])
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (recorded in a model package's training section)."""
        out = asdict(self)
        out["vendor_lut"] = str(self.vendor_lut)
        out["intensity"] = str(self.intensity)
        out["reference"] = list(self.reference) if self.reference is not None else None
        return out

    @property
    def active(self) -> bool:
        """True when any step differs from the plain chain."""
        return (
            self.vendor_lut is not VendorLut.FILE
            or self.intensity is not IntensityStandard.NONE
            or self.clahe
        )

    @property
    def needs_reference(self) -> bool:
        """True when histogram matching still lacks its reference."""
        return self.intensity is IntensityStandard.HISTOGRAM_MATCH and self.reference is None

    def with_reference(self, reference: Sequence[float]) -> Harmonisation:
        """A copy with the histogram-matching reference set."""
        return Harmonisation(**{**self.__dict__, "reference": tuple(float(v) for v in reference)})

    def steps(self) -> list[Transform]:
        """The steps that follow the window, inversion and clip (before any resize)."""
        from overread.imaging.transforms.intensity import Normalize

        out: list[Transform] = []
        if self.intensity is IntensityStandard.PERCENTILE:
            out.append(Normalize("percentile", self.lower, self.upper))
        elif self.intensity is IntensityStandard.ZSCORE:
            out.append(ZScoreNormalize(self.zscore_clip_sigma))
        elif self.intensity is IntensityStandard.HISTOGRAM_MATCH:
            if self.reference is None:
                raise ConfigError(
                    "histogram matching has no reference yet (it is fitted on training images)"
                )
            out.append(HistogramMatch(self.reference))
        if self.clahe:
            out.append(Clahe(self.clahe_clip_limit, self.clahe_tiles))
        return out


__all__ = [
    "REFERENCE_LEVELS",
    "Clahe",
    "Harmonisation",
    "HistogramMatch",
    "IntensityStandard",
    "VendorLut",
    "ZScoreNormalize",
    "clahe",
    "reference_quantiles",
]
