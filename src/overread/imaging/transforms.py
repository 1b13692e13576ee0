"""Composable pixel transforms shared by training and serving.

Each transform is a small callable class ``Image -> Image`` (MONAI's array
transforms are the model) that leaves its input untouched, appends one line to
:attr:`Image.provenance`, and can describe itself with :meth:`to_spec` so a
model package records the exact chain it was trained with and
:func:`build_chain` rebuilds it at serving time.

The order of the grey-scale steps follows the presentation pipeline of PS3.4
N.2: Modality LUT (done by :func:`overread.imaging.read`) -> VOI LUT / window
(:class:`VoiWindow`, PS3.3 C.11.2) -> Presentation LUT, here the MONOCHROME1
inversion (:class:`InvertMonochrome1`, PS3.3 C.7.6.3.1.2) -> scaling and
geometry, which are outside the standard's pipeline.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from overread.errors import ConfigError, OverreadError
from overread.imaging.image import FloatArray, Image
from overread.imaging.lut import apply_voi_lut_table, lut_from_item, window

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

_REGISTRY: dict[str, type[Transform]] = {}


class Transform:
    """Base class: a named, serialisable ``Image -> Image`` step."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _REGISTRY[cls.name] = cls

    def __call__(self, image: Image) -> Image:
        return self.apply(image, inplace=False)

    def apply(self, image: Image, inplace: bool = False) -> Image:
        """Transform ``image``; with ``inplace`` the step may overwrite its pixel buffer.

        :class:`Compose` passes ``inplace=True`` only for intermediate images it
        created itself (never the caller's), which saves a full-size copy per
        point-wise step on large films.
        """
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this transform (JSON-able)."""
        return {}

    def to_spec(self) -> dict[str, Any]:
        """``{"name": ..., **params}``: what :func:`build_chain` consumes."""
        return {"name": self.name, **self.params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and self.to_spec() == other.to_spec()

    def __hash__(self) -> int:
        return hash(repr(self))


def _spatial_frames(image: Image) -> int:
    """Number of leading frame axes' length, 0 when the image is a single frame."""
    spatial = image.pixels.ndim - (1 if image.is_color else 0)
    return int(image.pixels.shape[0]) if spatial == 3 else 0


