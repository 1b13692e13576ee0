"""What ``overread inspect`` reports about one file, as data.

Kept in the imaging package (not the CLI) so the service and tests can ask the
same question: can this file be read, what does its header say, what range do
its pixels have, and what is wrong with it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.uid import UID

from overread.config import ImagingSettings, load_settings
from overread.errors import OverreadError
from overread.imaging.header import (
    collect_warnings,
    is_part10,
    metadata_from_dataset,
    one_line,
    read_header,
)
from overread.imaging.image import ImageMetadata
from overread.imaging.reader import read


@dataclass
class Inspection:
    """The outcome of reading one file."""

    path: str
    ok: bool
    error: str | None = None
    metadata: ImageMetadata | None = None
    pixel_min: float | None = None
    pixel_max: float | None = None
    pixel_mean: float | None = None
    warnings: list[str] = field(default_factory=list)
    provenance: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Flat, JSON-able summary; the full metadata sits under ``metadata``."""
        meta = self.metadata
        ts = meta.transfer_syntax if meta else None
        return {
            "path": self.path,
            "ok": self.ok,
            "error": self.error,
            "sop_instance_uid": meta.sop_instance_uid if meta else None,
            "sop_class_uid": meta.sop_class_uid if meta else None,
            "modality": meta.modality if meta else None,
            "rows": meta.rows if meta else None,
            "columns": meta.columns if meta else None,
            "frames": meta.frames if meta else None,
            "samples_per_pixel": meta.samples_per_pixel if meta else None,
            "photometric_interpretation": meta.photometric_interpretation if meta else None,
            "transfer_syntax": ts,
            "transfer_syntax_name": UID(ts).name if ts else None,
            "format": meta.source_format if meta else None,
            "min": self.pixel_min,
            "max": self.pixel_max,
            "mean": self.pixel_mean,
            "warnings": list(self.warnings),
            "metadata": meta.to_dict() if meta else None,
        }


# Inside a walked directory these are documentation or sidecars, never images;
# named explicitly on the command line they are still tried (and reported).
NOT_IMAGE_SUFFIXES = frozenset(
    {
        ".md",
        ".txt",
        ".rst",
        ".json",
        ".csv",
        ".tsv",
        ".html",
        ".xml",
        ".yaml",
        ".yml",
        ".toml",
        ".py",
        ".pdf",
        ".log",
        ".sh",
        ".ini",
        ".cfg",
    }
)


def iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Yield the given files and, for directories, every file below them (sorted).

    Inside a walked directory, hidden files and directories (names starting
    with a dot) and files whose suffix marks them as text (``README.md``,
    ``labels.csv``: :data:`NOT_IMAGE_SUFFIXES`) are skipped; DICOM files often
    have no suffix at all, so everything else is tried. A path that does not
    exist is yielded so the caller reports it.
    """
    for given in paths:
        path = Path(given)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and Path(name).suffix.lower() not in (
                        NOT_IMAGE_SUFFIXES
                    ):
                        yield Path(root) / name
        else:
            yield path


def _header_metadata(path: Path) -> ImageMetadata | None:
    """Best-effort header metadata for a file whose pixels could not be read."""
    if not is_part10(path):
        return None
    try:
        with collect_warnings([]):
            return metadata_from_dataset(read_header(path), path)
    except Exception:  # a file that failed to read may fail here too; metadata is optional
        return None


def inspect(path: str | os.PathLike[str], settings: ImagingSettings | None = None) -> Inspection:
    """Read one file and summarise it; never raises for a bad file.

    Returns
    -------
    Inspection
        ``ok`` is False and ``error`` holds one line ``"path: what is wrong"``
        when the file cannot be read as an image.
    """
    file = Path(path)
    config = settings if settings is not None else load_settings().imaging
    try:
        image = read(file, settings=config)
    except OverreadError as exc:
        message = one_line(exc)
        if not message.startswith(str(file)):
            message = f"{file}: {message}"
        return Inspection(str(file), False, message, metadata=_header_metadata(file))
    except Exception as exc:  # last line of defence: a batch must carry on
        return Inspection(
            str(file), False, f"{file}: unexpected {type(exc).__name__}: {one_line(exc)}"
        )
    pixels = image.pixels
    finite = pixels[np.isfinite(pixels)] if not np.all(np.isfinite(pixels)) else pixels
    stats = (
        (float(finite.min()), float(finite.max()), float(finite.mean(dtype=np.float64)))
        if finite.size
        else (None, None, None)
    )
    return Inspection(
        str(file),
        True,
        None,
        metadata=image.metadata,
        pixel_min=stats[0],
        pixel_max=stats[1],
        pixel_mean=stats[2],
        warnings=list(image.warnings),
        provenance=list(image.provenance),
    )


__all__ = ["NOT_IMAGE_SUFFIXES", "Inspection", "inspect", "iter_files"]
