"""Foreign models made the way their own tools make them, for the onboarding tests.

A TorchScript file (``torch.jit.trace``), an ONNX file (``torch.onnx.export`` with a
fixed batch of one and its own tensor names), a MONAI bundle (``monai.bundle.init_bundle``
with a ``network_def`` and ``network_data_format`` metadata) and a DenseNet-121 state
dict in TorchXRayVision's layout (its ``DenseNet`` class structure: ``features`` with
``denseblockN.denselayerM.norm1/conv1/norm2/conv2``, ``transitionN``, ``norm5`` and a
``classifier``; 18 outputs in its ``default_pathologies`` order).
"""

from __future__ import annotations

import json
import warnings
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

LABELS = ["Atelectasis", "Cardiomegaly", "Pleural Effusion"]


class SmallNet(nn.Module):
    """A three-label CNN; ``sigmoid`` makes it give probabilities instead of logits."""

    def __init__(self, labels: int = len(LABELS), *, sigmoid: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(1, 8, 5, stride=4)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2)
        self.head = nn.Linear(16, labels)
        self.sigmoid = sigmoid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv2(torch.relu(self.conv(x)))).mean((2, 3))
        out = self.head(y) * 3.0
        return torch.sigmoid(out) if self.sigmoid else out


def write_torchscript(path: Path, *, size: int = 64, sigmoid: bool = True) -> SmallNet:
    net = SmallNet(sigmoid=sigmoid).eval()
    torch.jit.trace(net, torch.zeros(1, 1, size, size)).save(str(path))
    return net


def write_onnx(path: Path, *, size: int = 64) -> SmallNet:
    net = SmallNet(seed=1).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 1, size, size),),
            str(path),
            dynamo=False,
            input_names=["input.1"],
            output_names=["scores"],
        )
    return net


def write_monai_bundle(root: Path, *, size: int = 64) -> nn.Module:
    """A bundle folder made by ``monai.bundle.init_bundle`` around a small MONAI DenseNet."""
    from monai.bundle import init_bundle
    from monai.networks.nets import DenseNet

    config = {
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": len(LABELS),
        "init_features": 8,
        "growth_rate": 4,
        "block_config": [2, 2],
    }
    torch.manual_seed(2)
    net = DenseNet(**config).eval()  # type: ignore[arg-type]
    metadata = {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/"
        "0.8.1/meta_schema_20220324.json",
        "version": "0.2.0",
        "name": "Chest findings demo",
        "monai_version": "1.6.1",
        "description": "a tiny chest X-ray classifier for onboarding tests",
        "network_data_format": {
            "inputs": {
                "image": {
                    "type": "image",
                    "format": "magnitude",
                    "num_channels": 1,
                    "spatial_shape": [size, size],
                    "dtype": "float32",
                    "value_range": [0, 1],
                }
            },
            "outputs": {
                "pred": {
                    "type": "probabilities",
                    "format": "classes",
                    "num_channels": len(LABELS),
                    "spatial_shape": [1],
                    "dtype": "float32",
                    "value_range": [0, 1],
                    "channel_def": {str(i): label for i, label in enumerate(LABELS)},
                }
            },
        },
    }
    inference = {
        "imports": ["$import torch"],
        "bundle_root": ".",
        "network_def": {"_target_": "monai.networks.nets.DenseNet", **config},
    }
    init_bundle(str(root), network=net, metadata_str=metadata, inference_str=inference)
    assert json.loads((root / "configs" / "metadata.json").read_text())["version"] == "0.2.0"
    return net


# TorchXRayVision's DenseNet layout (torchvision's DenseNet with one input channel).


class _XrvDenseLayer(nn.Sequential):
    def __init__(self, num_input_features: int, growth_rate: int, bn_size: int) -> None:
        super().__init__()
        self.add_module("norm1", nn.BatchNorm2d(num_input_features))
        self.add_module("relu1", nn.ReLU(inplace=True))
        self.add_module(
            "conv1", nn.Conv2d(num_input_features, bn_size * growth_rate, 1, bias=False)
        )
        self.add_module("norm2", nn.BatchNorm2d(bn_size * growth_rate))
        self.add_module("relu2", nn.ReLU(inplace=True))
        self.add_module(
            "conv2", nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.cat([x, super().forward(x)], 1)


class XrvDenseNet(nn.Module):
    """DenseNet-121 with TorchXRayVision's module names; ``forward`` gives logits
    (TorchXRayVision applies its sigmoid and ``op_threshs`` outside the state dict)."""

    def __init__(self, num_classes: int = 18, seed: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        growth, blocks, features = 32, (6, 12, 24, 16), 64
        self.features = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(1, features, 7, stride=2, padding=3, bias=False)),
                    ("norm0", nn.BatchNorm2d(features)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("pool0", nn.MaxPool2d(3, stride=2, padding=1)),
                ]
            )
        )
        for i, count in enumerate(blocks):
            block = nn.Sequential()
            for j in range(count):
                block.add_module(
                    f"denselayer{j + 1}", _XrvDenseLayer(features + j * growth, growth, 4)
                )
            self.features.add_module(f"denseblock{i + 1}", block)
            features += count * growth
            if i != len(blocks) - 1:
                transition = nn.Sequential(
                    OrderedDict(
                        [
                            ("norm", nn.BatchNorm2d(features)),
                            ("relu", nn.ReLU(inplace=True)),
                            ("conv", nn.Conv2d(features, features // 2, 1, bias=False)),
                            ("pool", nn.AvgPool2d(2, stride=2)),
                        ]
                    )
                )
                self.features.add_module(f"transition{i + 1}", transition)
                features //= 2
        self.features.add_module("norm5", nn.BatchNorm2d(features))
        self.classifier = nn.Linear(features, num_classes)
        # Trained-looking batch-norm statistics, so a wrong mapping shows in the outputs.
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.weight.data.uniform_(0.8, 1.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.features(x)
        out = torch.relu(features)
        out = nn.functional.adaptive_avg_pool2d(out, (1, 1)).flatten(1)
        logits: torch.Tensor = self.classifier(out)
        return logits


def write_xrv_state_dict(path: Path) -> XrvDenseNet:
    net = XrvDenseNet().eval()
    torch.save(net.state_dict(), str(path))
    return net
