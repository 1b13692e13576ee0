"""Frames of a stored instance as bytes (WADO-RS frames) and as pictures (rendered).

A frame's bytes for ``application/octet-stream`` are its decoded pixel values,
little endian, as PS3.18 §8.7.3 asks of an uncompressed bulk-data answer. A rendered
frame is what a reading screen shows: the modality rescale, then the window the
request names, else the file's first window (with its VOI LUT Function), else the
frame's full range, through :func:`overread.imaging.lut.window`; MONOCHROME1 is
inverted, colour frames are passed through as 8-bit RGB.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_color_lut
from pydicom.pixels.utils import pixel_array

from overread.errors import OverreadError
from overread.imaging.lut import apply_rescale, window
from overread.service.dicomweb.media import MediaType
from overread.service.dicomweb.query import QueryParameterError


class FrameDecodeError(OverreadError, ValueError):
    """A frame that cannot be decoded into the representation asked for (HTTP 406)."""


@dataclass(frozen=True)
class Window:
    """A VOI window a rendering request names (``window=center,width,function``)."""

    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class RenderOptions:
    """How to render: the window, JPEG quality and the viewport to fit in."""

    window: Window | None = None
    quality: int = 90
    viewport: tuple[int, int] | None = None


def frame_count(header: Dataset) -> int:
    """How many frames an instance has (0 without Pixel Data attributes)."""
    if "Rows" not in header or "Columns" not in header:
        return 0
    try:
        return max(1, int(header.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def parse_frame_list(text: str) -> list[int]:
    """The 1-based frame numbers of a ``frames/{list}`` path (``1,2,5``).

    Raises
    ------
    QueryParameterError
        If an item is not a positive integer.
    """
    numbers: list[int] = []
    for item in text.split(","):
        item = item.strip()
        if not re.fullmatch(r"[1-9][0-9]{0,8}", item):
            raise QueryParameterError(f"frame list {text!r}: {item!r} is not a frame number")
        numbers.append(int(item))
    return numbers


def parse_render_options(parameters: list[tuple[str, str]]) -> RenderOptions:
    """Read ``window``, ``quality`` and ``viewport`` (PS3.18 §8.3.5.1).

    Raises
    ------
    QueryParameterError
        For a malformed value or a parameter rendering does not take.
    """
    found: dict[str, str] = {}
    for name, value in parameters:
        key = name.strip().lower()
        if key not in ("window", "quality", "viewport"):
            raise QueryParameterError(f"{name!r} is not a rendering parameter")
        found[key] = value
    chosen_window: Window | None = None
    if "window" in found:
        parts = [p.strip() for p in found["window"].split(",")]
        try:
            if len(parts) not in (2, 3):
                raise ValueError
            function = (parts[2] if len(parts) == 3 else "linear").upper().replace("-", "_")
            if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
                raise ValueError
            chosen_window = Window(float(parts[0]), float(parts[1]), function)
            if chosen_window.width <= 0 or not all(
                np.isfinite([chosen_window.center, chosen_window.width])
            ):
                raise ValueError
        except ValueError:
            raise QueryParameterError(
                f"window={found['window']!r}: expected center,width[,linear|linear-exact|sigmoid]"
            ) from None
    quality = 90
    if "quality" in found:
        text = found["quality"].strip()
        if not text.isdigit() or not 1 <= int(text) <= 100:
            raise QueryParameterError(f"quality={found['quality']!r}: expected 1..100")
        quality = int(text)
    viewport: tuple[int, int] | None = None
    if "viewport" in found:
        parts = [p.strip() for p in found["viewport"].split(",")]
        if len(parts) != 2 or not all(p.isdigit() and 0 < int(p) <= 16384 for p in parts):
            raise QueryParameterError(
                f"viewport={found['viewport']!r}: expected width,height (1..16384)"
            )
        viewport = (int(parts[0]), int(parts[1]))
    return RenderOptions(chosen_window, quality, viewport)


def _decode(path: Path, index: int, *, raw: bool) -> npt.NDArray[np.generic]:
    try:
        return np.asarray(pixel_array(path, index=index, raw=raw))
    except Exception as exc:  # pydicom raises many types for codecs it lacks or bad data
        raise FrameDecodeError(
            f"frame {index + 1} of {path.name} cannot be decoded ({exc})"
        ) from None


def frame_bytes(path: Path, index: int) -> bytes:
    """Frame ``index`` (0-based) decoded, as little-endian pixel values."""
    frame = _decode(path, index, raw=True)
    return frame.astype(frame.dtype.newbyteorder("<"), copy=False).tobytes()


def _grey(frame: npt.NDArray[np.generic], header: Dataset, chosen: Window | None) -> np.ndarray:
    slope = float(header.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(header.get("RescaleIntercept", 0.0) or 0.0)
    values = apply_rescale(frame, slope, intercept)
    if chosen is None and "WindowCenter" in header and "WindowWidth" in header:
        try:
            center = float(np.ravel([header.WindowCenter])[0])
            width = float(np.ravel([header.WindowWidth])[0])
            function = str(header.get("VOILUTFunction", "LINEAR") or "LINEAR")
            if width > 0:
                chosen = Window(center, max(width, 1.0), function)
        except (TypeError, ValueError):
            chosen = None
    if chosen is None:
        low, high = float(values.min()), float(values.max())
        chosen = Window((low + high) / 2.0, max(high - low, 1.0), "LINEAR_EXACT")
    try:
        shown = window(values, chosen.center, chosen.width, chosen.function)
    except OverreadError:
        shown = window(values, chosen.center, max(chosen.width, 1.0), "LINEAR_EXACT")
    grey: npt.NDArray[np.uint8] = np.rint(shown * 255.0).astype(np.uint8)
    if str(header.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        grey = np.asarray(255 - grey, dtype=np.uint8)
    return grey


def _colour(frame: npt.NDArray[np.generic], header: Dataset) -> np.ndarray:
    data = np.asarray(frame)
    if str(header.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
        data = np.asarray(apply_color_lut(data, header))
    if data.dtype == np.uint8:
        return np.asarray(data, dtype=np.uint8)
    top = float(data.max()) or 1.0
    return np.clip(data.astype(np.float64) * (255.0 / top), 0, 255).astype(np.uint8)


def render_frame(
    path: Path, header: Dataset, index: int, media_type: MediaType, options: RenderOptions
) -> bytes:
    """Frame ``index`` (0-based) as a JPEG or PNG picture.

    Raises
    ------
    FrameDecodeError
        If the frame cannot be decoded (no codec for its transfer syntax, bad data).
    """
    frame = _decode(path, index, raw=False)
    photometric = str(header.get("PhotometricInterpretation", "")).upper()
    colour = int(header.get("SamplesPerPixel", 1) or 1) > 1 or photometric == "PALETTE COLOR"
    pixels = _colour(frame, header) if colour else _grey(frame, header, options.window)
    if pixels.ndim not in (2, 3):
        raise FrameDecodeError(f"frame {index + 1} of {path.name} is not a 2D image")
    picture = Image.fromarray(pixels)
    if options.viewport is not None:
        picture.thumbnail(options.viewport)
    buffer = io.BytesIO()
    if media_type is MediaType.PNG:
        picture.save(buffer, format="PNG", compress_level=6)
    else:
        picture.save(buffer, format="JPEG", quality=options.quality)
    return buffer.getvalue()


__all__ = [
    "FrameDecodeError",
    "RenderOptions",
    "Window",
    "frame_bytes",
    "frame_count",
    "parse_frame_list",
    "parse_render_options",
    "render_frame",
]
