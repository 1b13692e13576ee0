"""Network factory: MONAI architectures by name.

Every classifier overread trains or serves is built here, so a model package only
needs to record ``architecture`` and its keyword arguments to be rebuilt exactly.
No weights are ever downloaded (``pretrained`` is always off): this software must
run offline.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from monai.networks import nets
from torch import nn

from overread.errors import ModelPackageError


def _densenet(
    block_config: tuple[int, ...], init_features: int = 64, growth_rate: int = 32
) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
        net: nn.Module = nets.DenseNet(
            spatial_dims=2,
            in_channels=in_channels,
            out_channels=num_classes,
            init_features=kwargs.pop("init_features", init_features),
            growth_rate=kwargs.pop("growth_rate", growth_rate),
            block_config=tuple(kwargs.pop("block_config", block_config)),
            dropout_prob=kwargs.pop("dropout_prob", 0.0),
            **kwargs,
        )
        return net

    return build


def _efficientnet(variant: str) -> Callable[..., nn.Module]:
    def build(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
        net: nn.Module = nets.EfficientNetBN(
            variant,
            pretrained=False,
            spatial_dims=2,
            in_channels=in_channels,
            num_classes=num_classes,
            **kwargs,
        )
        return net

    return build


def _seresnet50(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    net: nn.Module = nets.SEResNet50(
        spatial_dims=2, in_channels=in_channels, num_classes=num_classes, pretrained=False, **kwargs
    )
    return net


def _vit(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    image_size = int(kwargs.pop("image_size", 224))
    return _ViTClassifier(
        nets.ViT(
            in_channels=in_channels,
            img_size=(image_size, image_size),
            patch_size=int(kwargs.pop("patch_size", 16)),
            spatial_dims=2,
            classification=True,
            num_classes=num_classes,
            **kwargs,
        )
    )


class _ViTClassifier(nn.Module):
    """MONAI's ViT returns (logits, hidden states); classifiers return logits only."""

    def __init__(self, vit: nn.Module) -> None:
        super().__init__()
        self.vit = vit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.vit(x)[0]
        return logits


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "densenet121": _densenet((6, 12, 24, 16)),
    "densenet169": _densenet((6, 12, 32, 32)),
    # A narrow, shallow DenseNet that trains on a CPU in minutes: the default phantom model.
    "densenet-tiny": _densenet((4, 6, 8), init_features=32, growth_rate=16),
    "efficientnet-b0": _efficientnet("efficientnet-b0"),
    "efficientnet-b1": _efficientnet("efficientnet-b1"),
    "efficientnet-b2": _efficientnet("efficientnet-b2"),
    "efficientnet-b3": _efficientnet("efficientnet-b3"),
    "seresnet50": _seresnet50,
    "vit": _vit,
}


def build_network(
    architecture: str, *, in_channels: int = 1, num_classes: int = 14, **kwargs: Any
) -> nn.Module:
    """Build an untrained 2-D classifier that maps ``(N, C, H, W)`` to ``(N, num_classes)`` logits.

    Raises
    ------
    ModelPackageError
        If ``architecture`` is unknown or its arguments are invalid.
    """
    try:
        factory = ARCHITECTURES[architecture]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ModelPackageError(f"unknown architecture {architecture!r}; known: {known}") from None
    try:
        return factory(in_channels, num_classes, **kwargs)
    except TypeError as exc:
        raise ModelPackageError(f"invalid arguments for {architecture}: {exc}") from None


__all__ = ["ARCHITECTURES", "build_network"]
