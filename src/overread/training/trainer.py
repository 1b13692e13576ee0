"""The training loop: generic over any network and any Dataset yielding ``(x, target, mask)``.

What it does, in order of each epoch: pick the phase (head only / all layers)
and build the optimiser and schedule for it; draw the epoch's order from
``(seed, epoch)``; train with AMP and gradient clipping, checkpointing every
``checkpoint_every`` steps; validate (per-class AUC); log a JSON line; keep the
best and last checkpoints; stop early when mean validation AUC stalls.

Determinism: the global torch RNG (dropout) and the augmentation generator are
re-seeded from ``(seed, global_step, rank)`` before every step, so the outcome
does not depend on where a run was interrupted and resumed. Under
``torchrun`` the same loop runs on every rank with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, Subset

from overread.errors import ConfigError
from overread.training.augment import augment_batch
from overread.training.checkpoint import (
    LoopState,
    load_checkpoint,
    loop_from_dict,
    loop_to_dict,
    rng_states,
    save_checkpoint,
    set_rng_states,
)
from overread.training.config import (
    AugmentConfig,
    DistillConfig,
    EarlyStopConfig,
    LossConfig,
    OptimConfig,
)
from overread.training.finetune import freeze_body_norms, param_groups, set_phase
from overread.training.losses import DistillationLoss, build_loss, positive_weights
from overread.training.metrics import mean_auc, per_class_auc
from overread.training.sampling import EpochSampler, class_balanced_weights
from overread.training.schedules import build_scheduler

log = logging.getLogger(__name__)

IndexedBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


class _Indexed(Dataset[tuple[int, Any, Any, Any]]):
    """Yields ``(index, x, target, mask)``: augmentation is seeded by the sample's index."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, Any, Any, Any]:
        x, target, mask = self.dataset[i]
        return i, x, target, mask


@dataclass(frozen=True)
class DistributedContext:
    """Rank and world size of this process (1 process: rank 0 of 1)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistributedContext:
    """Join the process group that ``torchrun`` describes in the environment (if any).

    gloo on CPU, NCCL when this rank has a GPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistributedContext()
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = torch.cuda.is_available() and device != "cpu"
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistributedContext(rank=rank, world_size=world, local_rank=local)


def resolve_device(name: str, ctx: DistributedContext) -> torch.device:
    """``auto`` picks this rank's GPU when there is one, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", ctx.local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} asked for, but no CUDA GPU is available")
    return device


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``mode`` on ``device`` (``None``: full precision).

    ``auto`` uses bf16 on a GPU that supports it (Ampere and later: no loss
    scaling needed), else fp16 with a GradScaler, and full precision on CPU:
    bf16 autocast on CPU is opt-in because its speed-up depends on the CPU.
    """
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return None
    if mode == "auto" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if mode in ("auto", "fp16"):
        if device.type != "cuda":
            raise ConfigError("amp = 'fp16' needs a CUDA device; use 'bf16' or 'off' on CPU")
        return torch.float16
    return torch.bfloat16


def label_weights(weights: dict[str, float], labels: list[str]) -> torch.Tensor | None:
    """Per-label loss weights in ``labels`` order (1 where not named), or None when none are."""
    if not weights:
        return None
    unknown = sorted(set(weights) - set(labels))
    if unknown:
        raise ConfigError(
            f"loss.label_weights: {', '.join(map(repr, unknown))} is not a label of this run "
            f"({', '.join(labels)})"
        )
    return torch.tensor([float(weights.get(label, 1.0)) for label in labels])


