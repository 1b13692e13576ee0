from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from overread.training.losses import (
    DistillationLoss,
    FocalLoss,
    MaskedBCEWithLogits,
    build_loss,
    positive_weights,
)


def test_positive_weights_are_negative_to_positive_ratio_ignoring_masked() -> None:
    targets = np.array([[1, 0], [0, 0], [0, 1], [0, 0], [1, 0]], dtype=np.float32)
    mask = np.array([[1, 1], [1, 1], [1, 0], [1, 1], [1, 1]], dtype=np.float32)
    w = positive_weights(targets, mask, max_weight=50)
    assert w[0] == pytest.approx(3 / 2)
    # Column 1: its only positive is masked, so it has no positives: capped, not infinite.
    assert w[1] == pytest.approx(50)


def test_positive_weights_are_clipped() -> None:
    targets = np.zeros((1000, 1), dtype=np.float32)
    targets[0] = 1
    assert positive_weights(targets, max_weight=10)[0] == pytest.approx(10)


def test_bce_pos_weight_scales_positive_terms_only() -> None:
    logits = torch.tensor([[0.3, -1.0]])
    targets = torch.tensor([[1.0, 0.0]])
    plain = MaskedBCEWithLogits()(logits, targets)
    weighted = MaskedBCEWithLogits(torch.tensor([3.0, 3.0]))(logits, targets)
    pos = F.binary_cross_entropy_with_logits(logits[0, 0], targets[0, 0])
    neg = F.binary_cross_entropy_with_logits(logits[0, 1], targets[0, 1])
    assert plain.item() == pytest.approx(((pos + neg) / 2).item(), rel=1e-6)
    assert weighted.item() == pytest.approx(((3 * pos + neg) / 2).item(), rel=1e-6)


def test_masked_labels_do_not_contribute_loss_or_gradient() -> None:
    logits = torch.tensor([[2.0, -3.0, 0.5]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0, 1.0]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])
    loss = MaskedBCEWithLogits()(logits, targets, mask)
    loss.backward()
    assert logits.grad is not None
    assert logits.grad[0, 1].item() == 0.0
    assert logits.grad[0, 0].item() != 0.0
    # Changing the masked target changes nothing.
    other = MaskedBCEWithLogits()(logits.detach(), torch.tensor([[0.0, 0.0, 1.0]]), mask)
    assert other.item() == pytest.approx(loss.item())


def test_loss_of_shards_averages_to_loss_of_batch() -> None:
    # Normalising by elements (not by unmasked count) is what makes DDP exact.
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g)
    targets = (torch.rand(8, 5, generator=g) > 0.5).float()
    mask = (torch.rand(8, 5, generator=g) > 0.3).float()
    loss = MaskedBCEWithLogits(torch.full((5,), 2.0))
    whole = loss(logits, targets, mask)
    halves = (loss(logits[:4], targets[:4], mask[:4]) + loss(logits[4:], targets[4:], mask[4:])) / 2
    assert whole.item() == pytest.approx(halves.item(), rel=1e-6)


def test_focal_with_gamma_zero_is_bce_and_downweights_easy_examples() -> None:
    logits = torch.tensor([[4.0, -0.2], [-4.0, 0.1]])
    targets = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert FocalLoss(gamma=0)(logits, targets).item() == pytest.approx(
        MaskedBCEWithLogits()(logits, targets).item(), rel=1e-6
    )
    easy = FocalLoss(gamma=2)(logits[:, :1], targets[:, :1]) / MaskedBCEWithLogits()(
        logits[:, :1], targets[:, :1]
    )
    hard = FocalLoss(gamma=2)(logits[:, 1:], targets[:, 1:]) / MaskedBCEWithLogits()(
        logits[:, 1:], targets[:, 1:]
    )
    assert easy.item() < 0.01 < hard.item()


def test_distillation_pulls_student_to_teacher() -> None:
    loss = DistillationLoss(MaskedBCEWithLogits(), alpha=0.0, temperature=2.0)
    teacher = torch.tensor([[3.0, -3.0]])
    targets = torch.zeros(1, 2)
    near = loss(torch.tensor([[3.0, -3.0]]), targets, None, teacher)
    far = loss(torch.tensor([[-3.0, 3.0]]), targets, None, teacher)
    assert near.item() < far.item()


def test_build_loss_rejects_unknown() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        build_loss("hinge")


@pytest.mark.parametrize("kind", ["bce", "focal"])
def test_a_label_weight_scales_that_label_term_alone(kind: str) -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    targets = (torch.rand(6, 3) > 0.5).float()
    mask = torch.ones(6, 3)
    mask[0, 1] = 0.0
    pos_weight = torch.tensor([2.0, 3.0, 0.5])
    plain = build_loss(kind, pos_weight=pos_weight)
    weighted = build_loss(kind, pos_weight=pos_weight, label_weight=torch.tensor([1.0, 4.0, 1.0]))
    per_label = []
    for j in range(3):  # one label at a time: the others masked out
        only = torch.zeros_like(mask)
        only[:, j] = mask[:, j]
        per_label.append((plain(logits, targets, only), weighted(logits, targets, only)))
    assert per_label[0][1] == pytest.approx(float(per_label[0][0]))
    assert per_label[1][1] == pytest.approx(4 * float(per_label[1][0]))
    assert per_label[2][1] == pytest.approx(float(per_label[2][0]))
    total = sum(float(p) for p, _ in per_label) + 3 * float(per_label[1][0])
    assert float(weighted(logits, targets, mask)) == pytest.approx(total, rel=1e-5)


def test_label_weights_follow_the_run_labels_and_refuse_unknown_names() -> None:
    from overread.errors import ConfigError
    from overread.training.trainer import label_weights

    assert label_weights({}, ["A", "B"]) is None
    assert label_weights({"B": 3.0}, ["A", "B", "C"]).tolist() == [1.0, 3.0, 1.0]
    with pytest.raises(ConfigError, match=r"loss.label_weights: 'Fractur' is not a label"):
        label_weights({"Fractur": 2.0}, ["Fracture"])


@pytest.mark.parametrize("weight", [0.0, -1.0, float("inf"), float("nan"), 1000.0])
def test_a_label_weight_is_a_positive_finite_number(weight: float) -> None:
    from pydantic import ValidationError

    from overread.training.config import LossConfig

    with pytest.raises(ValidationError, match="outside"):
        LossConfig(label_weights={"Fracture": weight})
