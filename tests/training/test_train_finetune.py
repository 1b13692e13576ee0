from __future__ import annotations

import pytest
import torch
from synthetic_task import SmallNet

from overread.models import build_network
from overread.training.finetune import freeze_body_norms, param_groups, set_phase, split_network


def test_densenet_head_and_blocks_are_found() -> None:
    net = build_network("densenet-tiny", in_channels=1, num_classes=14)
    parts = split_network(net)
    assert parts.head_name == "class_layers.out"
    names = [name for name, _ in parts.blocks]
    assert names[0] == "features.conv0" and "features.denseblock3" in names
    total = sum(p.numel() for p in net.parameters())
    grouped = sum(p.numel() for p in parts.head) + sum(
        p.numel() for _, ps in parts.blocks for p in ps
    )
    assert grouped == total


def test_head_phase_freezes_body_and_trains_head_only() -> None:
    net = build_network("densenet-tiny", in_channels=1, num_classes=3)
    set_phase(net, head_only=True)
    trainable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"class_layers.out.weight", "class_layers.out.bias"}
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    groups = param_groups(net, lr=0.1, head_only=True, layer_decay=0.5, weight_decay=0.0)
    opt = torch.optim.SGD(groups)  # type: ignore[arg-type]
    net.train()
    freeze_body_norms(net)
    stats = net.features.norm0.running_mean.clone()
    loss = net(torch.randn(4, 1, 32, 32)).sum()
    loss.backward()
    opt.step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable
    # Frozen body's batch-norm statistics do not move either.
    assert torch.equal(stats, net.features.norm0.running_mean)
    set_phase(net, head_only=False)
    assert all(p.requires_grad for p in net.parameters())


def test_discriminative_rates_decay_towards_the_input() -> None:
    net = SmallNet()
    groups = param_groups(net, lr=1.0, head_only=False, layer_decay=0.5, weight_decay=0.01)
    rate = {g["name"]: g["lr"] for g in groups}
    assert rate == pytest.approx({"head": 1.0, "conv3": 0.5, "conv2": 0.25, "conv1": 0.125})
    # Biases are not weight-decayed.
    for g in groups:
        if all(p.ndim == 1 for p in g["params"]):  # type: ignore[attr-defined]
            assert g["weight_decay"] == 0.0
