from __future__ import annotations

import pytest
import torch

from overread.errors import ModelPackageError
from overread.models import build_network


@pytest.mark.parametrize("arch", ["densenet-tiny", "densenet121", "efficientnet-b0", "seresnet50"])
def test_network_maps_images_to_logits(arch: str) -> None:
    net = build_network(arch, in_channels=1, num_classes=14).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 1, 64, 64))
    assert out.shape == (2, 14)


def test_vit_returns_logits_only() -> None:
    net = build_network(
        "vit",
        in_channels=1,
        num_classes=3,
        image_size=32,
        patch_size=8,
        hidden_size=48,
        mlp_dim=96,
        num_layers=2,
        num_heads=4,
    ).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 32, 32))
    assert out.shape == (1, 3)


def test_unknown_architecture_is_refused() -> None:
    with pytest.raises(ModelPackageError, match="unknown architecture"):
        build_network("resnet9000")


def test_cxr_convnet_patch_stem_keeps_the_feature_map_size() -> None:
    conv = build_network("cxr-convnet", widths=[16, 24], blocks=[1, 1], stem_width=16).eval()
    patch = build_network(
        "cxr-convnet", widths=[16, 24], blocks=[1, 1], stem_width=16, stem="patch"
    ).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        assert patch(x).shape == (2, 14)
        assert conv.features(x).shape == patch.features(x).shape == (2, 24, 8, 8)
    with pytest.raises(ModelPackageError, match="stem"):
        build_network("cxr-convnet", stem="pixelshuffle")
