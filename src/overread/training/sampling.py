"""Epoch samplers that are seedable, shardable across DDP ranks and resumable mid-epoch.

The order of an epoch is a pure function of ``(seed, epoch)``: the same on
every rank and after a restart. Rank ``r`` of ``W`` takes ``order[r::W]`` (as
``torch.utils.data.DistributedSampler`` does), so that with a per-rank batch of
``B / W`` the union of the ranks' ``k``-th batches is exactly the ``k``-th batch
of a single process with batch ``B``. ``start_batch`` skips batches already
trained before an interruption.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


def class_balanced_weights(targets: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Per-sample weights that make every label's positives about equally likely to be drawn.

    A sample's weight is the largest ``1 / n_positive(c)`` over the labels ``c`` it
    is positive for; a sample positive for nothing gets ``1 / n_all_negative``. Rare
    findings are thus drawn about as often as common ones (multi-label version of
    inverse-frequency sampling). Weights are normalised to sum to 1.
    """
    t = np.asarray(targets, dtype=np.float64)
    m = np.ones_like(t) if mask is None else np.asarray(mask, dtype=np.float64)
    pos = (t * m) > 0.5
    n_pos = pos.sum(axis=0)
    inv = np.where(n_pos > 0, 1.0 / np.maximum(n_pos, 1), 0.0)
    w = (pos * inv[None, :]).max(axis=1)
    none = ~pos.any(axis=1)
    if none.any():
        w[none] = 1.0 / none.sum()
    total = w.sum()
    return w / total if total > 0 else np.full(len(t), 1.0 / max(len(t), 1))


class EpochSampler(Sampler[int]):
    """Shuffled or weighted (with replacement) order, sharded by rank, resumable.

    Parameters
    ----------
    n
        Dataset length.
    seed
        Base seed; the epoch order is drawn from ``seed * 1_000_003 + epoch``.
    weights
        Per-sample weights for class-balanced sampling; ``None`` shuffles.
    shuffle
        ``False`` gives the natural order (validation).
    rank, world_size
        DDP sharding; the order is padded (by wrapping) to a multiple of ``world_size``.
    """

    def __init__(
        self,
        n: int,
        *,
        seed: int = 0,
        weights: np.ndarray | None = None,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if n <= 0:
            raise ValueError("cannot sample from an empty dataset")
        self.n = n
        self.seed = seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_index = 0

    def set_epoch(self, epoch: int, start_batch: int = 0, batch_size: int = 1) -> None:
        """Select the epoch and skip the first ``start_batch`` per-rank batches."""
        self.epoch = epoch
        self.start_index = start_batch * batch_size

    def epoch_order(self) -> list[int]:
        """The full (unsharded) order of the current epoch."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g)
        else:
            order = torch.arange(self.n)
        idx: list[int] = order.tolist()
        padded = -(-self.n // self.world_size) * self.world_size
        idx += idx[: padded - len(idx)]
        return idx

    def __iter__(self) -> Iterator[int]:
        mine = self.epoch_order()[self.rank :: self.world_size]
        return iter(mine[self.start_index :])

    def __len__(self) -> int:
        return max(-(-self.n // self.world_size) - self.start_index, 0)

    def per_rank_len(self) -> int:
        """Samples per rank in a whole epoch (ignoring any resume offset)."""
        return -(-self.n // self.world_size)


__all__ = ["EpochSampler", "class_balanced_weights"]
