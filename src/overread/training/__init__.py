"""Training: the trainer, losses, samplers, schedules, checkpoints, DDP, distillation, pruning.

The trainer (:class:`Trainer`) is generic over any network and any Dataset
yielding ``(x, target, mask)``; :func:`run_training` wires it to the data layer,
the imaging chain and the model package format for ``overread train``.
"""

from overread.training.checkpoint import LoopState, load_checkpoint, save_checkpoint
from overread.training.config import (
    TrainConfig,
    load_config,
    parse_config,
    preset_names,
    preset_text,
)
from overread.training.finetune import param_groups, set_phase, split_network
from overread.training.losses import (
    DistillationLoss,
    FocalLoss,
    MaskedBCEWithLogits,
    build_loss,
    positive_weights,
)
from overread.training.metrics import bootstrap_auc_ci, mean_auc, per_class_auc
from overread.training.sampling import EpochSampler, class_balanced_weights
from overread.training.schedules import build_scheduler, one_cycle, warmup_cosine
from overread.training.trainer import FitResult, Trainer, init_distributed

__all__ = [
    "DistillationLoss",
    "EpochSampler",
    "FitResult",
    "FocalLoss",
    "LoopState",
    "MaskedBCEWithLogits",
    "TrainConfig",
    "Trainer",
    "bootstrap_auc_ci",
    "build_loss",
    "build_scheduler",
    "class_balanced_weights",
    "init_distributed",
    "load_checkpoint",
    "load_config",
    "mean_auc",
    "one_cycle",
    "param_groups",
    "parse_config",
    "per_class_auc",
    "positive_weights",
    "preset_names",
    "preset_text",
    "save_checkpoint",
    "set_phase",
    "split_network",
    "warmup_cosine",
]
