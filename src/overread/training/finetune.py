"""Two-phase fine-tuning: which parameters are the head, the blocks, and their learning rates.

Phase 1 trains only the classification head (the last linear layer) with the
body frozen and its batch-norm statistics fixed, so a fresh head does not send
large random gradients through pre-trained features. Phase 2 unfreezes all
layers at a lower rate, with *discriminative* rates: each block nearer the input
gets ``layer_decay`` times the rate of the block above it (Howard & Ruder,
ULMFiT 2018), since early features are the most general and need least change.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class NetworkParts:
    """The head parameters and the body parameters grouped into blocks (input first)."""

    head: list[nn.Parameter]
    blocks: list[tuple[str, list[nn.Parameter]]]
    head_name: str


def split_network(net: nn.Module) -> NetworkParts:
    """Find the head (the last ``nn.Linear``) and group the other parameters into blocks.

    Blocks are named by the shallowest prefix of the parameter names that gives at
    least three groups (for MONAI's DenseNet: ``features.conv0``,
    ``features.denseblock1``, ...), in the order the parameters are registered,
    which for these networks is input to output.
    """
    head_name = ""
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            head_name = name
    if not head_name:
        raise ValueError("network has no nn.Linear classification head")
    head_prefix = head_name + "."
    named = [(n, p) for n, p in net.named_parameters()]
    head = [p for n, p in named if n.startswith(head_prefix)]
    body = [(n, p) for n, p in named if not n.startswith(head_prefix)]
    blocks: OrderedDict[str, list[nn.Parameter]] = OrderedDict()
    for depth in (1, 2, 3):
        blocks = OrderedDict()
        for n, p in body:
            key = ".".join(n.split(".")[:depth])
            blocks.setdefault(key, []).append(p)
        if len(blocks) >= 3:
            break
    return NetworkParts(head=head, blocks=list(blocks.items()), head_name=head_name)


def set_phase(net: nn.Module, head_only: bool) -> None:
    """Freeze (``head_only``) or unfreeze the body."""
    parts = split_network(net)
    for _, params in parts.blocks:
        for p in params:
            p.requires_grad_(not head_only)
    for p in parts.head:
        p.requires_grad_(True)


def freeze_body_norms(net: nn.Module) -> None:
    """Put the body's batch-norm layers in eval mode (call after ``net.train()``) in phase 1."""
    parts = split_network(net)
    frozen = {id(p) for _, ps in parts.blocks for p in ps}
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and any(
            id(p) in frozen for p in module.parameters(recurse=False)
        ):
            module.eval()


def param_groups(
    net: nn.Module, *, lr: float, head_only: bool, layer_decay: float, weight_decay: float
) -> list[dict[str, object]]:
    """Optimiser parameter groups for a phase.

    The head gets ``lr``; in phase 2 block ``i`` of ``K`` (input first) gets
    ``lr * layer_decay ** (K - i)``. Biases and norm weights (1-D tensors) get no
    weight decay, the usual AdamW practice.
    """
    parts = split_network(net)

    def groups(name: str, params: list[nn.Parameter], rate: float) -> list[dict[str, object]]:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        out: list[dict[str, object]] = []
        if decay:
            out.append({"params": decay, "lr": rate, "weight_decay": weight_decay, "name": name})
        if no_decay:
            out.append({"params": no_decay, "lr": rate, "weight_decay": 0.0, "name": name})
        return out

    result = groups("head", parts.head, lr)
    if not head_only:
        k = len(parts.blocks)
        for i, (name, params) in enumerate(parts.blocks):
            result.extend(groups(name, params, lr * layer_decay ** (k - i)))
    return result


__all__ = ["NetworkParts", "freeze_body_norms", "param_groups", "set_phase", "split_network"]
