"""Heatmap overlays: a colour-blind-safe map blended over the grey image the model saw.

The colour map is cividis (Nuñez, Anderton and Renslow, PLoS ONE 2018; the table
as matplotlib ships it, CC BY 4.0): blue to yellow, its lightness rising evenly,
designed to read the same with red-green colour-vision deficiency and in grey.
It is a 256-entry lookup table here, so overlays need no plotting library. On top
of the blend go the outline of the map's top region (pixels at or above half its
maximum, see :mod:`overread.explain.regions`) and the bounding box of that
region's part that holds the peak.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image as PilImage

from overread.explain.regions import (
    TOP_FRACTION,
    peak_region,
    region_box,
    region_outline,
    top_region,
)

#: cividis as 256 RGB triplets (uint8), hex-encoded.
_CIVIDIS_HEX = (
    "00224e00234f00245100255300255400265600275800285900285b00295d002a5f002a61002b62002c64"
    "002c66002d68002e6a002e6c002f6d00306f0030700031700031710132710533710833700c34700f3570"
    "12357014367016377018376f1a386f1c396f1e3a6f203a6f213b6e233c6e243c6e263d6e273e6e293f6e"
    "2a3f6d2b406d2d416d2e416d2f426d31436d32436d33446d34456c35456c36466c38476c39486c3a486c"
    "3b496c3c4a6c3d4a6c3e4b6c3f4c6c404c6c414d6c424e6c434e6c444f6c45506c46516c47516c48526c"
    "49536c4a536c4b546c4c556c4d556c4e566c4f576c50576c51586d52596d535a6d545a6d555b6d555c6d"
    "565c6d575d6d585e6d595e6e5a5f6e5b606e5c616e5d616e5e626e5e636f5f636f60646f61656f62656f"
    "636670646770656870656870666970676a71686a71696b716a6c716b6d726c6d726c6e726d6f726e6f73"
    "6f70737071737172747272747273747374757474757575757676767777767777777878777979777a7a78"
    "7b7a787c7b787d7c787e7c787e7d787f7e78807f78817f78828079838179848279858279868379878478"
    "8885788985788a86788b87788c88788d88788e89788f8a78908b78918b78928c78928d78938e78948e77"
    "958f779690779791779892779992779a93769b94769c95769d95769e96769f9775a09875a19975a29975"
    "a39a74a49b74a59c74a69c74a79d73a89e73a99f73aaa073aba072aca172ada272aea371afa471b0a571"
    "b1a570b3a670b4a76fb5a86fb6a96fb7a96eb8aa6eb9ab6dbaac6dbbad6dbcae6cbdae6cbeaf6bbfb06b"
    "c0b16ac1b26ac2b369c3b369c4b468c5b568c6b667c7b767c8b866c9b965cbb965ccba64cdbb63cebc63"
    "cfbd62d0be62d1bf61d2c060d3c05fd4c15fd5c25ed6c35dd7c45cd9c55cdac65bdbc75adcc859ddc858"
    "dec958dfca57e0cb56e1cc55e2cd54e4ce53e5cf52e6d051e7d150e8d24fe9d34eead34cebd44bedd54a"
    "eed649efd748f0d846f1d945f2da44f3db42f5dc41f6dd3ff7de3ef8df3cf9e03afbe138fce236fde334"
    "fee434fee535fee636fee838"
)

#: The colour map: ``CIVIDIS[i]`` is the RGB (uint8) of value ``i / 255``.
CIVIDIS: np.ndarray = np.frombuffer(bytes.fromhex(_CIVIDIS_HEX), dtype=np.uint8).reshape(256, 3)

#: Colour of the top region's outline and box: white, readable on cividis and on grey.
OUTLINE_COLOUR = (255, 255, 255)


def colourise(heatmap: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in [0, 1] -> ``(H, W, 3)`` uint8 in cividis (blue low, yellow high)."""
    value = np.clip(np.nan_to_num(np.asarray(heatmap, dtype=np.float32)), 0.0, 1.0)
    result: np.ndarray = CIVIDIS[np.round(value * 255).astype(np.intp)]
    return result


def draw_region(
    rgb: np.ndarray,
    heatmap: np.ndarray,
    *,
    fraction: float = TOP_FRACTION,
    width: int = 1,
    colour: tuple[int, int, int] = OUTLINE_COLOUR,
) -> np.ndarray:
    """``rgb`` with the outline of the map's top region and the peak part's bounding box.

    ``heatmap`` may be smaller or larger than ``rgb``; it is resampled (bilinear)
    to the image first. ``width`` is the line width in pixels.
    """
    out = np.array(rgb, dtype=np.uint8, copy=True)
    rows, cols = out.shape[:2]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != (rows, cols):
        heat = np.asarray(
            PilImage.fromarray(heat, mode="F").resize((cols, rows), PilImage.Resampling.BILINEAR),
            dtype=np.float32,
        )
    region = top_region(heat, fraction)
    if not region.any():
        return out
    out[region_outline(region, width)] = colour
    box = region_box(peak_region(heat, fraction))
    if box is not None:
        top, left, bottom, right = box
        w = max(1, width)
        out[top : top + w, left : right + 1] = colour
        out[max(bottom - w + 1, 0) : bottom + 1, left : right + 1] = colour
        out[top : bottom + 1, left : left + w] = colour
        out[top : bottom + 1, max(right - w + 1, 0) : right + 1] = colour
    return out


def blend_overlay(
    image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.4, region: bool = False
) -> np.ndarray:
    """Blend a heatmap over a grey image; both ``(H, W)`` in [0, 1] -> RGB uint8.

    Weak evidence stays transparent (blend weight scales with the heatmap), so the
    anatomy under low-attention regions remains readable. With ``region``, the top
    region's outline and box are drawn on top (see :func:`draw_region`).
    """
    grey = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0)
    if grey.shape != heatmap.shape:
        raise ValueError(f"image {grey.shape} and heatmap {heatmap.shape} differ in shape")
    base = np.repeat(grey[..., None] * 255.0, 3, axis=-1)
    weight = alpha * np.clip(heatmap, 0.0, 1.0)[..., None]
    blended = (1.0 - weight) * base + weight * colourise(heatmap).astype(np.float32)
    result: np.ndarray = np.clip(blended, 0, 255).astype(np.uint8)
    return draw_region(result, heatmap) if region else result


def save_overlay(
    path: Path | str,
    image: np.ndarray,
    heatmap: np.ndarray,
    *,
    alpha: float = 0.4,
    scale: int = 2,
    region: bool = True,
) -> Path:
    """Write a PNG overlay, enlarged ``scale`` times for viewing, with the top region drawn."""
    rgb = blend_overlay(image, heatmap, alpha=alpha)
    picture = PilImage.fromarray(rgb, mode="RGB")
    if scale > 1:
        picture = picture.resize(
            (rgb.shape[1] * scale, rgb.shape[0] * scale), PilImage.Resampling.BILINEAR
        )
    if region:
        picture = PilImage.fromarray(
            draw_region(np.asarray(picture), heatmap, width=max(1, scale)), mode="RGB"
        )
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(out)
    return out


__all__ = ["CIVIDIS", "OUTLINE_COLOUR", "blend_overlay", "colourise", "draw_region", "save_overlay"]
