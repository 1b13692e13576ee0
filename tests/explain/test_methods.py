"""Every explanation method on every kind of network the factory builds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from overread.explain import (
    EXPLAIN_METHODS,
    IntegratedGradients,
    Occlusion,
    default_target_layer_name,
    explain_maps,
    parse_method,
)
from overread.models import build_network

from .conftest import SIZE, SQUARE, square_batch


def _tiny(architecture: str) -> tuple[nn.Module, int]:
    """A small network of each family and the input side it takes."""
    torch.manual_seed(0)
    if architecture == "cxr-convnet":
        kwargs = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8}
        return build_network(architecture, num_classes=3, **kwargs).eval(), 32
    if architecture == "vit":
        kwargs = {
            "image_size": 32,
            "patch_size": 8,
            "hidden_size": 24,
            "mlp_dim": 48,
            "num_layers": 1,
            "num_heads": 2,
        }
        return build_network(architecture, num_classes=3, **kwargs).eval(), 32
    net = build_network(architecture, num_classes=3, init_features=8, growth_rate=4)
    return net.eval(), 32


@pytest.mark.parametrize("architecture", ["cxr-convnet", "densenet-tiny", "vit"])
@pytest.mark.parametrize("method", EXPLAIN_METHODS)
def test_every_method_gives_unit_maps_of_the_input_size(architecture: str, method: str) -> None:
    net, side = _tiny(architecture)
    if method == "cam" and architecture == "vit":
        with pytest.raises(ValueError, match="global-average-pool"):
            explain_maps(net, torch.rand(2, 1, side, side), method, [0, 2])
        return
    maps = explain_maps(net, torch.rand(2, 1, side, side), method, [0, 2])
    assert maps.shape == (2, 2, side, side)
    assert maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert all(p.grad is None for p in net.parameters())
    assert net.training is False


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["efficientnet-b0", "seresnet50"])
def test_gradient_methods_on_the_larger_monai_networks(architecture: str) -> None:
    torch.manual_seed(0)
    net = build_network(architecture, num_classes=2).eval()
    for method in ("gradcam", "gradcam++", "integrated-gradients"):
        maps = explain_maps(net, torch.rand(1, 1, 64, 64), method, [1])
        assert maps.shape == (1, 1, 64, 64) and 0.0 <= maps.min() <= maps.max() <= 1.0


def test_default_layers_per_architecture() -> None:
    assert default_target_layer_name(_tiny("cxr-convnet")[0]) == "features"
    assert default_target_layer_name(_tiny("densenet-tiny")[0]) == "features"
    assert default_target_layer_name(_tiny("vit")[0]) == "vit.blocks.0.norm1"


def test_target_layer_by_name_changes_the_map(square_net: nn.Module) -> None:
    x, _, _ = square_batch(2, np.random.default_rng(5))
    last = explain_maps(square_net, x, "gradcam", [0])
    earlier = explain_maps(square_net, x, "gradcam", [0], target_layer="features.2")
    assert earlier.shape == last.shape
    assert not np.allclose(earlier, last)
    with pytest.raises(ValueError, match=r"no layer 'features\.99'"):
        explain_maps(square_net, x, "gradcam", [0], target_layer="features.99")


def test_method_names() -> None:
    assert parse_method("Grad-CAM++") == "gradcam++"
    assert parse_method("integrated_gradients") == "integrated-gradients"
    with pytest.raises(ValueError, match="unknown explanation method 'lime'"):
        parse_method("lime")


def test_integrated_gradients_completeness(square_net: nn.Module) -> None:
    x, _, _ = square_batch(1, np.random.default_rng(6))
    attributions = IntegratedGradients(square_net, steps=64).attributions(x, [0])
    with torch.no_grad():
        change = (square_net(x) - square_net(torch.zeros_like(x)))[:, 0].numpy()
    totals = attributions.reshape(1, -1).sum(axis=1)
    np.testing.assert_allclose(totals, change, rtol=0.05, atol=0.05)
    assert np.abs(change).max() > 0.5  # the check means something


class _RegionLogit(nn.Module):
    """Logit = 10 x the mean of one fixed region: only that region is informative."""

    def __init__(self, top: int, left: int, side: int) -> None:
        super().__init__()
        self.box = (top, left, side)
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, left, side = self.box
        region = x[:, :, top : top + side, left : left + side].mean(dim=(1, 2, 3))
        return (self.scale * region - 5.0)[:, None]


def test_occlusion_peaks_on_the_informative_region() -> None:
    net = _RegionLogit(8, 28, 10)
    x = torch.full((1, 1, SIZE, SIZE), 0.2)
    x[:, :, 8:18, 28:38] = 0.9
    maps = Occlusion(net, patch=8, stride=4)(x, [0])
    peak = np.unravel_index(np.argmax(maps[0, 0]), maps[0, 0].shape)
    assert 8 <= peak[0] < 18 and 28 <= peak[1] < 38
    assert maps[0, 0, 40:, :20].max() == 0.0  # far from the region: no effect


def test_occlusion_finds_the_square(square_net: nn.Module) -> None:
    x, _, corners = square_batch(2, np.random.default_rng(7))
    maps = Occlusion(square_net)(x[:1], [0])
    r, c = corners[0]
    pr, pc = np.unravel_index(np.argmax(maps[0, 0]), maps[0, 0].shape)
    assert r - 6 <= pr < r + SQUARE + 6 and c - 6 <= pc < c + SQUARE + 6
