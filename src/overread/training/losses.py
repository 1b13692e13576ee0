"""Multi-label losses for imbalanced chest X-ray labels, with ignore masks.

Every loss takes ``(logits, targets, mask)`` of shape ``(N, L)``. ``mask`` is 0
where a label must not contribute (U-Ignore: the report was uncertain, or the
label is blank). Losses are summed over unmasked elements and divided by the
number of *elements* ``N * L`` rather than by the number of unmasked ones: then
the loss of a global batch equals the mean of the per-rank losses of its
shards, which is what DistributedDataParallel's gradient averaging assumes.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


def positive_weights(
    targets: np.ndarray, mask: np.ndarray | None = None, *, max_weight: float = 50.0
) -> np.ndarray:
    """Per-class ``n_negative / n_positive`` from a training split (Keras/PyTorch habit).

    Ignored entries are not counted. A class with no positives gets ``max_weight``
    (rather than infinity), and every weight is clipped to ``[1/max_weight, max_weight]``
    so that a near-empty class cannot dominate the gradient.
    """
    t = np.asarray(targets, dtype=np.float64)
    m = np.ones_like(t) if mask is None else np.asarray(mask, dtype=np.float64)
    pos = (t * m).sum(axis=0)
    neg = ((1.0 - t) * m).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(pos > 0, neg / np.maximum(pos, 1e-12), max_weight)
    return np.clip(w, 1.0 / max_weight, max_weight).astype(np.float32)


def _reduce(elementwise: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is not None:
        elementwise = elementwise * mask
    return elementwise.sum() / max(elementwise.numel(), 1)


class MaskedBCEWithLogits(nn.Module):
    """BCE-with-logits with an optional per-class ``pos_weight`` and an ignore mask.

    ``label_weight`` (per class, default 1) scales each label's whole term, positives
    and negatives alike: more of the gradient for a label that is hard to learn.
    """

    def __init__(
        self, pos_weight: torch.Tensor | None = None, label_weight: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.pos_weight: torch.Tensor | None
        self.label_weight: torch.Tensor | None
        self.register_buffer("pos_weight", pos_weight)
        self.register_buffer("label_weight", label_weight)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        pw = None if self.pos_weight is None else self.pos_weight.to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(
            logits.float(), targets.float(), pos_weight=pw, reduction="none"
        )
        if self.label_weight is not None:
            loss = loss * self.label_weight
        return _reduce(loss, mask)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al., ICCV 2017): down-weights easy examples by ``(1 - p_t)^gamma``.

    ``pos_weight`` (if given) plays the role of the paper's alpha, per class.
    With ``gamma = 0`` and no ``pos_weight`` this is exactly BCE. ``label_weight`` as
    in :class:`MaskedBCEWithLogits`.
    """

    def __init__(
        self,
        gamma: float = 2.0,
        pos_weight: torch.Tensor | None = None,
        label_weight: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.pos_weight: torch.Tensor | None
        self.label_weight: torch.Tensor | None
        self.register_buffer("pos_weight", pos_weight)
        self.register_buffer("label_weight", label_weight)

    def forward(
        self, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        logits = logits.float()
        targets = targets.float()
        bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = (1 - p_t).pow(self.gamma) * bce
        if self.pos_weight is not None:
            loss = loss * (targets * self.pos_weight + (1 - targets))
        if self.label_weight is not None:
            loss = loss * self.label_weight
        return _reduce(loss, mask)


class DistillationLoss(nn.Module):
    """Hinton et al. (2015) distillation for multi-label outputs.

    ``alpha * hard + (1 - alpha) * T^2 * BCE(student / T, sigmoid(teacher / T))``:
    the soft term matches the teacher's per-label probabilities softened by
    temperature ``T``; ``T^2`` keeps its gradient scale comparable to the hard term.
    Masked labels still get the soft term: the teacher has an opinion on them.
    """

    def __init__(self, hard: nn.Module, alpha: float = 0.5, temperature: float = 2.0) -> None:
        super().__init__()
        self.hard = hard
        self.alpha = alpha
        self.temperature = temperature

    def forward(
        self,
        logits: torch.Tensor,
        targets: torch.Tensor,
        mask: torch.Tensor | None,
        teacher_logits: torch.Tensor,
    ) -> torch.Tensor:
        t = self.temperature
        soft_targets = torch.sigmoid(teacher_logits.float() / t)
        soft = F.binary_cross_entropy_with_logits(logits.float() / t, soft_targets)
        hard: torch.Tensor = self.hard(logits, targets, mask)
        return self.alpha * hard + (1 - self.alpha) * (t * t) * soft


def build_loss(
    kind: str,
    *,
    pos_weight: torch.Tensor | None = None,
    focal_gamma: float = 2.0,
    label_weight: torch.Tensor | None = None,
) -> nn.Module:
    """The loss named in the configuration."""
    if kind == "bce":
        return MaskedBCEWithLogits(pos_weight, label_weight)
    if kind == "focal":
        return FocalLoss(focal_gamma, pos_weight, label_weight)
    raise ValueError(f"unknown loss {kind!r}")


__all__ = [
    "DistillationLoss",
    "FocalLoss",
    "MaskedBCEWithLogits",
    "build_loss",
    "positive_weights",
]
