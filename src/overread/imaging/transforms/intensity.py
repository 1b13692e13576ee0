"""Intensity transforms: VOI window (PS3.3 C.11.2), MONOCHROME1 inversion
(PS3.3 C.7.6.3.1.2), normalisation and colour to grey."""

from __future__ import annotations

from typing import Any

import numpy as np

from overread.errors import ConfigError
from overread.imaging.image import FloatArray, Image
from overread.imaging.lut import apply_voi_lut_table, lut_from_item, window
from overread.imaging.transforms.base import Transform

# (center, width) in HU: the usual reading windows for CT.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
    "abdomen": (60.0, 400.0),
    "liver": (60.0, 160.0),
    "stroke": (32.0, 8.0),
    "subdural": (75.0, 215.0),
}

# ITU-R BT.601 luma weights, as PS3.3 C.7.6.3.1.2 uses for YBR_FULL.
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def _sample(values: FloatArray, limit: int = 1 << 18) -> FloatArray:
    """A deterministic strided subsample: percentiles of 9 M pixels need not see all."""
    flat = values.reshape(-1)
    step = max(1, flat.size // limit)
    sample: FloatArray = flat[::step]
    return sample


def _finite_range(values: FloatArray, lower: float, upper: float) -> tuple[float, float]:
    return sample_range(_sample(values), lower, upper)


def sample_range(sample: FloatArray, lower: float, upper: float) -> tuple[float, float]:
    """Percentiles ``lower``/``upper`` (min/max for 0/100) of the finite values of a sample."""
    sample = sample[np.isfinite(sample)]
    if sample.size == 0:
        return 0.0, 1.0
    if lower <= 0 and upper >= 100:
        return float(sample.min()), float(sample.max())
    lo, hi = np.percentile(sample, [lower, upper])
    return float(lo), float(hi)


def _scale(values: FloatArray, lo: float, hi: float, inplace: bool = False) -> FloatArray:
    """Map [lo, hi] linearly to [0, 1], clipping outside."""
    if not hi > lo:
        return np.zeros_like(values, dtype=np.float32)
    if inplace and values.dtype == np.float32:
        out = values
        out -= np.float32(lo)
    else:
        out = (values - np.float32(lo)).astype(np.float32, copy=False)
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


class ToGrayscale(Transform):
    """Convert RGB to luminance (BT.601 weights); grey images pass through."""

    name = "to_grayscale"

    def apply(self, image: Image, inplace: bool = False) -> Image:
        if not image.is_color:
            return image
        grey = np.tensordot(image.pixels, LUMA, axes=([-1], [0])).astype(np.float32)
        return image.evolve(
            grey,
            "RGB -> grey (0.299 R + 0.587 G + 0.114 B)",
            samples_per_pixel=1,
            photometric_interpretation="MONOCHROME2",
        )


class VoiWindow(Transform):
    """VOI LUT step (PS3.3 C.11.2): values of interest -> [0, 1].

    Which window, in order of precedence: an explicit ``preset``; explicit
    ``center``/``width``; the file's VOI LUT Sequence; the file's Window
    Center/Width (item ``index`` when several are given) with its VOI LUT
    Function; else the ``fallback``: ``"percentile"`` (``lower``..``upper``
    percentiles) or ``"minmax"``. Colour images are scaled by their bit depth.
    """

    name = "voi_window"

    def __init__(
        self,
        center: float | None = None,
        width: float | None = None,
        function: str | None = None,
        preset: str | None = None,
        fallback: str = "percentile",
        lower: float = 0.5,
        upper: float = 99.5,
        index: int = 0,
        use_file: bool = True,
    ) -> None:
        if preset is not None and preset not in WINDOW_PRESETS:
            raise ConfigError(
                f"unknown window preset {preset!r}; known: {', '.join(sorted(WINDOW_PRESETS))}"
            )
        if (center is None) != (width is None):
            raise ConfigError("window center and width must be given together")
        if fallback not in ("percentile", "minmax"):
            raise ConfigError(f"unknown window fallback {fallback!r}")
        self.center = None if center is None else float(center)
        self.width = None if width is None else float(width)
        self.function = function
        self.preset = preset
        self.fallback = fallback
        self.lower = float(lower)
        self.upper = float(upper)
        self.index = int(index)
        self.use_file = bool(use_file)

    def params(self) -> dict[str, Any]:
        return {
            "center": self.center,
            "width": self.width,
            "function": self.function,
            "preset": self.preset,
            "fallback": self.fallback,
            "lower": self.lower,
            "upper": self.upper,
            "index": self.index,
            "use_file": self.use_file,
        }

    def apply(self, image: Image, inplace: bool = False) -> Image:
        meta = image.metadata
        if image.is_color:
            bits = meta.bits_stored or meta.bits_allocated or 8
            top = float(2**bits - 1)
            return image.evolve(
                np.clip(image.pixels / np.float32(top), 0.0, 1.0).astype(np.float32),
                f"colour image: no VOI window, scaled by 1/{top:g}",
                value_range=(0.0, 1.0),
            )
        function = (self.function or "LINEAR").upper()
        if self.preset is not None:
            center, width = WINDOW_PRESETS[self.preset]
            return self._window(image, center, width, function, f"preset {self.preset}", inplace)
        if self.center is not None and self.width is not None:
            return self._window(image, self.center, self.width, function, "explicit", inplace)
        if self.use_file:
            ds = image.dataset
            seq = ds.get("VOILUTSequence") if ds is not None else None
            if seq:
                item = seq[min(self.index, len(seq) - 1)]
                lut = lut_from_item(item, f"{meta.source_path}: VOI LUT Sequence")
                return image.evolve(
                    apply_voi_lut_table(image.pixels, lut),
                    f"VOI LUT Sequence item {min(self.index, len(seq) - 1)} "
                    f"({len(lut.data)} entries, {lut.bits} bits) -> [0, 1]",
                    value_range=(0.0, 1.0),
                )
            centers, widths = meta.window_center, meta.window_width
            if centers and widths:
                i = min(self.index, len(centers) - 1, len(widths) - 1)
                file_function = (self.function or meta.voi_lut_function or "LINEAR").upper()
                valid = widths[i] >= 1 if file_function == "LINEAR" else widths[i] > 0
                if valid and file_function in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
                    label = f"file window {i + 1} of {len(centers)}"
                    return self._window(image, centers[i], widths[i], file_function, label, inplace)
                image = image.evolve(
                    image.pixels,
                    f"file window C={centers[i]:g} W={widths[i]:g} {file_function} unusable; "
                    f"using {self.fallback}",
                )
        lo, hi = (
            _finite_range(image.pixels, self.lower, self.upper)
            if self.fallback == "percentile"
            else _finite_range(image.pixels, 0.0, 100.0)
        )
        how = (
            f"percentiles {self.lower:g}-{self.upper:g}"
            if self.fallback == "percentile"
            else "min-max"
        )
        return image.evolve(
            _scale(image.pixels, lo, hi, inplace),
            f"VOI window from {how}: [{lo:g}, {hi:g}] -> [0, 1]",
            value_range=(0.0, 1.0),
        )

    @staticmethod
    def _window(
        image: Image, center: float, width: float, function: str, label: str, inplace: bool
    ) -> Image:
        return image.evolve(
            window(image.pixels, center, width, function, inplace=inplace),
            f"VOI window ({label}): C={center:g} W={width:g} {function} -> [0, 1]",
            value_range=(0.0, 1.0),
        )


class InvertMonochrome1(Transform):
    """MONOCHROME1 -> MONOCHROME2 (PS3.3 C.7.6.3.1.2: minimum value is white).

    Flips around the image's nominal value range (``[0, 1]`` after a window),
    or its data range when none is set, so bone is bright for every input.
    A MONOCHROME2 image whose Presentation LUT Shape (PS3.3 C.11.6) is
    ``INVERSE`` is flipped too; for MONOCHROME1, ``INVERSE`` is the required
    restatement of the same single inversion (C.8.11.6, DX), not a second one.
    """

    name = "invert_monochrome1"

    def apply(self, image: Image, inplace: bool = False) -> Image:
        meta = image.metadata
        inverse_shape = (
            meta.photometric_interpretation == "MONOCHROME2"
            and (meta.presentation_lut_shape or "").upper() == "INVERSE"
        )
        if meta.photometric_interpretation != "MONOCHROME1" and not inverse_shape:
            return image
        why = "Presentation LUT Shape INVERSE" if inverse_shape else "MONOCHROME1"
        if image.value_range is not None:
            lo, hi = image.value_range
        else:
            lo, hi = _finite_range(image.pixels, 0.0, 100.0)
        if inplace:
            inverted = np.subtract(np.float32(lo + hi), image.pixels, out=image.pixels)
        else:
            inverted = (np.float32(lo + hi) - image.pixels).astype(np.float32)
        return image.evolve(
            inverted,
            f"{why}: inverted around [{lo:g}, {hi:g}] -> MONOCHROME2",
            photometric_interpretation="MONOCHROME2",
            presentation_lut_shape="IDENTITY",
        )


class Normalize(Transform):
    """Scale to [0, 1]: ``"clip"`` (values already nominally in range),
    ``"minmax"`` or ``"percentile"`` (``lower``..``upper``)."""

    name = "normalize"

    def __init__(self, mode: str = "minmax", lower: float = 0.5, upper: float = 99.5) -> None:
        if mode not in ("clip", "minmax", "percentile"):
            raise ConfigError(f"unknown normalisation mode {mode!r}")
        self.mode = mode
        self.lower = float(lower)
        self.upper = float(upper)

    def params(self) -> dict[str, Any]:
        return {"mode": self.mode, "lower": self.lower, "upper": self.upper}

    def apply(self, image: Image, inplace: bool = False) -> Image:
        if self.mode == "clip":
            out = np.clip(image.pixels, 0.0, 1.0, out=image.pixels if inplace else None)
            nan = np.isnan(out)
            if nan.any():
                out[nan] = 0.0
            return image.evolve(out, "clip to [0, 1]", value_range=(0.0, 1.0))
        if self.mode == "minmax":
            lo, hi = _finite_range(image.pixels, 0.0, 100.0)
            how = "min-max"
        else:
            lo, hi = _finite_range(image.pixels, self.lower, self.upper)
            how = f"percentiles {self.lower:g}-{self.upper:g}"
        out = _scale(image.pixels, lo, hi, inplace)
        nan = np.isnan(out)
        if nan.any():
            out[nan] = 0.0
        return image.evolve(
            out, f"normalise {how}: [{lo:g}, {hi:g}] -> [0, 1]", value_range=(0.0, 1.0)
        )


class Rescale(Transform):
    """Map [0, 1] linearly to [``lower``, ``upper``]: the input range a model was
    trained on when it is not [0, 1] (TorchXRayVision's models expect [-1024, 1024]).
    Put it last in a chain, after the padding of ``resize``, so the padding maps too."""

    name = "rescale"

    def __init__(self, lower: float = 0.0, upper: float = 1.0) -> None:
        if not float(upper) > float(lower):
            raise ConfigError(f"rescale needs upper > lower, not [{lower}, {upper}]")
        self.lower = float(lower)
        self.upper = float(upper)

    def params(self) -> dict[str, Any]:
        return {"lower": self.lower, "upper": self.upper}

    def apply(self, image: Image, inplace: bool = False) -> Image:
        out = image.pixels if inplace else image.pixels.astype(np.float32, copy=True)
        out *= np.float32(self.upper - self.lower)
        out += np.float32(self.lower)
        return image.evolve(
            out,
            f"rescale [0, 1] -> [{self.lower:g}, {self.upper:g}]",
            value_range=(self.lower, self.upper),
        )


__all__ = [
    "LUMA",
    "WINDOW_PRESETS",
    "InvertMonochrome1",
    "Normalize",
    "Rescale",
    "ToGrayscale",
    "VoiWindow",
]
