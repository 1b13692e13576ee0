"""From attenuation to stored pixel values: exposure, noise, blur, gamma, collimation.

Each site's detector and processing leave a signature that a model can latch on
to (and that monitoring should notice when it changes):

* **Quantum noise.** A pixel behind attenuation ``A`` receives on average
  ``N0 * exp(-A)`` photons; after the log transform the noise standard
  deviation in attenuation units is ``exp(A / 2) / sqrt(N0)``, so dense regions
  (mediastinum, abdomen) are noisier. Scintillator spread correlates it, which
  is modelled by drawing it at a coarser grid and upsampling.
* **Electronic noise**: white, signal-independent.
* **Blur**: the detector's point spread (Gaussian), applied to the smooth
  attenuation before upsampling.
* **Processing**: a window of attenuation mapped to the stored range through a
  site-specific gamma curve, a pedestal, and the bit depth.
* **Collimation**: unexposed borders come out bright (no signal reached them).
* **Heel effect**: a slow exposure gradient from top to bottom.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

Field = npt.NDArray[Any]


@dataclass(frozen=True)
class AcquisitionProfile:
    """How one scanner turns attenuation into stored pixel values."""

    photons: float = 20000.0  # N0 per stored pixel at 1024 x 1024
    electronic_noise: float = 0.006  # std, attenuation units
    blur: float = 0.9  # Gaussian sigma in stored pixels at 1024 x 1024
    gamma: float = 1.0
    window_low: float = 0.1  # attenuation shown as black
    window_high: float = 3.45  # attenuation shown as white
    pedestal: float = 0.02  # fraction of the range below black
    bits_stored: int = 12
    collimation: float = 0.02  # mean border fraction outside the collimated field
    heel: float = 0.04  # attenuation change from top to bottom edge
    field_of_view_mm: float = 430.0

    def drifted(self) -> AcquisitionProfile:
        """The profile after a detector or processing change (for drift studies).

        Lower dose (noisier), a flatter gamma, more blur, a shifted window and a
        different bit depth: a plausible "new detector, new processing" change.
        """
        return replace(
            self,
            photons=self.photons * 0.35,
            electronic_noise=self.electronic_noise * 1.8,
            blur=self.blur + 0.8,
            gamma=self.gamma * 0.72,
            window_low=self.window_low - 0.2,
            window_high=self.window_high + 0.35,
            pedestal=self.pedestal + 0.06,
            bits_stored=14 if self.bits_stored != 14 else 12,
        )


def _resize(field: Field, rows: int, cols: int) -> Field:
    """Bilinear resize of a float field (PIL is several times faster than scipy here)."""
    if field.shape == (rows, cols):
        return field.astype(np.float32, copy=False)
    img = Image.fromarray(np.ascontiguousarray(field, dtype=np.float32), mode="F")
    return np.array(img.resize((cols, rows), Image.Resampling.BILINEAR), dtype=np.float32)


def collimation_box(
    rows: int, cols: int, fraction: float, rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """Exposed field (row0, row1, col0, col1) for a border of about ``fraction``."""
    if fraction <= 0:
        return 0, rows, 0, cols
    f = np.clip(rng.normal(fraction, fraction * 0.4, size=4), 0.0, 0.12)
    return (
        int(f[0] * rows * 0.6),
        rows - int(f[1] * rows * 0.8),
        int(f[2] * cols),
        cols - int(f[3] * cols),
    )


def expose(
    attenuation: Field,
    rows: int,
    cols: int,
    profile: AcquisitionProfile,
    rng: np.random.Generator,
    monochrome1: bool = False,
) -> tuple[npt.NDArray[np.uint16], float, float]:
    """Simulate detector and processing; return stored pixels and a VOI window.

    Parameters
    ----------
    attenuation
        Attenuation on the internal grid.
    rows, cols
        Stored image size.
    profile
        The site's acquisition profile.
    rng
        Source of noise (and collimation jitter).
    monochrome1
        Store inverted values (MONOCHROME1: high value shown dark).

    Returns
    -------
    pixels, window_center, window_width
    """
    scale = rows / 1024.0
    # Detector blur, but at least half an internal pixel: hides the internal grid's
    # stair steps on sharp edges once upsampled.
    sigma_internal = max(0.5, profile.blur * scale * attenuation.shape[0] / rows)
    smooth = ndimage.gaussian_filter(attenuation, sigma_internal, truncate=2.5)
    heel = np.linspace(-0.5, 0.5, smooth.shape[0], dtype=np.float32) * profile.heel
    smooth = smooth + heel[:, None]
    # Noise standard deviation is a smooth function of attenuation: compute it on
    # the internal grid and upsample, instead of exponentiating every stored pixel.
    photons = profile.photons / (scale * scale)  # per stored pixel: scales with its area
    std = np.sqrt(np.exp(np.minimum(smooth, 4.5)) / photons + profile.electronic_noise**2)
    levels = 4096
    gain = (levels - 1) / (profile.window_high - profile.window_low)
    index_smooth = _resize((smooth - profile.window_low) * gain, rows, cols)
    index_std = _resize(std * gain, rows, cols)
    # Detector spread correlates the noise: draw it coarser for blurrier detectors.
    coarse_r = max(8, int(rows / (1.0 + 0.5 * profile.blur)))
    coarse_c = max(8, int(cols / (1.0 + 0.5 * profile.blur)))
    coarse = rng.standard_normal((coarse_r, coarse_c), dtype=np.float32)
    coarse *= np.float32((1.0 + 0.5 * profile.blur) ** 0.6)  # keep the per-pixel std
    index_std *= _resize(coarse, rows, cols)
    index_smooth += index_std
    x = index_smooth
    r0, r1, c0, c1 = collimation_box(rows, cols, profile.collimation, rng)
    # Map through the site's processing curve with a lookup table.
    np.clip(x, 0, levels - 1, out=x)
    index = x.astype(np.int16)
    max_value = (1 << profile.bits_stored) - 1
    curve = np.linspace(0.0, 1.0, levels) ** profile.gamma
    lut = profile.pedestal + (1.0 - profile.pedestal) * curve
    lut_values = np.round(lut * max_value * 0.97).astype(np.uint16)
    pixels = lut_values[index]
    bright = np.uint16(round(max_value * 0.985))
    pixels[:r0] = bright
    pixels[r1:] = bright
    pixels[:, :c0] = bright
    pixels[:, c1:] = bright
    sample = pixels[r0:r1:8, c0:c1:8]
    lo, hi = np.percentile(sample, [1.0, 99.5]) if sample.size else (0.0, float(max_value))
    center = float((lo + hi) / 2.0)
    width = float(max(hi - lo, 16.0))
    if monochrome1:
        pixels = np.uint16(max_value) - pixels
        center = float(max_value) - center
    return pixels, round(center, 1), round(width, 1)
