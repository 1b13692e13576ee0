"""Faithfulness and localisation measures on cases whose answers are known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from overread.explain import explain_maps
from overread.explain.faithfulness import (
    mask_iou,
    noisy_linear_impute,
    perturbation_curves,
    pointing_hit,
    pointing_tolerance,
    randomised_copy,
    rank_correlation,
    road_scores,
    size_class,
)
from overread.explain.regions import peak, peak_region, region_box, region_outline, top_region

from .conftest import square_batch

SIDE = 48


class _RegionLogit(nn.Module):
    """Logit = 10 x the mean of one fixed region minus 5: only that region matters."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(10.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        region = x[:, :, 8:18, 28:38].mean(dim=(1, 2, 3))
        return (self.scale * region - 5.0)[:, None]


def _region_case() -> tuple[nn.Module, torch.Tensor, np.ndarray, np.ndarray]:
    x = torch.full((1, SIDE, SIDE), 0.2)
    x[:, 8:18, 28:38] = 0.9
    good = np.zeros((SIDE, SIDE), dtype=np.float32)
    good[8:18, 28:38] = 1.0
    noise = np.random.default_rng(0).random((SIDE, SIDE)).astype(np.float32)
    return _RegionLogit().eval(), x, good, noise


def test_deletion_auc_of_the_true_region_beats_a_random_map() -> None:
    net, x, good, noise = _region_case()
    curves = perturbation_curves(net, x, np.stack([good, noise]), [0, 0], steps=10)
    assert curves.deletion.shape == (2, 11) and curves.fractions[-1] == 1.0
    with torch.no_grad():
        original = float(torch.sigmoid(net(x[None]))[0, 0])
    # The curves start (deletion) and end (insertion) at the untouched image.
    np.testing.assert_allclose(curves.deletion[:, 0], original, rtol=1e-5)
    np.testing.assert_allclose(curves.insertion[:, -1], original, rtol=1e-5)
    good_auc, random_auc = curves.deletion_auc
    assert good_auc < 0.2 < 0.5 < random_auc
    assert curves.deletion[0, 1] < 0.1  # the first 10% holds the whole region


def test_one_map_is_measured_for_several_labels_at_once() -> None:
    net, x, good, _ = _region_case()
    shared = perturbation_curves(net, x, good[None], [0, 0], steps=4)
    single = perturbation_curves(net, x, good[None], [0], steps=4)
    np.testing.assert_allclose(shared.deletion[1], single.deletion[0])
    with pytest.raises(ValueError, match="2 maps but 3 label indices"):
        perturbation_curves(net, x, np.stack([good, good]), [0, 0, 0])


def test_road_removes_the_evidence_of_a_good_map_first() -> None:
    net, x, good, noise = _region_case()
    scores = road_scores(net, x, np.stack([good, noise]), [0, 0], fractions=(0.05, 0.3))
    assert scores.shape == (2, 2)
    assert scores[0, 0] < 0.2 and scores[1, 0] > 0.5
    assert scores[0, 0] < scores[1, 0] and scores[0, 1] < scores[1, 1]


def test_noisy_linear_imputation_restores_a_linear_ramp() -> None:
    ramp = np.tile(np.linspace(0.0, 1.0, 20, dtype=np.float32), (2, 20, 1))
    removed = np.zeros((20, 20), dtype=bool)
    removed[5:15, 6:12] = True
    filled = noisy_linear_impute(ramp, removed, noise=0.0)
    np.testing.assert_allclose(filled, ramp, atol=1e-5)  # a linear image is its own mean
    removed[0, :4] = True  # at the border, one-sided neighbours: close, within range
    filled = noisy_linear_impute(ramp, removed, noise=0.0)
    assert np.abs(filled - ramp).max() < 0.05 and filled.min() >= 0.0
    noisy = noisy_linear_impute(ramp, removed, noise=0.05, seed=1)
    assert np.array_equal(noisy[:, ~removed], ramp[:, ~removed])  # known pixels untouched
    assert 0.01 < float(np.std(noisy[:, removed] - ramp[:, removed])) < 0.1


def test_sanity_check_identical_weights_agree_randomised_ones_do_not(
    square_net: nn.Module,
) -> None:
    x, _, _ = square_batch(6, np.random.default_rng(8))  # half without a square
    maps = explain_maps(square_net, x, "gradcam", [0])
    same = rank_correlation(maps, explain_maps(square_net, x, "gradcam", [0]))
    np.testing.assert_allclose(same, 1.0, atol=1e-6)
    randomised = randomised_copy(square_net, seed=3)
    changed = [
        not torch.equal(a, b)
        for a, b in zip(square_net.parameters(), randomised.parameters(), strict=True)
    ]
    assert all(changed)
    shuffled = rank_correlation(maps, explain_maps(randomised, x, "gradcam", [0]))
    assert shuffled.shape == (6, 1)
    assert float(shuffled.mean()) < 0.6


def test_rank_correlation_of_constant_maps_is_zero() -> None:
    a = np.random.default_rng(0).random((1, 8, 8))
    assert rank_correlation(a, np.zeros_like(a))[0] == 0.0
    assert rank_correlation(np.zeros_like(a), np.zeros_like(a))[0] == 1.0
    assert rank_correlation(a, -a)[0] == pytest.approx(-1.0)


def test_pointing_game_with_tolerance() -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[12:20, 12:20] = True
    heat = np.zeros((30, 30), dtype=np.float32)
    heat[10, 10] = 1.0  # 2*sqrt(2) ~ 2.83 px from the mask's corner
    assert pointing_hit(heat, mask, 3)
    assert not pointing_hit(heat, mask, 2)
    heat[10, 10], heat[15, 15] = 0.5, 1.0
    assert pointing_hit(heat, mask, 0)
    assert not pointing_hit(np.zeros_like(heat), mask, 30)  # an empty map never hits
    assert pointing_tolerance(224) == 3 and pointing_tolerance(448) == 6


def test_mask_iou_of_a_known_overlap() -> None:
    heat = np.full((20, 20), 0.2, dtype=np.float32)
    heat[0:10, 0:10] = 1.0  # top region: 100 px (0.2 is below half the maximum)
    mask = np.zeros((20, 20), dtype=bool)
    mask[0:10, 5:15] = True  # 100 px, 50 shared
    assert mask_iou(heat, mask) == pytest.approx(50 / 150)
    assert mask_iou(np.zeros_like(heat), mask) == 0.0


def test_size_classes() -> None:
    assert [size_class(a) for a in (0.005, 0.0199, 0.02, 0.079, 0.08, 0.5)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]


def test_regions_peak_box_and_outline() -> None:
    heat = np.zeros((12, 12), dtype=np.float32)
    heat[2:5, 2:5] = 1.0  # a plateau: the peak is its centre
    heat[8:11, 7:10] = 0.6  # a second part of the top region
    assert peak(heat) == (3, 3)
    assert peak(np.zeros((3, 3))) is None
    assert int(top_region(heat).sum()) == 18
    assert region_box(peak_region(heat)) == (2, 2, 4, 4)
    outline = region_outline(peak_region(heat))
    assert int(outline.sum()) == 8 and not outline[3, 3]
