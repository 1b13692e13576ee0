"""The training loop on the synthetic task: learning, logging, early stopping, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic_task import LABELS, QuadrantDataset, SmallNet, make_trainer

from overread.errors import ConfigError
from overread.training import Trainer
from overread.training import trainer as trainer_module
from overread.training.checkpoint import LoopState, load_checkpoint
from overread.training.config import DistillConfig, EarlyStopConfig, LossConfig, OptimConfig
from overread.training.report import write_report
from overread.training.trainer import DistributedContext


def test_training_learns_logs_and_checkpoints(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, epochs=4)
    result = trainer.fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[0]["phase"] == "head" and records[1]["phase"] == "all"
    assert set(records[-1]["val_auc"]) == set(LABELS)
    assert records[-1]["val_mean_auc"] > 0.85  # the task is learnable
    assert records[-1]["val_mean_auc"] > records[0]["val_mean_auc"]
    assert all("lr" in r and "train_loss" in r and "val_loss" in r for r in records)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["loop"]["best_epoch"] == result.best_epoch
    report = write_report(tmp_path / "report.html", {"name": "t"}, result.history)
    text = report.read_text()
    assert text.count("data:image/png;base64,") == 3 and "<script" not in text


def test_head_phase_changes_only_the_head(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, epochs=2, head_epochs=1)
    before = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    after_head: dict[str, torch.Tensor] = {}

    def snapshot(state: LoopState) -> None:
        if state.epoch == 0 and state.batch_in_epoch == trainer.steps_per_epoch:
            after_head.update({k: v.clone() for k, v in trainer.network.state_dict().items()})

    trainer.step_callback = snapshot
    trainer.fit()
    assert after_head
    for name in ("conv1.weight", "conv2.weight", "conv3.bias"):
        assert torch.equal(after_head[name], before[name]), name
    assert not torch.equal(after_head["head.weight"], before["head.weight"])
    # Phase 2 trains everything.
    final = trainer.network.state_dict()
    assert not torch.equal(final["conv1.weight"], before["conv1.weight"])


def test_early_stopping_stops_when_validation_auc_stalls(tmp_path: Path) -> None:
    # Validation labels are random noise: AUC cannot improve for long.
    val = QuadrantDataset(64, seed=2)
    rng = np.random.default_rng(0)
    val.targets = (rng.random(val.targets.shape) < 0.5).astype(np.float32)
    torch.manual_seed(0)
    trainer = Trainer(
        SmallNet(),
        QuadrantDataset(96, seed=1),
        val,
        output=tmp_path,
        optim=OptimConfig(lr=1e-3, batch_size=16, epochs=30, warmup_epochs=0),
        loss=LossConfig(),
        early_stop=EarlyStopConfig(patience=2, min_delta=0.05),
        device="cpu",
        progress=False,
        labels=LABELS,
    )
    result = trainer.fit()
    assert result.stopped_early
    assert len(result.history) < 30
    assert len(result.history) == result.best_epoch + 1 + 2
    # A finished run resumed does no more work.
    again = trainer.fit()
    assert len(again.history) == len(result.history)


def test_focal_loss_and_balanced_sampler_train(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trainer = Trainer(
        SmallNet(),
        QuadrantDataset(128, seed=1),
        QuadrantDataset(64, seed=2),
        output=tmp_path,
        optim=OptimConfig(lr=3e-3, batch_size=16, epochs=3, warmup_epochs=0.5),
        loss=LossConfig(kind="focal", sampler="class-balanced", pos_weight=False),
        device="cpu",
        progress=False,
    )
    result = trainer.fit()
    assert result.history[-1]["val_mean_auc"] > 0.7


def test_batch_not_divisible_by_world_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainer_module, "init_distributed", lambda _d: DistributedContext(0, 3, 0))
    with pytest.raises(ConfigError, match="not divisible by the 3 processes"):
        make_trainer(tmp_path)


class _Scale(torch.nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


@pytest.mark.slow
def test_distillation_student_learns_from_teacher_alone(tmp_path: Path) -> None:
    teacher_run = make_trainer(tmp_path / "teacher", epochs=4)
    teacher_run.fit()
    # Four epochs leave the teacher's logits small (right order, low confidence): scale
    # them so that its soft targets carry a signal worth matching.
    teacher = torch.nn.Sequential(teacher_run.network, _Scale(8.0)).eval()
    train = QuadrantDataset(160, seed=1)
    train.mask[:] = 0  # no hard labels at all: only the teacher teaches
    torch.manual_seed(1)
    student = Trainer(
        SmallNet(),
        train,
        QuadrantDataset(64, seed=2),
        output=tmp_path / "student",
        optim=OptimConfig(lr=1e-2, batch_size=16, epochs=6, warmup_epochs=0.5),
        loss=LossConfig(pos_weight=False),
        device="cpu",
        progress=False,
        teacher=teacher,
        distill=DistillConfig(teacher=tmp_path / "teacher", alpha=0.0, temperature=1.0),
    )
    result = student.fit()
    first, last = result.history[0], result.history[-1]
    # Without a single hard label the student ranks the findings well above chance,
    # and its distance to the teacher (the soft loss) went down.
    assert last["val_mean_auc"] > 0.6
    assert last["train_loss"] < first["train_loss"]
