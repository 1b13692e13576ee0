"""Learning-rate schedules as step-wise multipliers: linear warm-up, then cosine or one-cycle.

They are plain functions of the global step (no hidden state beyond the step
count), so a :class:`torch.optim.lr_scheduler.LambdaLR` built from them resumes
exactly from a checkpoint.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(
    total_steps: int, warmup_steps: int, floor: float = 0.01
) -> Callable[[int], float]:
    """Linear warm-up from ~0 to 1 over ``warmup_steps``, then cosine decay to ``floor``."""
    total = max(total_steps, 1)
    warm = min(max(warmup_steps, 0), total - 1) if total > 1 else 0

    def factor(step: int) -> float:
        if warm > 0 and step < warm:
            return (step + 1) / warm
        progress = min((step - warm) / max(total - warm, 1), 1.0)
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def one_cycle(
    total_steps: int, warmup_steps: int, start: float = 0.04, end: float = 1e-3
) -> Callable[[int], float]:
    """Smith's one-cycle shape: cosine rise from ``start`` to 1, cosine fall to ``end``."""
    total = max(total_steps, 1)
    warm = min(max(warmup_steps, 1), total)

    def factor(step: int) -> float:
        if step < warm:
            p = step / warm
            return start + (1.0 - start) * 0.5 * (1.0 - math.cos(math.pi * p))
        p = min((step - warm) / max(total - warm, 1), 1.0)
        return end + (1.0 - end) * 0.5 * (1.0 + math.cos(math.pi * p))

    return factor


def constant(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Warm-up then a constant rate."""
    warm = max(warmup_steps, 0)

    def factor(step: int) -> float:
        return (step + 1) / warm if step < warm else 1.0

    return factor


SCHEDULES: dict[str, Callable[[int, int], Callable[[int], float]]] = {
    "cosine": warmup_cosine,
    "onecycle": one_cycle,
    "constant": constant,
}


def build_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int
) -> LambdaLR:
    """A LambdaLR applying the named schedule to every parameter group."""
    try:
        factor = SCHEDULES[kind](total_steps, warmup_steps)
    except KeyError:
        raise ValueError(f"unknown schedule {kind!r}; known: {', '.join(SCHEDULES)}") from None
    return LambdaLR(optimizer, factor)


__all__ = ["SCHEDULES", "build_scheduler", "constant", "one_cycle", "warmup_cosine"]
