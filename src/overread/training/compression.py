"""Smaller models: magnitude pruning and the size / speed / AUC trade-off.

Global unstructured L1 pruning (``torch.nn.utils.prune``) removes the smallest
weights of all convolutions and linear layers together, so layers that matter
less lose more. Unstructured sparsity shrinks the *compressed* file (zeros
compress) but does not speed up dense CPU kernels; the trade-off table says so
with measured numbers rather than assuming a speed-up.
"""

from __future__ import annotations

import copy
import gzip
import io
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune


@dataclass(frozen=True)
class ModelCost:
    """What a model costs and what it achieves."""

    name: str
    parameters: int
    nonzero_parameters: int
    size_bytes: int  # serialised state dict
    compressed_bytes: int  # gzip of the same
    ms_per_image: float  # CPU forward, batch of ``batch`` images
    mean_auc: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prunable(net: nn.Module) -> list[tuple[nn.Module, str]]:
    """The (module, "weight") pairs global pruning acts on: convolutions and linear layers."""
    return [
        (m, "weight") for m in net.modules() if isinstance(m, nn.Conv2d | nn.Conv3d | nn.Linear)
    ]


def magnitude_prune(net: nn.Module, amount: float, *, permanent: bool = True) -> nn.Module:
    """Zero the ``amount`` fraction of smallest-magnitude weights, globally, in place."""
    targets = prunable(net)
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
    if permanent:
        for module, name in targets:
            prune.remove(module, name)  # type: ignore[no-untyped-call]
    return net


def sparsity(net: nn.Module) -> float:
    """Fraction of zero weights among the prunable tensors."""
    total = zeros = 0
    for module, name in prunable(net):
        w = getattr(module, name)
        total += w.numel()
        zeros += int((w == 0).sum())
    return zeros / max(total, 1)


def measure(
    net: nn.Module,
    name: str,
    input_shape: tuple[int, int, int],
    *,
    evaluate: Callable[[nn.Module], float | None] | None = None,
    batch: int = 8,
    repeats: int = 5,
) -> ModelCost:
    """Size, sparsity, CPU latency and (via ``evaluate``) mean AUC of ``net``."""
    net = copy.deepcopy(net).cpu().eval()
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    raw = buffer.getvalue()
    params = sum(p.numel() for p in net.parameters())
    nonzero = sum(int((p != 0).sum()) for p in net.parameters())
    x = torch.rand(batch, *input_shape)
    with torch.no_grad():
        net(x)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            net(x)
        elapsed = time.perf_counter() - start
    return ModelCost(
        name=name,
        parameters=params,
        nonzero_parameters=nonzero,
        size_bytes=len(raw),
        compressed_bytes=len(gzip.compress(raw, compresslevel=6)),
        ms_per_image=1000 * elapsed / (repeats * batch),
        mean_auc=evaluate(net) if evaluate is not None else None,
    )


__all__ = ["ModelCost", "magnitude_prune", "measure", "prunable", "sparsity"]
