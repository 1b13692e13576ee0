"""Shared fixtures: a tiny network trained to find a bright square in noise."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from overread.models import build_network

SIZE = 48
SQUARE = 12


def square_batch(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Noise images; half carry a bright square (label 1). Returns images, labels, square corners."""
    images = rng.normal(0.3, 0.08, (n, 1, SIZE, SIZE)).astype(np.float32)
    labels = np.zeros((n, 1), dtype=np.float32)
    corners = np.full((n, 2), -1)
    for i in range(n):
        if i % 2 == 0:
            r, c = rng.integers(0, SIZE - SQUARE, size=2)
            images[i, 0, r : r + SQUARE, c : c + SQUARE] += 0.6
            labels[i] = 1
            corners[i] = (r, c)
    return torch.from_numpy(images), torch.from_numpy(labels), corners


def square_masks(corners: np.ndarray) -> np.ndarray:
    """Boolean masks ``(N, SIZE, SIZE)`` of the squares (all False where there is none)."""
    masks = np.zeros((len(corners), SIZE, SIZE), dtype=bool)
    for i, (r, c) in enumerate(corners):
        if r >= 0:
            masks[i, r : r + SQUARE, c : c + SQUARE] = True
    return masks


@pytest.fixture(scope="session")
def square_net() -> torch.nn.Module:
    """A tiny cxr-convnet trained for a few steps to detect a bright square."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = build_network("cxr-convnet", num_classes=1, widths=[8, 16], blocks=[1, 1], stem_width=8)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(40):
        x, y, _ = square_batch(24, rng)
        optimiser.zero_grad()
        loss_fn(net(x), y).backward()
        optimiser.step()
    return net.eval()


@pytest.fixture(scope="session")
def phantom_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 256-pixel phantom studies of seed 1 (the bundled model was trained on seed 0)."""
    from overread.phantom.cohort import generate_cohort

    out = tmp_path_factory.mktemp("phantom") / "cohort"
    generate_cohort(out, 4, seed=1, rows=256, cols=256, workers=1)
    return out
