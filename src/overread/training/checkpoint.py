"""Crash-safe checkpoints: everything needed to continue a run as if never stopped.

A checkpoint holds the model, optimiser, LR scheduler and AMP scaler states,
the loop position (epoch, batch within the epoch, global step), early-stopping
state, the metrics history and the RNG states. It is written to a temporary
file, flushed to disk and renamed over the old one, so a process killed with
SIGKILL at any instant leaves either the previous or the new checkpoint, never
a torn one.
"""

from __future__ import annotations

import os
import pickle
import random
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overread.errors import ConfigError


@dataclass
class LoopState:
    """Where the training loop is and what it has seen so far."""

    epoch: int = 0  # the epoch in progress (or next to start)
    batch_in_epoch: int = 0  # per-rank batches already trained in ``epoch``
    global_step: int = 0
    phase: str = ""  # "head" or "all"; "" before the first epoch
    best_metric: float = float("-inf")
    best_epoch: int = -1
    epochs_since_best: int = 0
    stopped_early: bool = False
    finished: bool = False
    loss_sum: float = 0.0  # running sums for the epoch in progress
    loss_count: int = 0
    step_losses: list[tuple[int, float]] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)


def rng_states() -> dict[str, Any]:
    """The states of every random generator the loop may touch."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore :func:`rng_states`."""
    torch.set_rng_state(states["torch"])
    if torch.cuda.is_available() and states.get("cuda"):
        torch.cuda.set_rng_state_all(states["cuda"])
    np.random.set_state(states["numpy"])
    random.setstate(states["python"])


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (temp file, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("wb") as fh:
        torch.save(payload, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


#: The non-tensor types a checkpoint holds besides plain data (numpy's RNG state is an
#: array): allowed when reading one, so no other pickled object can run code.
_CHECKPOINT_GLOBALS: list[Any] = [
    np.ndarray,
    np.dtype,
    type(np.dtype(np.uint32)),
    np._core.multiarray._reconstruct,  # type: ignore[attr-defined]
]


def read_torch_file(path: Path) -> Any:
    """``torch.load`` with ``weights_only=True`` (tensors, plain data and the numpy
    arrays of :func:`rng_states` only): a file that pickles anything else is refused
    instead of run.

    Raises
    ------
    ConfigError
        One line: the file pickles another object (never unpickled), or it is not a
        readable torch file.
    """
    try:
        with torch.serialization.safe_globals(_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        if found is None:
            raise ConfigError(f"{path}: not a readable torch file: {_first_line(exc)}") from None
        raise ConfigError(
            f"{path}: cannot read these weights safely: the file pickles {found.group(1)}, "
            "which is refused rather than run"
        ) from None
    except (OSError, RuntimeError, EOFError, KeyError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable torch file: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    payload = read_torch_file(path)
    if not isinstance(payload, dict) or "model" not in payload or "loop" not in payload:
        raise ConfigError(f"{path}: not a training checkpoint (no model or loop state)")
    return payload


def loop_to_dict(state: LoopState) -> dict[str, Any]:
    """Plain-data form of the loop state for the checkpoint."""
    return asdict(state)


def loop_from_dict(data: dict[str, Any]) -> LoopState:
    """Inverse of :func:`loop_to_dict`."""
    state = LoopState(**data)
    state.step_losses = [(int(s), float(v)) for s, v in state.step_losses]
    return state


__all__ = [
    "LoopState",
    "load_checkpoint",
    "loop_from_dict",
    "loop_to_dict",
    "read_torch_file",
    "rng_states",
    "save_checkpoint",
    "set_rng_states",
]
