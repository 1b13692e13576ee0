"""The shipped CT preset, trained on CPU, against the issue's targets and the HU threshold."""

from __future__ import annotations

from pathlib import Path

import pytest

from overread.training.ct import ct_toml, parse_ct_config
from overread.training.ct_eval import run_ct_training


@pytest.mark.slow
def test_ct_preset_beats_the_hu_threshold(tmp_path: Path) -> None:
    data = ct_toml(None, "ct-phantom")
    assert data is not None
    cfg = parse_ct_config(data, {"output": str(tmp_path / "run")})
    result = run_ct_training(cfg, echo=lambda _: None)
    assert result.metrics is not None and result.package is not None
    model, threshold = result.metrics["model"], result.metrics["threshold"]
    assert model["lung_dice"] >= 0.95
    assert model["lung_dice"] > threshold["lung_dice"]
    assert model["lung_hd95_mm"] < threshold["lung_hd95_mm"]
    # The nodule targets (Dice >= 0.70, sensitivity >= 0.85 at 1 FP/scan) are not met yet
    # (docs/evaluation.md); only that detection finds something is asserted.
    assert model["detection"]["max_sensitivity"] > 0
