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
    if package.manifest.trained:
        auc = result["phantom_auc"]
        assert auc["available"] is True and auc["images"] == 200
        assert result["int8_auc_loss"] == pytest.approx(auc["fp32_auc"] - auc["int8_auc"])
    else:  # an untrained placeholder: the comparison says why it is absent
        assert result["phantom_auc"] == {
            "available": False,
            "reason": "the default model is an untrained placeholder",
        }
        assert result["int8_auc_loss"] is None


@pytest.mark.slow
def test_phantom_auc_compares_fp32_and_int8(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    from overread.findings import CHEXPERT_LABELS
    from overread.imaging.transforms import cxr_chain
    from overread.inference.bench import phantom_auc
    from overread.models import build_network, load_package, write_package
    from overread.models.calibration import synthetic_batch

    torch.manual_seed(0)
    arch = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8}
    path = write_package(
        tmp_path / "pkg",
        network=build_network("cxr-convnet", num_classes=14, **arch),
        architecture="cxr-convnet",
        arch_kwargs=arch,
        labels=list(CHEXPERT_LABELS),
        input_spec={"size": 64, "channels": 1, "chain": cxr_chain(64).to_spec()},
        name="tiny",
        version="1",
        intended_use="tests only",
        int8_calibration=synthetic_batch(8, 64),
    )
    result = phantom_auc(load_package(path), n=16)
    assert result["available"] is True and result["images"] == 16
    assert 0.0 <= result["fp32_auc"] <= 1.0 and 0.0 <= result["int8_auc"] <= 1.0
    assert result["int8_auc_loss"] == pytest.approx(result["fp32_auc"] - result["int8_auc"])
