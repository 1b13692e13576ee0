"""Test-time augmentation: seeded, batch-independent views; no flip unless allowed."""

from __future__ import annotations

import numpy as np
import pytest

from overread.errors import ConfigError
from overread.imaging.tta import TestTimeAugmentation, ViewParameters, apply_view


def _batch(n: int = 3, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.uniform(0.2, 0.8, size=(n, 1, size, size)).astype(np.float32)
    x[:, :, :, : size // 3] = 1.0  # a bright band on the image's left (the patient's right)
    return x


def test_views_are_deterministic_and_start_with_the_original() -> None:
    tta = TestTimeAugmentation(views=5, seed=7)
    x = _batch()
    first = tta.views_of(x)
    assert first.shape == (5, *x.shape) and first.dtype == np.float32
    np.testing.assert_array_equal(first, tta.views_of(x))
    np.testing.assert_array_equal(first[0], x)
    assert not np.allclose(first[1], x)
    other = TestTimeAugmentation(views=5, seed=8).views_of(x)
    assert not np.allclose(first[1:], other[1:])


def test_a_view_of_an_image_does_not_depend_on_its_batch() -> None:
    tta = TestTimeAugmentation(views=4, seed=3)
    x = _batch(4)
    alone = tta.views_of(x[2:3])
    together = tta.views_of(x)
    np.testing.assert_allclose(alone[:, 0], together[:, 2], atol=1e-6)


def test_no_horizontal_flip_by_default() -> None:
    tta = TestTimeAugmentation(views=64, seed=1)
    assert not any(tta.parameters(k).flip for k in range(64))
    views = tta.views_of(_batch(1, 48))
    # The bright band stays on the left in every view.
    left = views[..., :8].mean(axis=(1, 2, 3, 4))
    right = views[..., -8:].mean(axis=(1, 2, 3, 4))
    assert np.all(left > right + 0.2)


def test_flip_only_where_the_package_allows_it() -> None:
    tta = TestTimeAugmentation(views=32, seed=1, horizontal_flip=True)
    flips = [tta.parameters(k).flip for k in range(1, 32)]
    assert any(flips) and not all(flips)
    x = _batch(1, 16)
    flipped = apply_view(x, ViewParameters(flip=True))
    np.testing.assert_array_equal(flipped, x[..., ::-1])


def test_views_stay_small_and_in_range() -> None:
    tta = TestTimeAugmentation(views=16, seed=0)
    for k in range(1, 16):
        v = tta.parameters(k)
        assert abs(np.degrees(v.angle)) <= 5.0 and abs(v.scale - 1) <= 0.05
        assert abs(v.shift_x) <= 0.06 and abs(v.shift_y) <= 0.06
        assert abs(np.log(v.gamma)) <= 0.15 + 1e-9 and abs(v.contrast - 1) <= 0.1
    views = tta.views_of(_batch())
    assert views.min() >= 0.0 and views.max() <= 1.0


def test_settings_round_trip_and_refuse_nonsense() -> None:
    tta = TestTimeAugmentation(views=3, seed=2, max_rotate_deg=2.0)
    assert TestTimeAugmentation.from_dict(tta.to_dict()) == tta
    with pytest.raises(ConfigError, match="unknown"):
        TestTimeAugmentation.from_dict({"views": 2, "vertical_flip": True})
    with pytest.raises(ConfigError):
        TestTimeAugmentation(views=0)
    with pytest.raises(ConfigError):
        TestTimeAugmentation(max_shift=-0.1)


def test_the_warp_samples_as_torch_grid_sample_does() -> None:
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F

    from overread.imaging.tta import _warp

    x = _batch(2, 40)
    theta = np.array([[0.97, -0.08, 0.05], [0.08, 0.97, -0.04]])
    grid = F.affine_grid(
        torch.tensor(theta, dtype=torch.float32).expand(2, 2, 3),
        [2, 1, 40, 40],
        align_corners=False,
    )
    expected = F.grid_sample(
        torch.from_numpy(x), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    ).numpy()
    np.testing.assert_allclose(_warp(x, theta), expected, atol=2e-5)
