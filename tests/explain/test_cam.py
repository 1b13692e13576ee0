from __future__ import annotations

import numpy as np
import pytest
import torch

from overread.explain import (
    GradCam,
    ScoreCam,
    blend_overlay,
    cam_to_heatmaps,
    colourise,
    normalise_maps,
)
from overread.models import CamClassifier, build_network

from .conftest import SIZE, SQUARE, square_batch, square_masks


def _peaks_in_square(maps: np.ndarray, corners: np.ndarray, margin: int = 3) -> float:
    hits = []
    for i, (r, c) in enumerate(corners):
        if r < 0:
            continue
        pr, pc = np.unravel_index(np.argmax(maps[i, 0]), maps[i, 0].shape)
        inside = r - margin <= pr < r + SQUARE + margin and c - margin <= pc < c + SQUARE + margin
        hits.append(inside)
    return float(np.mean(hits))


def test_trained_net_detects_the_square(square_net: torch.nn.Module) -> None:
    x, y, _ = square_batch(64, np.random.default_rng(1))
    with torch.no_grad():
        predicted = (square_net(x) > 0).float()
    assert (predicted == y).float().mean() > 0.9


def test_cam_peak_lies_in_the_square(square_net: torch.nn.Module) -> None:
    x, _, corners = square_batch(32, np.random.default_rng(2))
    with torch.no_grad():
        _, cam = CamClassifier(square_net)(x)
    maps = cam_to_heatmaps(cam.numpy(), (SIZE, SIZE))
    assert maps.shape == (32, 1, SIZE, SIZE)
    assert maps.min() >= 0 and maps.max() <= 1
    assert _peaks_in_square(maps, corners) >= 0.9


@pytest.mark.parametrize("plus_plus", [False, True])
def test_grad_cam_peak_lies_in_the_square(square_net: torch.nn.Module, plus_plus: bool) -> None:
    x, _, corners = square_batch(16, np.random.default_rng(3))
    square_net.zero_grad(set_to_none=True)
    maps = GradCam(square_net, plus_plus=plus_plus)(x)
    assert maps.shape == (16, 1, SIZE, SIZE)
    assert _peaks_in_square(maps, corners) >= 0.85
    assert square_net.training is False
    assert all(p.grad is None for p in square_net.parameters())


def test_score_cam_peak_lies_in_the_square(square_net: torch.nn.Module) -> None:
    x, _, corners = square_batch(8, np.random.default_rng(4))
    maps = ScoreCam(square_net)(x)
    assert maps.shape == (8, 1, SIZE, SIZE)
    assert _peaks_in_square(maps, corners) >= 0.75


def test_grad_cam_shapes_for_several_labels() -> None:
    torch.manual_seed(0)
    net = build_network("densenet-tiny", num_classes=3).eval()
    maps = GradCam(net)(torch.rand(2, 1, 64, 64), label_indices=[0, 2])
    assert maps.shape == (2, 2, 64, 64)


def test_normalise_and_overlay() -> None:
    maps = normalise_maps(np.array([[[-1.0, 0.0], [1.0, 3.0]], [[0.0, 0.0], [0.0, 0.0]]]))
    assert maps[0].max() == 1.0 and maps[0, 0, 0] == 0.0
    assert not maps[1].any()  # an all-zero map stays zero instead of dividing by zero
    colours = colourise(np.array([[0.0, 1.0]]))
    assert colours[0, 0, 2] > colours[0, 0, 0]  # low = blue
    assert colours[0, 1, 0] > colours[0, 1, 2]  # high = red
    rgb = blend_overlay(np.full((4, 4), 0.5), np.zeros((4, 4)))
    assert rgb.shape == (4, 4, 3) and (rgb == 127).all()  # no evidence: image unchanged


@pytest.fixture(scope="module")
def lse_square_net() -> torch.nn.Module:
    """The square detector with a log-sum-exp pool of its class map (r = 5)."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = build_network(
        "cxr-convnet", num_classes=1, widths=[8, 16], blocks=[1, 1], stem_width=8, pool="lse"
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    net.train()
    for _ in range(40):
        x, y, _ = square_batch(24, rng)
        optimiser.zero_grad()
        loss_fn(net(x), y).backward()
        optimiser.step()
    return net.eval()


def test_lse_cam_is_exact_and_finds_the_square(lse_square_net: torch.nn.Module) -> None:
    from overread.explain import explain_maps

    x, y, corners = square_batch(32, np.random.default_rng(2))
    with torch.no_grad():
        logits, cam = CamClassifier(lse_square_net)(x)
        assert torch.allclose(logits, lse_square_net(x), atol=1e-5)
    assert ((logits > 0).float() == y).float().mean() > 0.9
    # The logit is the LSE pool of the map the explanation shows, not its mean.
    pooled = torch.log(torch.exp(5.0 * cam.double()).mean(dim=(2, 3))) / 5.0
    assert torch.allclose(logits.double(), pooled, atol=1e-5)
    assert not torch.allclose(logits, cam.mean(dim=(2, 3)), atol=1e-2)
    maps = explain_maps(lse_square_net, x, "cam")
    assert np.allclose(maps, cam_to_heatmaps(cam.numpy(), (SIZE, SIZE)), atol=1e-6)
    # Localisation: on every image with a square the map is on average more than twice
    # as hot inside it as outside (its single peak can sit on the square's border cell).
    masks = square_masks(corners)
    for i in np.flatnonzero(corners[:, 0] >= 0):
        assert maps[i, 0][masks[i]].mean() > 2 * maps[i, 0][~masks[i]].mean()
