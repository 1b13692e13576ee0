"""Batch augmentation on tensors, drawn from an explicit generator.

Small shifts, rotations and zooms (patient positioning varies) and a gamma
change (exposure and processing vary between sites). Flips are deliberately
absent: the heart is on the left, and a left-right flip turns a normal chest
into situs inversus. Randomness comes only from the generator passed in, so a
resumed run draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from overread.training.config import AugmentConfig


def augment_batch(x: torch.Tensor, config: AugmentConfig, seeds: Sequence[int]) -> torch.Tensor:
    """Return an augmented copy of ``x`` (N, C, H, W) with values assumed in [0, 1].

    ``seeds`` gives one seed per sample (derived from the run seed, the epoch and
    the sample's index), so a sample is augmented the same way whichever rank or
    batch position it lands in: DDP and single-process runs see the same images.
    """
    if not config.enabled:
        return x
    n = x.shape[0]
    draws = torch.stack(
        [torch.rand(5, generator=torch.Generator().manual_seed(int(s))) * 2 - 1 for s in seeds]
    )
    angle = draws[:, 0] * math.radians(config.max_rotate_deg)
    scale = 1 + draws[:, 1] * config.max_scale
    tx, ty = draws[:, 2] * config.max_shift * 2, draws[:, 3] * config.max_shift * 2
    gamma = torch.exp(draws[:, 4] * config.max_gamma)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, tx], dim=1), torch.stack([sin, cos, ty], dim=1)], dim=1
    ).to(device=x.device, dtype=torch.float32)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    g = gamma.to(x.device).view(n, 1, 1, 1)
    return out.clamp(0, 1).pow(g).to(x.dtype)


__all__ = ["augment_batch"]
