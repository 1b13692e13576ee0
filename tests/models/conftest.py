"""Fixtures: a tiny but complete model package written with write_package."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from overread.imaging.transforms import cxr_chain
from overread.models import build_network, write_package
from overread.models.calibration import synthetic_batch

TINY_ARCH = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8}
LABELS = ["Cardiomegaly", "Pneumothorax", "Support Devices"]


def tiny_package(
    out: Path,
    *,
    version: str = "1.0.0",
    int8: bool = False,
    key: bytes | None = None,
    seed: int = 0,
) -> Path:
    """A 32-pixel, three-label cxr-convnet package."""
    torch.manual_seed(seed)
    net = build_network("cxr-convnet", in_channels=1, num_classes=len(LABELS), **TINY_ARCH)
    return write_package(
        out,
        network=net,
        architecture="cxr-convnet",
        arch_kwargs=TINY_ARCH,
        labels=LABELS,
        input_spec={"size": 32, "channels": 1, "chain": cxr_chain(32).to_spec()},
        name="tiny-cxr",
        version=version,
        intended_use="tests only",
        operating_points={label: {"balanced": 0.5, "high sensitivity": 0.2} for label in LABELS},
        calibration={"method": "temperature", "parameters": {"Cardiomegaly": {"temperature": 2.0}}},
        metrics={"auc": {"Cardiomegaly": {"value": 0.9, "ci95": [0.85, 0.95]}}},
        training={"data": "none"},
        int8_calibration=synthetic_batch(8, 32) if int8 else None,
        key=key,
    )


@pytest.fixture
def make_package(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing tiny packages under the test's tmp directory."""

    def make(name: str = "pkg", **kwargs: object) -> Path:
        return tiny_package(tmp_path / name, **kwargs)  # type: ignore[arg-type]

    return make
