"""Model-agnostic attributions: occlusion sensitivity and integrated gradients.

Neither needs a target layer, so both work for every network the factory builds,
transformers included. Occlusion (Zeiler and Fergus, ECCV 2014) slides a patch of
the image's mean value over the input and records how far each label's logit falls;
it costs one forward pass per patch position (shared by all labels). Integrated
gradients (Sundararajan et al., ICML 2017) integrates the gradient of a label's
logit along the straight path from a baseline (a black image) to the input; the
attributions add up to the logit's change along that path ("completeness").
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from overread.explain.cam import normalise_maps


def _eval(network: nn.Module) -> bool:
    was_training = network.training
    network.eval()
    return was_training


def _labels(label_indices: list[int] | None, logits: torch.Tensor) -> list[int]:
    return label_indices if label_indices is not None else list(range(int(logits.shape[1])))


class Occlusion:
    """Occlusion sensitivity: the logit drop when a patch is hidden, per pixel.

    Parameters
    ----------
    network
        A module mapping ``(N, C, H, W)`` to ``(N, L)`` logits.
    patch
        Side of the square patch in pixels; default an eighth of the image side
        (28 px at 224).
    stride
        Step between patch positions; default half the patch.
    batch_size
        Occluded images per forward pass.
    forward
        Scores the occluded images instead of the network when given: the same
        model under a faster runtime (logits out).

    Each pixel's value is the mean, over the patch positions covering it, of the
    label's logit on the original image minus its logit with the patch set to the
    image's mean; negative values (hiding made the label likelier) are clipped.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        patch: int | None = None,
        stride: int | None = None,
        batch_size: int = 32,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.network = network
        self.patch = patch
        self.stride = stride
        self.batch_size = batch_size
        self.forward = forward or network

    def _positions(self, rows: int, cols: int) -> tuple[int, list[tuple[int, int]]]:
        patch = self.patch or max(1, min(rows, cols) // 8)
        stride = self.stride or max(1, patch // 2)
        tops = list(range(0, max(rows - patch, 0) + 1, stride))
        lefts = list(range(0, max(cols - patch, 0) + 1, stride))
        if tops[-1] + patch < rows:
            tops.append(rows - patch)
        if lefts[-1] + patch < cols:
            lefts.append(cols - patch)
        return patch, [(t, left) for t in tops for left in lefts]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, label_indices: list[int] | None = None) -> np.ndarray:
        """Maps ``(N, len(label_indices), H, W)`` in [0, 1] at the input resolution."""
        was_training = _eval(self.network)
        try:
            logits = self.network(x)
            indices = _labels(label_indices, logits)
            rows, cols = int(x.shape[-2]), int(x.shape[-1])
            patch, positions = self._positions(rows, cols)
            out = np.zeros((x.shape[0], len(indices), rows, cols), dtype=np.float32)
            coverage = np.zeros((rows, cols), dtype=np.float32)
            for top, left in positions:
                coverage[top : top + patch, left : left + patch] += 1.0
            for n in range(x.shape[0]):
                fill = x[n].mean()
                for start in range(0, len(positions), self.batch_size):
                    chunk = positions[start : start + self.batch_size]
                    occluded = x[n : n + 1].repeat(len(chunk), 1, 1, 1)
                    for k, (top, left) in enumerate(chunk):
                        occluded[k, :, top : top + patch, left : left + patch] = fill
                    drops = (
                        logits[n, indices][None, :] - self.forward(occluded)[:, indices]
                    ).numpy()
                    for k, (top, left) in enumerate(chunk):
                        out[n, :, top : top + patch, left : left + patch] += drops[k][:, None, None]
            out /= np.maximum(coverage, 1.0)
        finally:
            self.network.train(was_training)
        return normalise_maps(out)


class IntegratedGradients:
    """Integrated gradients from a black baseline, by the trapezoidal rule.

    Parameters
    ----------
    network
        A module mapping ``(N, C, H, W)`` to ``(N, L)`` logits.
    steps
        Intervals on the path from the baseline to the input.
    batch_size
        Path points per forward pass.
    """

    def __init__(self, network: nn.Module, *, steps: int = 32, batch_size: int = 33) -> None:
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        self.network = network
        self.steps = steps
        self.batch_size = batch_size

    def attributions(
        self,
        x: torch.Tensor,
        label_indices: list[int] | None = None,
        baseline: torch.Tensor | None = None,
    ) -> np.ndarray:
        """Signed attributions ``(N, L, C, H, W)``; each sums to ``f(x) - f(baseline)``."""
        base = torch.zeros_like(x) if baseline is None else baseline.expand_as(x)
        alphas = torch.linspace(0.0, 1.0, self.steps + 1)
        weights = torch.full((self.steps + 1,), 1.0 / self.steps)
        weights[0] = weights[-1] = 0.5 / self.steps  # trapezoidal rule
        was_training = _eval(self.network)
        try:
            with torch.no_grad():
                indices = _labels(label_indices, self.network(x[:1]))
            out = np.zeros((x.shape[0], len(indices), *x.shape[1:]), dtype=np.float32)
            for n in range(x.shape[0]):
                delta = x[n] - base[n]
                total = torch.zeros((len(indices), *x.shape[1:]))
                for start in range(0, self.steps + 1, self.batch_size):
                    a = alphas[start : start + self.batch_size]
                    w = weights[start : start + self.batch_size]
                    path = (base[n][None] + a[:, None, None, None] * delta[None]).requires_grad_(
                        True
                    )
                    with torch.enable_grad():
                        logits = self.network(path)
                        for j, index in enumerate(indices):
                            (gradient,) = torch.autograd.grad(
                                logits[:, index].sum(), path, retain_graph=j < len(indices) - 1
                            )
                            total[j] += (gradient * w[:, None, None, None]).sum(dim=0)
                out[n] = (total * delta[None]).numpy()
        finally:
            self.network.train(was_training)
        return out

    def __call__(self, x: torch.Tensor, label_indices: list[int] | None = None) -> np.ndarray:
        """Maps ``(N, len(label_indices), H, W)`` in [0, 1]: positive attributions summed over channels."""
        return normalise_maps(self.attributions(x, label_indices).sum(axis=2))


__all__ = ["IntegratedGradients", "Occlusion"]