def _sample(values: FloatArray, limit: int = 1 << 18) -> FloatArray:
    """A deterministic strided subsample: percentiles of 9 M pixels need not see all."""
    flat = values.reshape(-1)
    step = max(1, flat.size // limit)
    sample: FloatArray = flat[::step]
    return sample


def _finite_range(values: FloatArray, lower: float, upper: float) -> tuple[float, float]:
    sample = _sample(values)
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


class SelectFrame(Transform):
    """Keep one frame of a multi-frame image (single-frame images pass through)."""

    name = "select_frame"

    def __init__(self, index: int = 0) -> None:
        self.index = int(index)

    def params(self) -> dict[str, Any]:
        return {"index": self.index}

    def apply(self, image: Image, inplace: bool = False) -> Image:
        frames = _spatial_frames(image)
        if frames == 0:
            return image
        index = self.index if self.index >= 0 else frames + self.index
        if not 0 <= index < frames:
            raise OverreadError(
                f"{image.metadata.source_path}: frame {self.index} requested, image has {frames}"
            )
        return image.evolve(
            np.ascontiguousarray(image.pixels[index]),
            f"select frame {index} of {frames}",
            frames=1,
        )


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
    """

    name = "invert_monochrome1"

    def apply(self, image: Image, inplace: bool = False) -> Image:
        if image.metadata.photometric_interpretation != "MONOCHROME1":
            return image
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
            f"MONOCHROME1 inverted around [{lo:g}, {hi:g}] -> MONOCHROME2",
            photometric_interpretation="MONOCHROME2",
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


@dataclass(frozen=True)
class Letterbox:
    """Where a resized-with-padding image sits in its square output.

    Lets heat maps and boxes computed on the model input be mapped back to the
    stored image: ``source = (output - offset) / scale``.
    """

    scale_y: float
    scale_x: float
    new_rows: int
    new_cols: int
    top: int
    left: int

    @classmethod
    def fit(
        cls, rows: int, cols: int, out_rows: int, out_cols: int, keep_aspect: bool
    ) -> Letterbox:
        """Geometry for fitting ``rows x cols`` into ``out_rows x out_cols``."""
        if not keep_aspect:
            return cls(out_rows / rows, out_cols / cols, out_rows, out_cols, 0, 0)
        scale = min(out_rows / rows, out_cols / cols)
        new_rows = max(1, min(out_rows, round(rows * scale)))
        new_cols = max(1, min(out_cols, round(cols * scale)))
        return cls(
            new_rows / rows,
            new_cols / cols,
            new_rows,
            new_cols,
            (out_rows - new_rows) // 2,
            (out_cols - new_cols) // 2,
        )

    def to_source(self, row: float, col: float) -> tuple[float, float]:
        """Map an output (row, col) back to stored-image coordinates."""
        return (row - self.top) / self.scale_y, (col - self.left) / self.scale_x


def _resize_planes(planes: FloatArray, rows: int, cols: int, method: str) -> FloatArray:
    """Resize (N, H, W) float32 planes to (N, rows, cols) with torch."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.ascontiguousarray(planes))[:, None]
    in_rows, in_cols = planes.shape[-2], planes.shape[-1]
    with torch.no_grad():
        if method == "area":
            if in_rows >= rows and in_cols >= cols:
                out = F.adaptive_avg_pool2d(tensor, (rows, cols))
            else:  # area averaging cannot enlarge: bilinear up, area down per axis
                out = F.interpolate(tensor, size=(rows, cols), mode="bilinear", antialias=True)
        elif method == "bilinear":
            out = F.interpolate(
                tensor, size=(rows, cols), mode="bilinear", antialias=True, align_corners=False
            )
        elif method == "nearest":
            out = F.interpolate(tensor, size=(rows, cols), mode="nearest-exact")
        else:
            raise ConfigError(f"unknown resize method {method!r}")
    result: FloatArray = out[:, 0].numpy().astype(np.float32, copy=False)
    return result


class Resize(Transform):
    """Resize to ``size`` (int for square, or (rows, cols)), keeping aspect with padding.

    ``method`` is ``"area"`` (area averaging: no aliasing when shrinking a
    3000-pixel film to 224, and the fastest we measured), ``"bilinear"``
    (antialiased) or ``"nearest"`` (label masks). Multi-frame and colour
    images are resized frame by frame / channel by channel.
    """

    name = "resize"

    def __init__(
        self,
        size: int | Sequence[int] = 224,
        keep_aspect: bool = True,
        pad_value: float = 0.0,
        method: str = "area",
    ) -> None:
        if isinstance(size, int):
            self.size: tuple[int, int] = (size, size)
        else:
            values = [int(s) for s in size]
            if len(values) != 2:
                raise ConfigError(f"resize size must be one or two integers, got {size!r}")
            self.size = (values[0], values[1])
        if min(self.size) < 1:
            raise ConfigError(f"resize size must be positive, got {size!r}")
        if method not in ("area", "bilinear", "nearest"):
            raise ConfigError(f"unknown resize method {method!r}")
        self.keep_aspect = bool(keep_aspect)
        self.pad_value = float(pad_value)
        self.method = method

    def params(self) -> dict[str, Any]:
        return {
            "size": list(self.size),
            "keep_aspect": self.keep_aspect,
            "pad_value": self.pad_value,
            "method": self.method,
        }

    def geometry(self, rows: int, cols: int) -> Letterbox:
        """The :class:`Letterbox` this transform uses for a ``rows x cols`` image."""
        return Letterbox.fit(rows, cols, self.size[0], self.size[1], self.keep_aspect)

    def apply(self, image: Image, inplace: bool = False) -> Image:
        pixels = image.pixels
        color = image.is_color
        if color:
            pixels = np.moveaxis(pixels, -1, 0 if pixels.ndim == 3 else 1)
        lead = pixels.shape[:-2]
        rows, cols = int(pixels.shape[-2]), int(pixels.shape[-1])
        box = self.geometry(rows, cols)
        planes = pixels.reshape(-1, rows, cols)
        if (box.new_rows, box.new_cols) == (rows, cols):
            resized = planes.astype(np.float32, copy=False)
        else:
            resized = _resize_planes(planes, box.new_rows, box.new_cols, self.method)
        out_rows, out_cols = self.size
        out = np.full((planes.shape[0], out_rows, out_cols), self.pad_value, dtype=np.float32)
        out[:, box.top : box.top + box.new_rows, box.left : box.left + box.new_cols] = resized
        out = out.reshape(*lead, out_rows, out_cols)
        if color:
            out = np.ascontiguousarray(np.moveaxis(out, 0 if out.ndim == 3 else 1, -1))
        spacing = image.metadata.pixel_spacing
        new_spacing = (
            (spacing[0] / box.scale_y, spacing[1] / box.scale_x) if spacing is not None else None
        )
        return image.evolve(
            out,
            f"resize {rows}x{cols} -> {box.new_rows}x{box.new_cols} ({self.method}), "
            f"pad to {out_rows}x{out_cols} at top {box.top} left {box.left} "
            f"with {self.pad_value:g}",
            rows=out_rows,
            columns=out_cols,
            pixel_spacing=new_spacing,
        )


class Resample(Transform):
    """Resample to a physical voxel spacing in mm, ``(rows, cols)`` or ``(slices, rows, cols)``.

    Uses the image's Pixel Spacing and, for volumes, the distance between slices
    (from the affine when the image has one, else Slice Thickness). Linear
    interpolation for ``"linear"``, nearest neighbour for label maps.
    """

    name = "resample"

    def __init__(self, spacing: Sequence[float], mode: str = "linear") -> None:
        values = [float(s) for s in spacing]
        if len(values) not in (2, 3) or min(values) <= 0:
            raise ConfigError(f"resample spacing must be 2 or 3 positive numbers, got {spacing!r}")
        if mode not in ("linear", "nearest"):
            raise ConfigError(f"unknown resample mode {mode!r}")
        self.spacing = tuple(values)
        self.mode = mode

    def params(self) -> dict[str, Any]:
        return {"spacing": list(self.spacing), "mode": self.mode}

    def apply(self, image: Image, inplace: bool = False) -> Image:
        import torch
        import torch.nn.functional as F

        meta = image.metadata
        if image.is_color:
            raise OverreadError(f"{meta.source_path}: resampling colour images is not supported")
        if meta.pixel_spacing is None:
            raise OverreadError(f"{meta.source_path}: no pixel spacing, cannot resample")
        current: list[float] = [meta.pixel_spacing[0], meta.pixel_spacing[1]]
        volume = image.pixels.ndim == 3
        if volume:
            between = _slice_spacing(image)
            if between is None:
                raise OverreadError(f"{meta.source_path}: no slice spacing, cannot resample")
            current = [between, *current]
        target = list(self.spacing)
        if volume and len(target) == 2:
            target = [current[0], *target]
        if not volume and len(target) == 3:
            target = target[1:]
        shape = image.pixels.shape
        new_shape = [
            max(1, round(n * c / t)) for n, c, t in zip(shape, current, target, strict=True)
        ]
        tensor = torch.from_numpy(np.ascontiguousarray(image.pixels))[None, None]
        mode = ("trilinear" if volume else "bilinear") if self.mode == "linear" else "nearest-exact"
        with torch.no_grad():
            if self.mode == "linear":
                out = F.interpolate(tensor, size=tuple(new_shape), mode=mode, align_corners=False)
            else:
                out = F.interpolate(tensor, size=tuple(new_shape), mode=mode)
        pixels = out[0, 0].numpy().astype(np.float32, copy=False)
        real = [c * n / m for c, n, m in zip(current, shape, new_shape, strict=True)]
        changes: dict[str, Any] = {
            "rows": int(new_shape[-2]),
            "columns": int(new_shape[-1]),
            "pixel_spacing": (real[-2], real[-1]),
        }
        if volume:
            changes["frames"] = int(new_shape[0])
            changes["slice_thickness"] = real[0]
        return image.evolve(
            pixels,
            f"resample {tuple(shape)} at {tuple(round(c, 4) for c in current)} mm -> "
            f"{tuple(new_shape)} at {tuple(round(r, 4) for r in real)} mm ({self.mode})",
            **changes,
        )


def _slice_spacing(image: Image) -> float | None:
    affine = image.metadata.affine
    if affine is not None:
        matrix = np.asarray(affine, dtype=np.float64)
        # Column 2 of the affine is the step between slices in our (slice, row, col) convention
        # for volumes from series.py; NIfTI affines index (col, row, slice): also column 2.
        return float(np.linalg.norm(matrix[:3, 2])) or None
    return image.metadata.slice_thickness


class Compose(Transform):
    """Apply transforms in order; serialises as the list of its steps' specs."""

    name = "compose"

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = list(transforms)

    def params(self) -> dict[str, Any]:
        return {"transforms": [t.to_spec() for t in self.transforms]}

    def to_spec(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The chain as a JSON-able list of ``{"name": ..., **params}``."""
        return [t.to_spec() for t in self.transforms]

    def __call__(self, image: Image | str | Path) -> Image:
        if not isinstance(image, Image):
            from overread.imaging.reader import read

            image = read(image)
        return self.apply(image, inplace=False)

    def apply(self, image: Image, inplace: bool = False) -> Image:
        original = image.pixels
        for transform in self.transforms:
            owned = inplace or (
                image.pixels is not original and not np.may_share_memory(image.pixels, original)
            )
            image = transform.apply(image, inplace=owned)
        return image

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Any:
        return iter(self.transforms)


def build_chain(spec: Sequence[dict[str, Any]] | dict[str, Any]) -> Compose:
    """Rebuild a chain from :meth:`Compose.to_spec` output.

    Raises
    ------
    ConfigError
        If a step's name is unknown or its parameters are invalid.
    """
    items: Sequence[Any]
    if isinstance(spec, dict):
        items = spec.get("transforms") or spec.get("chain") or [spec]
    else:
        items = spec
    steps: list[Transform] = []
    for item in items:
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"transform spec {item!r} has no 'name'")
        params = {k: v for k, v in item.items() if k != "name"}
        name = str(item["name"])
        if name == "compose":
            steps.append(build_chain(params.get("transforms", [])))
            continue
        cls = _REGISTRY.get(name)
        if cls is None:
            raise ConfigError(f"unknown transform {name!r}; known: {', '.join(sorted(_REGISTRY))}")
        try:
            steps.append(cls(**params))
        except TypeError as exc:
            raise ConfigError(f"transform {name!r}: {exc}") from None
    return Compose(steps)


def cxr_chain(size: int = 224, method: str = "area") -> Compose:
    """The standard chest X-ray classification chain.

    First frame; RGB -> grey; the file's VOI window (else 0.5-99.5 percentile
    window) to [0, 1]; MONOCHROME1 inversion (bone bright); clip to [0, 1];
    resize keeping aspect with zero padding to ``size x size``.
    """
    return Compose(
        [
            SelectFrame(0),
            ToGrayscale(),
            VoiWindow(fallback="percentile", lower=0.5, upper=99.5),
            InvertMonochrome1(),
            Normalize("clip"),
            Resize(size, keep_aspect=True, pad_value=0.0, method=method),
        ]
    )


def ct_window_chain(preset: str, size: int | None = None) -> Compose:
    """A CT chain: a named window preset (HU), optionally resized."""
    steps: list[Transform] = [VoiWindow(preset=preset), Normalize("clip")]
    if size is not None:
        steps.append(Resize(size))
    return Compose(steps)


def registered_transforms() -> dict[str, type[Transform]]:
    """Names accepted by :func:`build_chain`."""
    return dict(_REGISTRY)


__all__ = [
    "WINDOW_PRESETS",
    "Compose",
    "InvertMonochrome1",
    "Letterbox",
    "Normalize",
    "Resample",
    "Resize",
    "SelectFrame",
    "ToGrayscale",
    "Transform",
    "VoiWindow",
    "build_chain",
    "ct_window_chain",
    "cxr_chain",
    "registered_transforms",
]
