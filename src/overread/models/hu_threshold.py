"""The network of the HU-threshold CT baseline (see :mod:`overread.models.ct_baseline`).

It maps HU ``(N, 1, D, H, W)`` to two logit channels: ``lung``
``(lung_max_hu - HU) / softness`` and ``nodule`` ``(HU - nodule_min_hu) / softness``.
The thresholds are buffers, so they are in the package's state dict and hash.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class HuThreshold(nn.Module):
    """HU in, ``lung`` and ``nodule`` logits out (see the module)."""

    lung_max_hu: torch.Tensor
    nodule_min_hu: torch.Tensor
    softness_hu: torch.Tensor

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        lung_max_hu: float = -700.0,
        nodule_min_hu: float = -650.0,
        softness_hu: float = 25.0,
    ) -> None:
        super().__init__()
        if in_channels != 1 or num_classes != 2:
            raise TypeError("ct-threshold takes 1 input channel (HU) and gives 2 outputs")
        self.register_buffer("lung_max_hu", torch.tensor(float(lung_max_hu)))
        self.register_buffer("nodule_min_hu", torch.tensor(float(nodule_min_hu)))
        self.register_buffer("softness_hu", torch.tensor(float(softness_hu)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lung = (self.lung_max_hu - x) / self.softness_hu
        nodule = (x - self.nodule_min_hu) / self.softness_hu
        return torch.cat([lung, nodule], dim=1)


def build(in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """The architecture factory (``ARCHITECTURES["ct-threshold"]``)."""
    return HuThreshold(in_channels, num_classes, **kwargs)


__all__ = ["HuThreshold", "build"]
