"""Heatmap overlays: a colour map blended over the grey image the model saw."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PilImage


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 in a blue-to-red "jet" map."""
    value = np.clip(np.asarray(heatmap, dtype=np.float32), 0.0, 1.0)
    red = np.clip(1.5 - np.abs(4 * value - 3), 0, 1)
    green = np.clip(1.5 - np.abs(4 * value - 2), 0, 1)
    blue = np.clip(1.5 - np.abs(4 * value - 1), 0, 1)
    return (np.stack([red, green, blue], axis=-1) * 255).astype(np.uint8)


def blend_overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.4) -> np.ndarray:
    """Blend a heatmap over a grey image; both ``(H, W)`` in [0, 1] -> RGB uint8.

    Weak evidence stays transparent (blend weight scales with the heatmap), so the
    anatomy under low-attention regions remains readable.
    """
    grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if grey.shape != heatmap.shape:
        raise ValueError(f"image {grey.shape} and heatmap {heatmap.shape} differ in shape")
    base = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    weight = alpha * np.clip(heatmap, 0.0, 1.0)[..., None]
    blended = (1.0 - weight) * base + weight * colourise(heatmap).astype(np.float32)
    result: np.ndarray = np.clip(blended, 0, 255).astype(np.uint8)
    return result


def save_overlay(
    path: Path | str, image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.4, scale: int = 2
) -> Path:
    """Write a PNG overlay, enlarged ``scale`` times for viewing."""
    rgb = blend_overlay(image, heatmap, alpha=alpha)
    picture = PilImage.fromarray(rgb, mode="RGB")
    if scale > 1:
        picture = picture.resize(
            (rgb.shape[1] * scale, rgb.shape[0] * scale), PilImage.Resampling.BILINEAR
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return out


__all__ = ["blend_overlay", "colourise", "save_overlay"]
