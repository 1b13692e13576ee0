"""``overread bench int8``: several packages' INT8 batch-1 latency, alternated, as ratios."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from overread.errors import InferenceError
from overread.findings import CHEXPERT_LABELS
from overread.imaging.transforms import cxr_chain
from overread.inference.bench import int8_side_by_side
from overread.models import build_network, load_package, write_package
from overread.models.calibration import synthetic_batch
from overread.models.registry import bundled_dir


def _tiny(root: Path, *, int8: bool = True) -> Path:
    torch.manual_seed(0)
    arch = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8}
    return write_package(
        root,
        network=build_network("cxr-convnet", num_classes=14, **arch),
        architecture="cxr-convnet",
        arch_kwargs=arch,
        labels=list(CHEXPERT_LABELS),
        input_spec={"size": 64, "channels": 1, "chain": cxr_chain(64).to_spec()},
        name="tiny",
        version="1",
        intended_use="tests only",
        int8_calibration=synthetic_batch(8, 64) if int8 else None,
    )


def test_ratios_are_against_the_first_package(tmp_path: Path) -> None:
    bundled = load_package(bundled_dir() / "cxr-default")
    tiny = load_package(_tiny(tmp_path / "tiny"))
    result = int8_side_by_side([bundled, tiny], repeats=20)
    first, second = result["packages"]
    size = bundled.manifest.input.size
    assert first["package"] == f"cxr-default {bundled.version} (int8, {size} px)"
    assert second["package"] == "tiny 1 (int8, 64 px)"
    assert first["ratio_min"] == 1.0 and first["ratio_p50"] == 1.0
    for row in (first, second):
        assert 0 < row["min_ms"] <= row["p10_ms"] <= row["p50_ms"]
    assert second["ratio_min"] == pytest.approx(second["min_ms"] / first["min_ms"])
    assert second["ratio_p50"] == pytest.approx(second["p50_ms"] / first["p50_ms"])
    with pytest.raises(InferenceError, match="named twice"):
        int8_side_by_side([tiny, tiny], repeats=20)


def test_a_package_without_int8_is_timed_in_fp32(tmp_path: Path) -> None:
    plain = load_package(_tiny(tmp_path / "plain", int8=False))
    (row,) = int8_side_by_side([plain], repeats=20)["packages"]
    assert row["package"] == "tiny 1 (fp32, 64 px)"


def test_cli_refuses_an_unknown_model_in_one_line(run_cli) -> None:  # type: ignore[no-untyped-def]
    status, _, err = run_cli("bench", "int8", "--model", "cxr-default", "--model", "no-such-model")
    assert status != 0 and err.strip().startswith("error:") and "no-such-model" in err
    assert len(err.strip().splitlines()) == 1
