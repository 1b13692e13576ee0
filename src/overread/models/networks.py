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


class ConvBnRelu(nn.Sequential):
    """A 3x3 (or 1x1) convolution, batch norm and ReLU: the unit INT8 runtimes fuse best."""

    def __init__(
        self, in_channels: int, out_channels: int, *, stride: int = 1, kernel: int = 3
    ) -> None:
        super().__init__(
            nn.Conv2d(
                in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False
            ),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class ResidualBlock(nn.Module):
    """Two conv-BN units with an identity (or strided 1x1) shortcut, ReLU after the sum."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = ConvBnRelu(in_channels, out_channels, stride=stride)
        self.conv2 = nn.Sequential(
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))
        return out


class CxrConvNet(nn.Module):
    """A small ResNet-style classifier built for fast INT8 inference on CPUs.

    Only convolutions, batch norms (folded into the convolutions on export), ReLUs,
    residual additions, one global average pool and one linear layer: every op has
    an integer kernel in ONNX Runtime, and there are no concatenations whose inputs
    would need a shared quantisation scale (the reason DenseNets gain little from
    INT8). The last convolutional feature map feeds the classifier through a global
    average pool only, so class activation maps are exact (Zhou et al., 2016).

    ``features(x)`` gives that map; ``classifier`` is the linear layer.

    ``pool="lse"`` replaces the average by a log-sum-exp pool of the class map:
    ``logit_c = (1/r) log mean_xy exp(r * cam_c(x, y))`` with ``cam_c`` the classifier
    applied at every position (:func:`pool_class_map`). The CAM is still the exact
    per-location logit and the score a smooth maximum of it (the mean as ``r -> 0``,
    the maximum as ``r -> inf``), so a finding that covers one cell of the map is not
    diluted by the other cells. The weights are the same as with ``pool="avg"``.

    ``last_stride=1`` keeps the last stage at the resolution of the one before it
    (no downsampling): the class map is twice as fine in each direction (16 x 16 at
    256 px instead of 8 x 8) for about four times the last stage's cost. The weights
    keep their shapes as long as the last stage's first block keeps its 1x1 shortcut,
    i.e. while it changes the width; so ``last_stride=1`` needs at least two stages and
    the last two widths to differ (otherwise it is refused), and then a
    ``last_stride=2`` network's weights load into it.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 14,
        widths: tuple[int, ...] = (32, 64, 128, 256),
        blocks: tuple[int, ...] = (1, 1, 2, 1),
        stem_width: int = 24,
        dropout_prob: float = 0.0,
        stem: str = "conv",
        pool: str = "avg",
        pool_r: float = 5.0,
        last_stride: int = 2,
    ) -> None:
        super().__init__()
        if len(widths) != len(blocks):
            raise TypeError("widths and blocks must have the same length")
        if pool not in POOLS:
            raise TypeError(f"pool must be one of {', '.join(POOLS)}, not {pool!r}")
        if isinstance(pool_r, bool) or not (
            isinstance(pool_r, (int, float)) and 0.0 < float(pool_r) <= 100.0
        ):
            raise TypeError(f"pool_r must be a number in (0, 100], not {pool_r!r}")
        if type(last_stride) is not int or last_stride not in (1, 2):
            raise TypeError(f"last_stride must be 1 or 2, not {last_stride!r}")
        if last_stride == 1 and (len(widths) < 2 or widths[-1] == widths[-2]):
            raise TypeError(
                "last_stride=1 needs at least two stages whose last two widths differ "
                f"(widths {list(widths)}): otherwise it does nothing or drops a weight"
            )
        self.pool_mode = pool
        self.pool_r = float(pool_r)
        if stem not in ("conv", "patch"):
            raise TypeError(f"stem must be 'conv' or 'patch', not {stem!r}")
        layers: list[nn.Module] = [
            ConvBnRelu(in_channels, stem_width, stride=2),
            ConvBnRelu(stem_width, stem_width),
        ]
        if stem == "patch":
            # A 2x2, stride-2 "patchify" convolution after the strided one: the stem
            # reaches 1/4 resolution before any 3x3 work at full width, so the costly
            # high-resolution layers shrink while every pixel still reaches the features.
            layers = [
                ConvBnRelu(in_channels, stem_width, stride=2),
                nn.Sequential(
                    nn.Conv2d(stem_width, stem_width, 2, stride=2, bias=False),
                    nn.BatchNorm2d(stem_width),
                    nn.ReLU(inplace=True),
                ),
            ]
        channels = stem_width
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for index in range(count):
                # The patch stem has already done the first stage's downsampling.
                stride = 2 if index == 0 and not (stem == "patch" and stage == 0) else 1
                if stage == len(widths) - 1 and index == 0 and stage > 0:
                    stride = min(stride, last_stride)
                layers.append(ResidualBlock(channels, width, stride=stride))
                channels = width
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout_prob)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pool_mode == "lse":
            feature_map = self.dropout(self.features(x))
            cam = nn.functional.conv2d(
                feature_map, self.classifier.weight[:, :, None, None], self.classifier.bias
            )
            return pool_class_map(cam, "lse", self.pool_r)
        pooled = torch.flatten(self.pool(self.features(x)), 1)
        logits: torch.Tensor = self.classifier(self.dropout(pooled))
        return logits