def dataset_labels(dataset: Dataset[Any]) -> tuple[np.ndarray, np.ndarray]:
    """``(targets, mask)`` of a dataset: its ``targets``/``mask`` attributes, else by iterating."""
    targets = getattr(dataset, "targets", None)
    mask = getattr(dataset, "mask", None)
    if isinstance(targets, np.ndarray) and isinstance(mask, np.ndarray):
        return targets.astype(np.float32), mask.astype(np.float32)
    rows = [(np.asarray(t), np.asarray(m)) for _, t, m in (dataset[i] for i in range(len(dataset)))]  # type: ignore[arg-type]
    return (
        np.stack([r[0] for r in rows]).astype(np.float32),
        np.stack([r[1] for r in rows]).astype(np.float32),
    )


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns."""

    history: list[dict[str, Any]]
    best_epoch: int
    best_metric: float
    stopped_early: bool
    output: Path


class Trainer:
    """Train ``network`` on ``train_set``, validating on ``val_set``.

    Parameters
    ----------
    network
        Any module mapping ``(N, C, H, W)`` to ``(N, L)`` logits with a final
        ``nn.Linear`` (the head, for two-phase fine-tuning).
    train_set, val_set
        Datasets yielding ``(x, target, mask)``; ``val_set`` may be ``None``
        (then the last epoch is the best and there is no early stopping).
    output
        Folder for ``checkpoints/{last,best}.pt`` and ``metrics.jsonl``.
    input_transform
        Applied to every batch after augmentation (e.g. normalisation to the
        package's input spec); it must be deterministic.
    teacher
        A trained network whose logits the student learns to match
        (knowledge distillation, with ``distill``).
    """

    def __init__(
        self,
        network: nn.Module,
        train_set: Dataset[Any],
        val_set: Dataset[Any] | None,
        *,
        output: Path,
        optim: OptimConfig | None = None,
        loss: LossConfig | None = None,
        augment: AugmentConfig | None = None,
        early_stop: EarlyStopConfig | None = None,
        seed: int = 0,
        device: str = "auto",
        checkpoint_every: int = 0,
        log_every: int = 20,
        progress: bool = True,
        num_workers: int = 0,
        input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        teacher: nn.Module | None = None,
        distill: DistillConfig | None = None,
        labels: list[str] | None = None,
        deterministic: bool = True,
        step_callback: Callable[[LoopState], None] | None = None,
    ) -> None:
        self.optim_cfg = optim or OptimConfig()
        self.loss_cfg = loss or LossConfig()
        self.augment_cfg = augment or AugmentConfig(enabled=False)
        self.early_cfg = early_stop or EarlyStopConfig()
        self.output = Path(output)
        self.seed = seed
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.progress = progress
        self.num_workers = num_workers
        self.input_transform = input_transform
        self.step_callback = step_callback
        self.ctx = init_distributed(device)
        self.device = resolve_device(device, self.ctx)
        self.amp = amp_dtype(self.optim_cfg.amp, self.device)
        if deterministic and self.device.type == "cuda":
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
        if self.optim_cfg.batch_size % self.ctx.world_size:
            raise ConfigError(
                f"batch_size {self.optim_cfg.batch_size} is not divisible by the "
                f"{self.ctx.world_size} processes"
            )
        self.rank_batch = self.optim_cfg.batch_size // self.ctx.world_size
        # Channels-last on a GPU: cuDNN's convolutions (and tensor cores under AMP) run
        # faster in NHWC; the CPU path keeps the default layout.
        self.channels_last = self.device.type == "cuda"
        mode = self.optim_cfg.compile
        self.compiled = mode == "on" or (mode == "gpu" and self.device.type == "cuda")
        if self.channels_last:
            network = network.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.network = network.to(self.device)
        self.train_set = train_set
        self.val_set = val_set
        targets, mask = dataset_labels(train_set)
        self.num_labels = targets.shape[1]
        self.labels = labels or [f"label{i}" for i in range(self.num_labels)]
        pos_weight = (
            torch.as_tensor(
                positive_weights(targets, mask, max_weight=self.loss_cfg.pos_weight_max)
            )
            if self.loss_cfg.pos_weight
            else None
        )
        self.pos_weight = pos_weight
        criterion = build_loss(
            self.loss_cfg.kind,
            pos_weight=pos_weight,
            focal_gamma=self.loss_cfg.focal_gamma,
            label_weight=label_weights(self.loss_cfg.label_weights, self.labels),
        ).to(self.device)
        self.hard_loss = criterion
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        if self.teacher is not None:
            d = distill or DistillConfig(teacher=Path("teacher"))
            self.criterion: nn.Module = DistillationLoss(criterion, d.alpha, d.temperature)
        else:
            self.criterion = criterion
        weights = (
            class_balanced_weights(targets, mask)
            if self.loss_cfg.sampler == "class-balanced"
            else None
        )
        self.sampler = EpochSampler(
            len(train_set),  # type: ignore[arg-type]
            seed=seed,
            weights=weights,
            rank=self.ctx.rank,
            world_size=self.ctx.world_size,
        )
        self.steps_per_epoch = math.ceil(self.sampler.per_rank_len() / self.rank_batch)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp == torch.float16 and self.device.type == "cuda"
        )
        self.state = LoopState()
        # After training, rank 0 alone evaluates: predict() must not wait for the others.
        self.local_predict = False
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: torch.optim.lr_scheduler.LambdaLR | None = None
        self.model: nn.Module = self.network
        self.ckpt_dir = self.output / "checkpoints"
        self.metrics_path = self.output / "metrics.jsonl"

    # ----------------------------------------------------------------- phases
    def _phase_of(self, epoch: int) -> str:
        return "head" if epoch < self.optim_cfg.head_epochs else "all"

    def _phase_lr(self, phase: str) -> float:
        cfg = self.optim_cfg
        if phase == "head" or cfg.head_epochs == 0:
            return cfg.lr
        return cfg.lr * cfg.body_lr_factor

    def _configure_phase(self, phase: str) -> None:
        cfg = self.optim_cfg
        head_only = phase == "head"
        set_phase(self.network, head_only)
        groups = param_groups(
            self.network,
            lr=self._phase_lr(phase),
            head_only=head_only,
            layer_decay=cfg.layer_decay,
            weight_decay=cfg.weight_decay,
        )
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups)
        else:
            self.optimizer = torch.optim.SGD(groups, momentum=cfg.momentum, nesterov=True)
        epochs = cfg.head_epochs if head_only else cfg.epochs - cfg.head_epochs
        total = epochs * self.steps_per_epoch
        warm = round(min(cfg.warmup_epochs, epochs) * self.steps_per_epoch)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule, total, warm)
        if self.ctx.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.network, device_ids=ids)
        else:
            self.model = self.network
        if self.compiled:
            # Only the training forward pass: checkpoints, prediction and export use
            # ``network`` itself, so their state-dict keys do not change.
            self.model = cast(nn.Module, torch.compile(self.model))
        self.state.phase = phase

    # ------------------------------------------------------------ checkpoints
    def _payload(self) -> dict[str, Any]:
        assert self.optimizer is not None and self.scheduler is not None
        return {
            "model": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "loop": loop_to_dict(self.state),
            "rng": rng_states(),
            "world_size": self.ctx.world_size,
            "labels": self.labels,
        }

    def _save(self, name: str) -> None:
        if self.ctx.is_main:
            save_checkpoint(self.ckpt_dir / f"{name}.pt", self._payload())
        if self.ctx.enabled:
            dist.barrier()

    def resume(self, path: Path | None = None) -> bool:
        """Continue from ``path`` (default: this run's ``last.pt``) if it exists."""
        path = path or self.ckpt_dir / "last.pt"
        if not path.is_file():
            return False
        payload = load_checkpoint(path)
        if payload.get("world_size", 1) != self.ctx.world_size:
            log.warning(
                "resuming a %s-process checkpoint with %s processes: the epoch order changes",
                payload.get("world_size"),
                self.ctx.world_size,
            )
        self.network.load_state_dict(payload["model"])
        self.state = loop_from_dict(payload["loop"])
        if self.state.phase:
            self._configure_phase(self.state.phase)
            assert self.optimizer is not None and self.scheduler is not None
            self.optimizer.load_state_dict(payload["optimizer"])
            self.scheduler.load_state_dict(payload["scheduler"])
            self.scaler.load_state_dict(payload["scaler"])
        set_rng_states(payload["rng"])
        if self.ctx.is_main:
            self._rewrite_metrics()
        log.info(
            "resumed %s at epoch %d, batch %d", path, self.state.epoch, self.state.batch_in_epoch
        )
        return True

    def _rewrite_metrics(self) -> None:
        self.output.mkdir(parents=True, exist_ok=True)
        with self.metrics_path.open("w", encoding="utf-8") as fh:
            for record in self.state.history:
                fh.write(json.dumps(record) + "\n")

    # --------------------------------------------------------------- training
    def _batches(self, epoch: int, start: int) -> Iterator[IndexedBatch]:
        self.sampler.set_epoch(epoch, start_batch=start, batch_size=self.rank_batch)
        loader = DataLoader(
            _Indexed(self.train_set),
            batch_size=self.rank_batch,
            sampler=self.sampler,
            num_workers=self.num_workers,
            persistent_workers=False,
        )
        yield from loader

    def _prepare(self, x: torch.Tensor, indices: torch.Tensor | None = None) -> torch.Tensor:
        if indices is not None and self.augment_cfg.enabled:
            base = (self.seed * 1_000_003 + self.state.epoch) * 10_000_019
            seeds = [base + int(i) for i in indices]
            x = augment_batch(x.float(), self.augment_cfg, seeds)
        x = x.to(self.device, non_blocking=True).float()
        if self.input_transform is not None:
            x = self.input_transform(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        if self.amp is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp)

    def _train_step(self, batch: IndexedBatch) -> float:
        assert self.optimizer is not None and self.scheduler is not None
        torch.manual_seed((self.seed * 1_000_003 + self.state.global_step) * 101 + self.ctx.rank)
        indices, x, target, mask = batch
        x = self._prepare(x, indices)
        target = target.to(self.device).float()
        mask = mask.to(self.device).float()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = self.model(x)
            if self.teacher is not None:
                with torch.no_grad():
                    teacher_logits = self.teacher(x)
                loss = self.criterion(logits, target, mask, teacher_logits)
            else:
                loss = self.criterion(logits, target, mask)
        self.scaler.scale(loss).backward()
        if self.optim_cfg.grad_clip is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(
                [p for p in self.network.parameters() if p.requires_grad], self.optim_cfg.grad_clip
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return float(loss.detach())

    def predict(self, dataset: Dataset[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Probabilities, targets, masks and mean loss over ``dataset`` (all ranks share the work)."""
        n = len(dataset)  # type: ignore[arg-type]
        shared = self.ctx.enabled and not self.local_predict
        mine = list(range(self.ctx.rank, n, self.ctx.world_size)) if shared else list(range(n))
        loader = DataLoader(
            Subset(dataset, mine), batch_size=self.rank_batch * 2, num_workers=self.num_workers
        )
        probs, targets, masks, losses = [], [], [], []
        self.network.eval()
        with torch.no_grad():
            for x, t, m in loader:
                x = self._prepare(x)
                with self._autocast():
                    logits = self.network(x).float()
                t, m = t.to(self.device).float(), m.to(self.device).float()
                losses.append(float(self.hard_loss(logits, t, m)) * len(x))
                probs.append(torch.sigmoid(logits).cpu().numpy())
                targets.append(t.cpu().numpy())
                masks.append(m.cpu().numpy())
        empty = np.zeros((0, self.num_labels), np.float32)
        part = (
            mine,
            np.concatenate(probs) if probs else empty,
            np.concatenate(targets) if targets else empty,
            np.concatenate(masks) if masks else empty,
            sum(losses),
        )
        if shared:
            gathered: list[Any] = [None] * self.ctx.world_size
            dist.all_gather_object(gathered, part)
        else:
            gathered = [part]
        order = np.argsort(np.concatenate([np.asarray(g[0], dtype=np.int64) for g in gathered]))
        p = np.concatenate([g[1] for g in gathered])[order]
        t_all = np.concatenate([g[2] for g in gathered])[order]
        m_all = np.concatenate([g[3] for g in gathered])[order]
        return p, t_all, m_all, sum(g[4] for g in gathered) / max(n, 1)

    def _epoch_loss(self) -> float:
        total = torch.tensor(
            [self.state.loss_sum, float(self.state.loss_count)], dtype=torch.float64
        )
        if self.ctx.enabled:
            dist.all_reduce(total)
        return float(total[0] / max(total[1].item(), 1.0))

    def _end_epoch(self, epoch: int, started: float) -> dict[str, Any]:
        assert self.optimizer is not None
        record: dict[str, Any] = {
            "epoch": epoch,
            "phase": self.state.phase,
            "global_step": self.state.global_step,
            "train_loss": self._epoch_loss(),
            "lr": {
                str(g.get("name", i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)
            },
            "step_losses": list(self.state.step_losses),
            "seconds": round(time.time() - started, 3),
        }
        if self.val_set is not None and len(self.val_set):  # type: ignore[arg-type]
            probs, targets, mask, val_loss = self.predict(self.val_set)
            aucs = per_class_auc(probs, targets, mask)
            record["val_loss"] = val_loss
            record["val_auc"] = dict(zip(self.labels, aucs, strict=True))
            record["val_mean_auc"] = mean_auc(aucs)
        return record

    def _improved(self, record: dict[str, Any]) -> bool:
        metric = record.get("val_mean_auc")
        if metric is None or not math.isfinite(metric):
            # No validation: treat every epoch as the newest best.
            self.state.best_metric, self.state.best_epoch = float("nan"), record["epoch"]
            return True
        if metric > self.state.best_metric + self.early_cfg.min_delta or self.state.best_epoch < 0:
            self.state.best_metric, self.state.best_epoch = metric, record["epoch"]
            self.state.epochs_since_best = 0
            return True
        self.state.epochs_since_best += 1
        return False

    def fit(self, resume: bool = True) -> FitResult:
        """Train to the end (or early stop), resuming from ``last.pt`` when ``resume``."""
        self.output.mkdir(parents=True, exist_ok=True)
        if not (resume and self.resume()) and self.ctx.is_main:
            self.metrics_path.write_text("", encoding="utf-8")
        cfg = self.optim_cfg
        while not self.state.finished and self.state.epoch < cfg.epochs:
            epoch = self.state.epoch
            phase = self._phase_of(epoch)
            if phase != self.state.phase or self.optimizer is None:
                self._configure_phase(phase)
            started = time.time()
            self.network.train()
            if phase == "head":
                freeze_body_norms(self.network)
            start = self.state.batch_in_epoch
            bar = self._progress(epoch, start)
            for batch in self._batches(epoch, start):
                loss = self._train_step(batch)
                self.state.batch_in_epoch += 1
                self.state.global_step += 1
                self.state.loss_sum += loss
                self.state.loss_count += 1
                if self.state.global_step % self.log_every == 0:
                    self.state.step_losses.append((self.state.global_step, loss))
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4f}", lr=f"{self._head_lr():.2e}")
                mid_epoch = self.state.batch_in_epoch < self.steps_per_epoch
                if (
                    self.checkpoint_every
                    and mid_epoch
                    and self.state.global_step % self.checkpoint_every == 0
                ):
                    self._save("last")
                if self.step_callback is not None:
                    self.step_callback(self.state)
            if bar is not None:
                bar.close()
            record = self._end_epoch(epoch, started)
            self.state.history.append(record)
            improved = self._improved(record)
            self.state.epoch += 1
            self.state.batch_in_epoch = 0
            self.state.loss_sum, self.state.loss_count = 0.0, 0
            self.state.step_losses = []
            if (
                record.get("val_mean_auc") is not None
                and self.state.epochs_since_best >= self.early_cfg.patience
            ):
                self.state.stopped_early = True
                self.state.finished = True
            if self.state.epoch >= cfg.epochs:
                self.state.finished = True
            if self.ctx.is_main:
                with self.metrics_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
                self._log_epoch(record)
            if improved:
                self._save("best")
            self._save("last")
        return FitResult(
            history=self.state.history,
            best_epoch=self.state.best_epoch,
            best_metric=self.state.best_metric,
            stopped_early=self.state.stopped_early,
            output=self.output,
        )

    def load_best(self) -> None:
        """Load the weights of the best epoch into :attr:`network`."""
        path = self.ckpt_dir / "best.pt"
        if path.is_file():
            self.network.load_state_dict(load_checkpoint(path)["model"])

    # ---------------------------------------------------------------- display
    def _head_lr(self) -> float:
        assert self.optimizer is not None
        return float(self.optimizer.param_groups[0]["lr"])

    def _progress(self, epoch: int, start: int) -> Any:
        if not (self.progress and self.ctx.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            initial=start,
            desc=f"epoch {epoch + 1}/{self.optim_cfg.epochs} [{self.state.phase}]",
            leave=False,
            dynamic_ncols=True,
        )

    def _log_epoch(self, record: dict[str, Any]) -> None:
        msg = f"epoch {record['epoch'] + 1}: train loss {record['train_loss']:.4f}"
        if "val_mean_auc" in record:
            msg += f", val loss {record['val_loss']:.4f}, val mean AUC {record['val_mean_auc']:.4f}"
        log.info(msg)


__all__ = [
    "DistributedContext",
    "FitResult",
    "Trainer",
    "amp_dtype",
    "dataset_labels",
    "init_distributed",
    "label_weights",
    "resolve_device",
]
