"""The one entry point: :func:`read`, whatever the file format."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from overread.config import ImagingSettings, load_settings
from overread.errors import ImageReadError, InvalidDicomError, OverreadError
from overread.imaging.dicom import StoredPixels, read_dicom, read_stored
from overread.imaging.files import read_nifti, read_picture, sniff_format
from overread.imaging.header import one_line
from overread.imaging.image import Image

logger = logging.getLogger(__name__)


_settings_cache: dict[tuple[object, ...], ImagingSettings] = {}


def default_imaging_settings() -> ImagingSettings:
    """The configured imaging settings, re-loaded only when their sources change.

    Loading settings parses the TOML file and environment (about 1 ms), which
    would double the cost of reading a small PNG; the cache key is every
    ``OVERREAD_*`` variable plus the configuration file's path and mtime, so a
    changed environment or file is always seen.
    """
    config = Path(os.environ.get("OVERREAD_CONFIG", "overread.toml"))
    try:
        stamp: object = config.resolve().stat().st_mtime_ns
    except OSError:
        stamp = None
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("OVERREAD_")))
    key = (str(config), stamp, env)
    cached = _settings_cache.get(key)
    if cached is None:
        cached = load_settings().imaging
        _settings_cache.clear()
        _settings_cache[key] = cached
    return cached


def read(
    path: str | os.PathLike[str],
    *,
    settings: ImagingSettings | None = None,
    strictness: str | None = None,
) -> Image:
    """Read a DICOM (Part 10 or raw), NIfTI, PNG or JPEG file into an :class:`Image`.

    The Modality LUT is applied to DICOM grey images (so CT pixels are in HU);
    nothing else is: windowing, inversion and resizing are transforms
    (:mod:`overread.imaging.transforms`), so the same chain can be recorded in a
    model package and replayed.

    Parameters
    ----------
    path
        The file.
    settings
        Imaging settings (limits, strictness); loaded from configuration if omitted.
    strictness
        Overrides ``settings.strictness``: ``"warn"`` keeps problems as
        :attr:`Image.warnings`, ``"raise"`` refuses a file with any, ``"ignore"``
        drops them.

    Raises
    ------
    OverreadError
        ``InvalidDicomError``, ``UnsupportedTransferSyntaxError`` or
        ``ImageReadError``, with a one-line message naming the file.
    """
    config = settings if settings is not None else default_imaging_settings()
    mode = strictness or config.strictness
    file = Path(path)
    if not file.exists():
        raise ImageReadError(f"{file}: no such file")
    if not file.is_file():
        raise ImageReadError(f"{file}: not a regular file")
    kind = sniff_format(file)
    try:
        if kind in ("png", "jpeg"):
            image = read_picture(file, max_pixels=config.max_pixels)
        elif kind == "nifti":
            image = read_nifti(file, max_pixels=config.max_pixels, max_frames=config.max_frames)
        else:
            image = read_dicom(file, max_pixels=config.max_pixels, max_frames=config.max_frames)
    except OverreadError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise InvalidDicomError(
            f"{file}: too deeply nested or too large ({type(exc).__name__})"
        ) from None
    except Exception as exc:  # last line of defence: one line, never a traceback
        logger.debug("unexpected error reading %s", file, exc_info=True)
        raise InvalidDicomError(
            f"{file}: unexpected {type(exc).__name__} while reading: {one_line(exc)}"
        ) from None
    if mode == "raise" and image.warnings:
        raise InvalidDicomError(f"{file}: {image.warnings[0]} (strictness=raise)")
    if mode == "ignore":
        image.warnings.clear()
    return image


def read_stored_values(
    path: str | os.PathLike[str],
    *,
    settings: ImagingSettings | None = None,
    strictness: str | None = None,
) -> StoredPixels | None:
    """The stored values of a native grey DICOM film as a view, or ``None``.

    What :func:`read` would read, without decoding to float: ``None`` for any
    file :func:`overread.imaging.dicom.read_stored` does not take (the caller
    then uses :func:`read`), and the same errors and strictness as :func:`read`.
    """
    config = settings if settings is not None else default_imaging_settings()
    mode = strictness or config.strictness
    file = Path(path)
    if not file.is_file() or sniff_format(file) is not None:
        return None
    try:
        stored = read_stored(file, max_pixels=config.max_pixels, max_frames=config.max_frames)
    except OverreadError:
        raise
    except (RecursionError, MemoryError) as exc:
        raise InvalidDicomError(
            f"{file}: too deeply nested or too large ({type(exc).__name__})"
        ) from None
    except Exception as exc:  # last line of defence: one line, never a traceback
        logger.debug("unexpected error reading %s", file, exc_info=True)
        raise InvalidDicomError(
            f"{file}: unexpected {type(exc).__name__} while reading: {one_line(exc)}"
        ) from None
    if stored is None:
        return None
    if mode == "raise" and stored.warnings:
        raise InvalidDicomError(f"{file}: {stored.warnings[0]} (strictness=raise)")
    if mode == "ignore":
        stored.warnings.clear()
    return stored


__all__ = ["default_imaging_settings", "read", "read_stored_values"]
