from __future__ import annotations

import pytest

from overread.inference.bench import benchmark_inference
from overread.models import Registry


@pytest.mark.slow
def test_benchmark_reports_every_runtime_side_by_side(tmp_path) -> None:  # type: ignore[no-untyped-def]
    package = Registry(tmp_path / "registry").load("cxr-default")
    result = benchmark_inference(package, repeats=5)
    assert [r["runtime"] for r in result["runtimes"]] == [
        "torch eager fp32",
        "onnxruntime fp32",
        "onnxruntime int8",
    ]
    for row in result["runtimes"]:
        assert 0 < row["batch1_min_ms"] <= row["batch1_p50_ms"] <= row["batch1_p95_ms"]
        assert row["batch8_images_per_s"] > 0
    assert result["int8_speedup"] > 0
    assert result["int8_max_prob_diff"] < 0.05
    assert result["preprocessing"]["read_ms"] > 0
    # The bundled model is untrained, so the phantom AUC comparison says why it is absent.
    assert result["phantom_auc"] == {
        "available": False,
        "reason": "the default model is an untrained placeholder",
    }
    assert result["int8_auc_loss"] is None
