"""A tiny learnable multi-label task on tensors, and a script that trains on it.

Used in-process by the tests and as a subprocess (kill -9 resume, torchrun DDP):
``python synthetic_task.py --out DIR [--epochs N] [--sleep S] [--checkpoint-every K]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

LABELS = ["top", "middle", "bottom"]


class QuadrantDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """16x16 noise images; label c is positive when band c carries a bright blob.

    Label prevalences differ (0.5, 0.3, 0.1) so imbalance handling matters, and a
    fraction of labels is masked (uncertain) to exercise U-Ignore.
    """

    def __init__(self, n: int, seed: int = 0, masked_fraction: float = 0.1) -> None:
        rng = np.random.default_rng(seed)
        self.targets = (rng.random((n, 3)) < np.array([0.5, 0.3, 0.1])).astype(np.float32)
        self.mask = (rng.random((n, 3)) >= masked_fraction).astype(np.float32)
        images = rng.random((n, 1, 16, 16)).astype(np.float32) * 0.5
        for i in range(n):
            for c in range(3):
                if self.targets[i, c]:
                    row = 1 + 5 * c
                    col = int(rng.integers(1, 12))
                    images[i, 0, row : row + 4, col : col + 4] += 0.5
        self.images = np.clip(images, 0, 1)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.from_numpy(self.images[i]),
            torch.from_numpy(self.targets[i]),
            torch.from_numpy(self.mask[i]),
        )


class SmallNet(nn.Module):
    """Three conv blocks and a linear head, no batch norm (so DDP equals one process)."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 3, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = torch.relu(self.conv3(x))
        x = nn.functional.adaptive_max_pool2d(x, (3, 1)).flatten(1)
        return self.head(x)


def make_trainer(
    out: Path,
    *,
    epochs: int = 3,
    checkpoint_every: int = 0,
    sleep: float = 0.0,
    batch_size: int = 16,
    n_train: int = 160,
    head_epochs: int = 1,
):
    from overread.training import Trainer
    from overread.training.config import AugmentConfig, LossConfig, OptimConfig

    torch.manual_seed(0)
    net = SmallNet()
    callback = (lambda state: time.sleep(sleep)) if sleep else None
    return Trainer(
        net,
        QuadrantDataset(n_train, seed=1),
        QuadrantDataset(64, seed=2),
        output=out,
        optim=OptimConfig(
            lr=3e-3,
            batch_size=batch_size,
            epochs=epochs,
            head_epochs=head_epochs,
            warmup_epochs=0.5,
            layer_decay=0.8,
            body_lr_factor=0.5,
        ),
        loss=LossConfig(kind="bce", pos_weight=True, sampler="shuffle"),
        augment=AugmentConfig(enabled=True, max_gamma=0.1, max_rotate_deg=3),
        seed=7,
        device="cpu",
        checkpoint_every=checkpoint_every,
        log_every=2,
        progress=False,
        labels=LABELS,
        step_callback=callback,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--head-epochs", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    trainer = make_trainer(
        args.out,
        epochs=args.epochs,
        checkpoint_every=args.checkpoint_every,
        sleep=args.sleep,
        batch_size=args.batch_size,
        head_epochs=args.head_epochs,
    )
    trainer.fit()
    rank = trainer.ctx.rank
    torch.save(trainer.network.state_dict(), args.out / f"final-rank{rank}.pt")
    (args.out / f"done-rank{rank}.json").write_text(json.dumps({"world": trainer.ctx.world_size}))
    if trainer.ctx.enabled:
        import torch.distributed as dist

        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