#: The ways :class:`CxrConvNet` pools its class map into logits.
POOLS = ("avg", "lse")


def pool_class_map(cam: torch.Tensor, pool: str = "avg", r: float = 5.0) -> torch.Tensor:
    """Logits ``(N, L)`` from a class activation map ``(N, L, h, w)``.

    ``avg``: the spatial mean. ``lse``: ``(1/r) log mean exp(r * cam)``, computed as
    ``m + (1/r) log mean exp(r * (cam - m))`` with ``m`` the map's maximum, so it
    cannot overflow (in torch or in the exported graph). Lies between the mean and
    the maximum of the map.
    """
    if pool == "avg":
        return cam.mean(dim=(2, 3))
    if pool != "lse":
        raise ValueError(f"unknown pool {pool!r}; known: {', '.join(POOLS)}")
    if not 0.0 < r <= 100.0:  # also refuses NaN
        raise ValueError(f"the log-sum-exp pool needs r in (0, 100], not {r!r}")
    peak = cam.amax(dim=(2, 3), keepdim=True)
    spread = torch.exp((cam - peak) * r).mean(dim=(2, 3))
    return peak.flatten(1) + torch.log(spread) / r


def cam_pool(network: nn.Module) -> tuple[str, float]:
    """How ``network`` pools its class map: ``("avg", 1.0)`` unless it says otherwise."""
    mode = getattr(network, "pool_mode", "avg")
    return (str(mode), float(getattr(network, "pool_r", 1.0))) if mode == "lse" else ("avg", 1.0)


def _cxr_convnet(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    for key in ("widths", "blocks"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return CxrConvNet(in_channels=in_channels, num_classes=num_classes, **kwargs)


def _ct_threshold(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    from overread.models.hu_threshold import build

    return build(in_channels, num_classes, **kwargs)


def _ct_unet3d(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """A 3-D MONAI UNet (``(N, C, D, H, W)`` -> per-voxel logits): CT lung/nodule segmentation."""
    from monai.networks.nets import UNet

    channels = tuple(kwargs.pop("channels", (8, 16, 32, 64)))
    return UNet(  # type: ignore[no-any-return]
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=channels,
        strides=tuple([2] * (len(channels) - 1)),
        num_res_units=int(kwargs.pop("num_res_units", 1)),
        # Batch norm, not MONAI's default instance norm: a per-patch normalisation would
        # erase the absolute HU level that tells lung from soft tissue.
        norm=kwargs.pop("norm", "BATCH"),
        **kwargs,
    )


def _cxr_unet2d(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """A 2-D MONAI UNet (``(N, C, H, W)`` -> per-pixel logits): chest X-ray lung fields."""
    from monai.networks.nets import UNet

    channels = tuple(kwargs.pop("channels", (8, 16, 32, 64, 128)))
    return UNet(  # type: ignore[no-any-return]
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=num_classes,
        channels=channels,
        strides=tuple([2] * (len(channels) - 1)),
        num_res_units=int(kwargs.pop("num_res_units", 1)),
        norm=kwargs.pop("norm", "BATCH"),
        **kwargs,
    )


def _ct_segresnet3d(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """A 3-D MONAI SegResNet with as many levels as ``channels`` (its first is the width)."""
    from monai.networks.nets import SegResNet

    channels = tuple(kwargs.pop("channels", (8, 16, 32, 64)))
    return SegResNet(  # type: ignore[no-any-return]
        spatial_dims=3,
        in_channels=in_channels,
        out_channels=num_classes,
        init_filters=int(channels[0]),
        norm=kwargs.pop("norm", "BATCH"),
        blocks_down=tuple([1] * len(channels)),
        blocks_up=tuple([1] * (len(channels) - 1)),
        **kwargs,
    )


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "densenet121": _densenet((6, 12, 24, 16)),
    "densenet169": _densenet((6, 12, 32, 32)),
    # A narrow, shallow DenseNet that trains on a CPU in minutes: the default phantom model.
    "densenet-tiny": _densenet((4, 6, 8), init_features=32, growth_rate=16),
    # A small residual conv-BN-ReLU net that quantises well: the default CXR model.
    "cxr-convnet": _cxr_convnet,
    "efficientnet-b0": _efficientnet("efficientnet-b0"),
    "efficientnet-b1": _efficientnet("efficientnet-b1"),
    "efficientnet-b2": _efficientnet("efficientnet-b2"),
    "efficientnet-b3": _efficientnet("efficientnet-b3"),
    "seresnet50": _seresnet50,
    "vit": _vit,
    # The HU-threshold CT baseline (3-D, two outputs): overread.models.hu_threshold.
    "ct-threshold": _ct_threshold,
    # 3-D segmentation nets (voxel logits, not a classifier): the CT lung/nodule model.
    "ct-unet3d": _ct_unet3d,
    "ct-segresnet3d": _ct_segresnet3d,
    # 2-D segmentation net (pixel logits): the chest X-ray lung-field model.
    "cxr-unet2d": _cxr_unet2d,
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


__all__ = ["ARCHITECTURES", "ConvBnRelu", "CxrConvNet", "ResidualBlock", "build_network"]
