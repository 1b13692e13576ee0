"""Harmonisation steps: histogram matching, CLAHE, z-score, the vendor-LUT choice, the spec."""

from __future__ import annotations

import numpy as np
import pytest

from overread.errors import ConfigError
from overread.imaging.image import Image, ImageMetadata
from overread.imaging.transforms import (
    Clahe,
    Harmonisation,
    HistogramMatch,
    VoiWindow,
    ZScoreNormalize,
    build_chain,
    cxr_chain,
    reference_quantiles,
)
from overread.imaging.transforms.harmonise import REFERENCE_LEVELS, clahe


def _image(pixels: np.ndarray) -> Image:
    return Image(pixels.astype(np.float32), ImageMetadata())


def _film(gamma: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:96, 0:96] / 96.0
    base = 0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y) + rng.normal(0, 0.05, (96, 96))
    return np.clip(base, 0, 1) ** gamma


def test_histogram_matching_brings_two_sites_to_the_reference() -> None:
    site_a, site_b = _film(0.6), _film(1.8, seed=1)
    reference = reference_quantiles([_film(1.0, seed=s) for s in range(3)])
    step = HistogramMatch(reference)
    levels = [10, 50, 90]
    before = np.abs(np.percentile(site_a, levels) - np.percentile(site_b, levels)).max()
    a = step(_image(site_a)).pixels
    b = step(_image(site_b)).pixels
    after = np.abs(np.percentile(a, levels) - np.percentile(b, levels)).max()
    assert before > 0.2 and after < 0.02
    ref = dict(zip(REFERENCE_LEVELS, reference, strict=True))
    assert np.percentile(a, 50) == pytest.approx(ref[50.0], abs=0.02)
    # Monotone: the ranking of pixels is kept.
    order = np.argsort(site_a.ravel(), kind="stable")
    assert np.all(np.diff(a.ravel()[order]) >= -1e-6)


def _slow_clahe(x: np.ndarray, clip: float, tiles: int, bins: int) -> np.ndarray:
    """Per-pixel CLAHE written the long way (the reference for the vectorised one)."""
    rows, cols = x.shape
    th, tw = -(-rows // tiles), -(-cols // tiles)
    padded = np.pad(x, ((0, th * tiles - rows), (0, tw * tiles - cols)), mode="edge")
    q = np.minimum((padded * bins).astype(int), bins - 1)
    lut = np.zeros((tiles, tiles, bins))
    for i in range(tiles):
        for j in range(tiles):
            h = np.bincount(q[i * th : (i + 1) * th, j * tw : (j + 1) * tw].ravel(), minlength=bins)
            limit = max(1.0, clip * th * tw / bins)
            h = h.astype(float)
            excess = np.clip(h - limit, 0, None).sum()
            h = np.minimum(h, limit) + excess / bins
            c = np.cumsum(h)
            lut[i, j] = c / c[-1]
    out = np.zeros_like(x)
    for r in range(rows):
        fy = (r + 0.5) / th - 0.5
        y0 = int(np.clip(np.floor(fy), 0, tiles - 1))
        y1 = min(y0 + 1, tiles - 1)
        wy = float(np.clip(fy - y0, 0, 1))
        for c in range(cols):
            fx = (c + 0.5) / tw - 0.5
            x0 = int(np.clip(np.floor(fx), 0, tiles - 1))
            x1 = min(x0 + 1, tiles - 1)
            wx = float(np.clip(fx - x0, 0, 1))
            k = q[r, c]
            top = lut[y0, x0, k] * (1 - wx) + lut[y0, x1, k] * wx
            bottom = lut[y1, x0, k] * (1 - wx) + lut[y1, x1, k] * wx
            out[r, c] = top * (1 - wy) + bottom * wy
    return out


def test_clahe_matches_the_per_pixel_definition_and_raises_local_contrast() -> None:
    x = 0.4 + 0.1 * _film(1.0)[:50, :38]  # low contrast, sides not multiples of the tiles
    fast = clahe(x.astype(np.float32), clip_limit=2.0, tiles=4, bins=64)
    slow = _slow_clahe(x, 2.0, 4, 64)
    assert fast.shape == x.shape
    np.testing.assert_allclose(fast, slow, atol=1e-5)
    # A higher clip limit lets more of the equalisation through: more local contrast.
    gentle = clahe(x.astype(np.float32), clip_limit=1.0, tiles=4, bins=64)
    strong = clahe(x.astype(np.float32), clip_limit=8.0, tiles=4, bins=64)
    assert strong.std() > fast.std() > gentle.std()
    assert strong.std() > 3 * x.std()
    assert fast.min() >= 0.0 and fast.max() <= 1.0


def test_zscore_centres_each_image() -> None:
    out = ZScoreNormalize(3.0)(_image(_film(1.7))).pixels
    assert out.min() >= 0 and out.max() <= 1
    assert float(np.mean(out)) == pytest.approx(0.5, abs=0.02)
    flat = ZScoreNormalize()(_image(np.full((8, 8), 0.3))).pixels
    assert np.all(flat == 0.5)


def test_chain_records_the_harmonisation_and_rebuilds_it_exactly() -> None:
    reference = reference_quantiles([_film(1.0)])
    h = Harmonisation.from_dict(
        {"vendor_lut": "ignore", "intensity": "histogram_match", "clahe": True}
    ).with_reference(reference)
    chain = cxr_chain(64, harmonisation=h)
    names = [step["name"] for step in chain.to_spec()]
    assert names[-3:] == ["histogram_match", "clahe", "resize"]
    window = next(t for t in chain if isinstance(t, VoiWindow))
    assert window.use_file is False
    rebuilt = build_chain(chain.to_spec())
    assert rebuilt.to_spec() == chain.to_spec()
    film = _image(_film(1.3))
    np.testing.assert_array_equal(rebuilt(film).pixels, chain(film).pixels)
    # The plain chain is unchanged by the default (no harmonisation).
    assert cxr_chain(64).to_spec() == cxr_chain(64, harmonisation=Harmonisation()).to_spec()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="unknown harmonisation"):
        Harmonisation.from_dict({"histogram": True})
    with pytest.raises(ConfigError):
        Harmonisation.from_dict({"intensity": "equalise"})
    with pytest.raises(ConfigError, match="no reference"):
        Harmonisation.from_dict({"intensity": "histogram_match"}).steps()
    with pytest.raises(ConfigError):
        HistogramMatch([0.5, 0.2], levels=[0, 100])
    with pytest.raises(ConfigError):
        Clahe(clip_limit=0.5)
    with pytest.raises(ConfigError):
        build_chain([{"name": "clahe", "tiles": 0}])
