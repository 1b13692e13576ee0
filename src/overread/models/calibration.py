"""Images for INT8 calibration, preprocessed exactly as at inference time.

Static quantisation fixes each activation's range from sample inputs, so those
inputs must look like what the model will see. The preferred source is the phantom
generator (real DICOM files through the package's own chain); where it is not
available, chest-like synthetic images (body, lungs, mediastinum, ribs, noise) are
drawn directly in the model's input space.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from overread.errors import OverreadError

logger = logging.getLogger(__name__)

#: Rows and columns of phantom images rendered for calibration (the chain resizes them).
PHANTOM_SIZE = 512


def synthetic_chest(size: int, rng: np.random.Generator) -> np.ndarray:
    """One chest-like frontal radiograph in [0, 1] (bone and soft tissue bright), ``(size, size)``."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    cx = 0.5 + rng.normal(0, 0.02)
    body = ((x - cx) / rng.uniform(0.38, 0.46)) ** 2 + ((y - 0.55) / 0.55) ** 2 < 1
    image = np.where(body, 0.55, 0.05).astype(np.float32)
    for side in (-1, 1):
        lung_cx = cx + side * rng.uniform(0.15, 0.2)
        lung = ((x - lung_cx) / rng.uniform(0.1, 0.14)) ** 2 + (
            (y - 0.48) / rng.uniform(0.25, 0.32)
        ) ** 2 < 1
        image[lung] -= 0.35
    heart = ((x - cx - 0.04) / rng.uniform(0.1, 0.16)) ** 2 + ((y - 0.62) / 0.12) ** 2 < 1
    image[heart] = 0.6
    for k in range(8):
        rib_y = 0.25 + 0.065 * k + 0.08 * (x - cx) ** 2 * 4
        image[np.abs(y - rib_y) < 0.008] += 0.15
    if rng.random() < 0.5:  # a focal opacity somewhere in the lungs
        oy, ox, r = rng.uniform(0.35, 0.7), cx + rng.choice([-1, 1]) * 0.17, rng.uniform(0.02, 0.06)
        image[(x - ox) ** 2 + (y - oy) ** 2 < r**2] += 0.25
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return np.clip(image, 0.0, 1.0)


def synthetic_batch(n: int, size: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``(n, channels, size, size)`` float32 synthetic chest images."""
    rng = np.random.default_rng(seed)
    images = np.stack([synthetic_chest(size, rng) for _ in range(n)])[:, None]
    return np.repeat(images, channels, axis=1).astype(np.float32)


def phantom_batch(
    n: int, chain_spec: Sequence[dict[str, Any]], channels: int = 1, seed: int = 0
) -> np.ndarray | None:
    """``(n, C, H, W)`` phantom DICOMs through ``chain_spec``, or None if no phantom generator."""
    try:
        from overread.phantom import generate_cohort
    except ImportError:
        return None
    from overread.imaging.transforms import build_chain

    chain = build_chain(list(chain_spec))
    with tempfile.TemporaryDirectory(prefix="overread-calibration-") as tmp:
        try:
            generate_cohort(tmp, n, seed, rows=PHANTOM_SIZE, cols=PHANTOM_SIZE)
        except OverreadError as exc:
            logger.warning("phantom generator failed, calibrating on synthetic images: %s", exc)
            return None
        files = sorted(Path(tmp).rglob("*.dcm"))[:n]
        if not files:
            return None
        # chain(path) reads as serving does (the reduced read included).
        planes = [np.asarray(chain(f).pixels, dtype=np.float32) for f in files]
    images = np.stack(planes)[:, None]
    return np.repeat(images, channels, axis=1)


def calibration_images(
    n: int, size: int, chain_spec: Sequence[dict[str, Any]], channels: int = 1, seed: int = 0
) -> tuple[np.ndarray, str]:
    """Calibration images and a note of where they came from (phantom or synthetic)."""
    phantoms = phantom_batch(n, chain_spec, channels, seed)
    if phantoms is not None and phantoms.shape[-1] == size:
        return phantoms, f"{len(phantoms)} phantom chest radiographs (seed {seed})"
    return synthetic_batch(n, size, channels, seed), f"{n} synthetic chest images (seed {seed})"


__all__ = ["calibration_images", "phantom_batch", "synthetic_batch", "synthetic_chest"]
