"""Images a chest model was not made for, made from phantom studies: input-gate tests.

Each function takes a phantom's DICOM dataset and returns a copy spoiled in one way
a real department sees: the photometric interpretation mis-set (a negative image),
a VOI window that clips most of the image (badly windowed), heavy noise, heavy
collimation (wide unexposed borders), and a crop to part of the chest. The header
keeps saying "chest PA": only the pixels can tell.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from overread.errors import InvalidDicomError


def _pixels(ds: Dataset) -> np.ndarray:
    return np.asarray(ds.pixel_array, dtype=np.float64)


def _store(ds: Dataset, pixels: np.ndarray) -> Dataset:
    out = copy.deepcopy(ds)
    top = (1 << int(ds.BitsStored)) - 1
    stored = np.clip(np.rint(pixels), 0, top).astype(np.uint16)
    out.Rows, out.Columns = stored.shape
    out.PixelData = stored.tobytes()
    return _renamed(out)


def _renamed(ds: Dataset) -> Dataset:
    """New SOP Instance UID (a spoiled copy is another image)."""
    ds.SOPInstanceUID = generate_uid()
    if getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    return ds


def inverted(ds: Dataset) -> Dataset:
    """MONOCHROME1 and MONOCHROME2 swapped: the image is shown as its negative."""
    out = _renamed(copy.deepcopy(ds))
    mono1 = str(ds.PhotometricInterpretation) == "MONOCHROME1"
    out.PhotometricInterpretation = "MONOCHROME2" if mono1 else "MONOCHROME1"
    # The Presentation LUT Shape goes with it, or a reader would invert it back.
    if "PresentationLUTShape" in out:
        out.PresentationLUTShape = "IDENTITY" if mono1 else "INVERSE"
    return out


def badly_windowed(ds: Dataset, *, clip_fraction: float = 0.6) -> Dataset:
    """A narrow VOI window placed so about ``clip_fraction`` of the pixels saturate."""
    out = _renamed(copy.deepcopy(ds))
    pixels = _pixels(ds)
    centre = float(np.quantile(pixels, clip_fraction))
    width = max(2.0, float(np.std(pixels)) * 0.15)
    out.WindowCenter = f"{centre:.1f}"
    out.WindowWidth = f"{width:.1f}"
    for keyword in ("WindowCenterWidthExplanation", "VOILUTSequence", "VOILUTFunction"):
        if keyword in out:
            delattr(out, keyword)
    return out


def noisy(ds: Dataset, *, level: float = 0.12, seed: int = 0) -> Dataset:
    """White noise of ``level`` times the stored range added."""
    pixels = _pixels(ds)
    rng = np.random.default_rng(seed)
    spread = float(np.quantile(pixels, 0.99) - np.quantile(pixels, 0.01))
    return _store(ds, pixels + rng.normal(0.0, level * spread, pixels.shape))


def collimated(ds: Dataset, *, border: float = 0.25) -> Dataset:
    """Unexposed borders of ``border`` of each side (no signal: shown as in collimation)."""
    pixels = _pixels(ds)
    rows, cols = pixels.shape
    r, c = int(rows * border), int(cols * border)
    mono1 = str(ds.PhotometricInterpretation) == "MONOCHROME1"
    # No signal behind the collimator: shown white (attenuating) on the display.
    value = float(pixels.min() if mono1 else pixels.max())
    out = pixels.copy()
    out[:r, :] = value
    out[rows - r :, :] = value
    out[:, :c] = value
    out[:, cols - c :] = value
    return _store(ds, out)


def cropped(ds: Dataset, *, keep: float = 0.45) -> Dataset:
    """Only the upper-left ``keep`` of the rows and columns kept (part of one lung)."""
    pixels = _pixels(ds)
    rows, cols = pixels.shape
    return _store(ds, pixels[: max(8, int(rows * keep)), : max(8, int(cols * keep * 1.3))])


#: Each spoiling, by the name reports use.
CORRUPTIONS: dict[str, Callable[[Dataset], Dataset]] = {
    "inverted": inverted,
    "badly windowed": badly_windowed,
    "heavy noise": noisy,
    "heavy collimation": collimated,
    "cropped": cropped,
}


def write_corrupted(sources: list[Path], out: Path) -> dict[str, list[Path]]:
    """Every :data:`CORRUPTIONS` of every source file, written under ``out/KIND/``."""
    import pydicom
    import pydicom.errors

    written: dict[str, list[Path]] = {kind: [] for kind in CORRUPTIONS}
    for index, source in enumerate(sources):
        try:
            ds = pydicom.dcmread(source)
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            raise InvalidDicomError(f"{source}: not a DICOM file to spoil ({exc})") from None
        for kind, spoil in CORRUPTIONS.items():
            target = out / kind.replace(" ", "_") / f"{index:04d}.dcm"
            target.parent.mkdir(parents=True, exist_ok=True)
            spoil(ds).save_as(target, enforce_file_format=True)
            written[kind].append(target)
    return written


__all__ = [
    "CORRUPTIONS",
    "badly_windowed",
    "collimated",
    "cropped",
    "inverted",
    "noisy",
    "write_corrupted",
]
