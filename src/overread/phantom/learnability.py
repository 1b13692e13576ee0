"""Can a small CNN learn the phantom's findings? A reproducible check.

The phantom is only useful for training and evaluation if its findings are visible
at the resolutions models use (224 x 224, and mostly 128 x 128) while keeping a
spread of severities. This module renders a cohort in memory (no files), splits it
by patient, trains a deliberately small CNN on the exact labels for a few epochs,
and reports the held-out AUC per label. It is a property test of the renderer,
not the project's trainer (``overread train``).
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from overread.findings import CHEXPERT_LABELS
from overread.phantom.cohort import CohortOptions, plan_cohort, study_spec
from overread.phantom.render import render_study
from overread.phantom.sampling import StudyPlan

logger = logging.getLogger(__name__)

_STATE: dict[str, Any] = {}


@dataclass
class LearnabilityResult:
    """Held-out AUC per label after training a small CNN on phantoms."""

    size: int
    n_train: int
    n_test: int
    epochs: int
    auc: dict[str, float]
    seconds: float

    @property
    def mean_auc(self) -> float:
        """Mean AUC over labels with both classes in the test set."""
        return float(np.mean(list(self.auc.values())))


def _render_for_model(index: int) -> tuple[npt.NDArray[np.float16], npt.NDArray[np.float32], str]:
    plan: StudyPlan = _STATE["plans"][index]
    options: CohortOptions = _STATE["options"]
    pixels, truth = render_study(study_spec(plan, options), np.random.default_rng(index))
    lo = truth.window_center - truth.window_width / 2
    x = np.clip((pixels.astype(np.float32) - lo) / truth.window_width, 0.0, 1.0)
    if plan.monochrome1:
        x = 1.0 - x
    y = np.array([truth.labels[label] for label in CHEXPERT_LABELS], dtype=np.float32)
    return x.astype(np.float16), y, plan.patient.patient_id


def check_learnability(
    n: int = 4000,
    size: int = 128,
    epochs: int = 6,
    seed: int = 123,
    workers: int = 2,
    echo: Callable[[str], None] | None = None,
    severity_scale: float = 1.0,
) -> LearnabilityResult:
    """Render ``n`` studies at ``size``, train a small CNN, return held-out AUCs.

    A quarter of the patients (not studies) are held out. The network has five
    conv blocks (8 to 96 channels) with global mean and max pooling, and is trained
    with AdamW, a one-cycle schedule and class-balanced BCE.
    """
    import torch
    from sklearn.metrics import roc_auc_score
    from torch import nn

    started = time.perf_counter()
    options = CohortOptions(
        n=n,
        seed=seed,
        rows=size,
        cols=size,
        internal=min(256, size),
        modality="mixed",
        severity_scale=severity_scale,
    )
    _STATE["plans"] = plan_cohort(options)
    _STATE["options"] = options
    if workers > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            rendered = pool.map(_render_for_model, range(n), chunksize=32)
    else:
        rendered = [_render_for_model(i) for i in range(n)]
    x_all = torch.tensor(np.stack([r[0] for r in rendered]).astype(np.float32))[:, None]
    y_all = torch.tensor(np.stack([r[1] for r in rendered]))
    patients = np.array([r[2] for r in rendered])
    rng = np.random.default_rng(seed)
    unique = np.unique(patients)
    held_out = set(rng.choice(unique, size=max(1, len(unique) // 4), replace=False).tolist())
    test = torch.tensor([p in held_out for p in patients])
    x_train, y_train, x_test, y_test = x_all[~test], y_all[~test], x_all[test], y_all[test]
    if echo:
        echo(f"rendered {n} studies in {time.perf_counter() - started:.0f} s")

    def block(i: int, o: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv2d(i, o, 3, padding=1, bias=False),
            nn.BatchNorm2d(o),
            nn.ReLU(),
            nn.Conv2d(o, o, 3, padding=1, bias=False),
            nn.BatchNorm2d(o),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )

    class SmallNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(
                block(1, 8), block(8, 16), block(16, 32), block(32, 64), block(64, 96)
            )
            self.head = nn.Linear(192, len(CHEXPERT_LABELS))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.features(x)
            out: torch.Tensor = self.head(torch.cat([z.mean((2, 3)), z.amax((2, 3))], 1))
            return out

    torch.manual_seed(seed)
    net = SmallNet()
    batch = 64
    steps = epochs * ((len(x_train) + batch - 1) // batch)
    optimiser = torch.optim.AdamW(net.parameters(), 2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=steps)
    prevalence = y_train.mean(0).clamp(0.02, 0.98)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=((1 - prevalence) / prevalence).sqrt())
    generator = torch.Generator().manual_seed(seed)
    auc: dict[str, float] = {}
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        for i in range(0, len(x_train), batch):
            idx = order[i : i + batch]
            xb = x_train[idx]
            gain = 1 + 0.2 * (torch.rand(len(xb), 1, 1, 1, generator=generator) - 0.5)
            shift = 0.1 * (torch.rand(len(xb), 1, 1, 1, generator=generator) - 0.5)
            xb = (xb - 0.5) * gain + 0.5 + shift
            loss = loss_fn(net(xb), y_train[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        net.eval()
        with torch.no_grad():
            probs = torch.cat(
                [torch.sigmoid(net(x_test[i : i + 256])) for i in range(0, len(x_test), 256)]
            ).numpy()
        truth = y_test.numpy()
        auc = {
            label: float(roc_auc_score(truth[:, k], probs[:, k]))
            for k, label in enumerate(CHEXPERT_LABELS)
            if 0 < truth[:, k].sum() < len(truth)
        }
        if echo:
            echo(
                f"epoch {epoch + 1}/{epochs}: mean AUC {np.mean(list(auc.values())):.3f} "
                f"({time.perf_counter() - started:.0f} s)"
            )
    return LearnabilityResult(
        size=size,
        n_train=len(x_train),
        n_test=len(x_test),
        epochs=epochs,
        auc=auc,
        seconds=time.perf_counter() - started,
    )
