"""Spatial transforms: frame selection, resize with letterboxing, resampling to mm."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from overread.errors import ConfigError, OverreadError
from overread.imaging.image import FloatArray, Image
from overread.imaging.transforms.base import Transform, spatial_frames


class SelectFrame(Transform):
    """Keep one frame of a multi-frame image (single-frame images pass through)."""

    name = "select_frame"

    def __init__(self, index: int = 0) -> None:
        self.index = int(index)

    def params(self) -> dict[str, Any]:
        return {"index": self.index}

    def apply(self, image: Image, inplace: bool = False) -> Image:
        frames = spatial_frames(image)
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


__all__ = ["Letterbox", "Resample", "Resize", "SelectFrame"]
