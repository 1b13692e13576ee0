"""``overread bench gpu``: batch-1 latency, batch-N throughput and training speed per precision.

No GPU here: the rows are timed on the CPU (``--device cpu``, the comparison the
command offers), and a demanded GPU is refused in one line.
"""

from __future__ import annotations

import copy
from typing import Any

import onnxruntime as ort
import pytest
import torch

from overread.models import load_package
from overread.models.registry import bundled_dir


@pytest.fixture(scope="module")
def package() -> Any:
    return load_package(bundled_dir() / "cxr-default")


def test_cpu_rows_time_fp32_and_bf16_side_by_side(package: Any) -> None:
    from overread.inference.bench import gpu_benchmark

    result = gpu_benchmark(package, device="cpu", repeats=5, batch=4, densenet121=False)
    assert result["gpu"] == {"device": "cpu"} and result["skipped"] == []
    (network,) = result["networks"]
    size = package.manifest.input.size
    assert network["input"] == f"1x{size}x{size}" and "cxr-default" in network["network"]
    rows = {row["runtime"]: row for row in network["rows"]}
    assert list(rows) == ["torch fp32", "torch bf16"]
    for row in rows.values():
        assert 0 < row["batch1_min_ms"] <= row["batch1_p50_ms"]
        assert row["batch4_images_per_s"] == pytest.approx(4 / (row["batch4_p50_ms"] / 1e3))
    assert rows["torch fp32"]["max_prob_diff_vs_fp32"] == 0.0
    assert 0.0 < rows["torch bf16"]["max_prob_diff_vs_fp32"] < 0.05  # bf16 rounds, a little
    train = network["training"]
    assert train["batch"] == 4 and train["precision"] == "bf16 autocast"
    assert train["images_per_s"] > 0


def test_training_throughput_trains_the_network(package: Any) -> None:
    from overread.inference.bench import training_throughput
    from overread.models.calibration import synthetic_batch

    network = package.build_network()
    before = copy.deepcopy(network.state_dict())
    batch = synthetic_batch(2, 64, 1, seed=1)
    result = training_throughput(network, torch.device("cpu"), batch, steps=2, warmup=1, amp=None)
    assert result["precision"] == "fp32" and result["steps"] == 2 and result["batch"] == 2
    changed = [k for k, v in network.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)  # AdamW stepped: a real training step
    assert not network.training  # left in eval mode


def test_onnx_cuda_row_is_skipped_with_a_reason_without_the_provider(
    package: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.inference.bench import _add_onnx_cuda, _GpuRuns

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    found = _GpuRuns()
    _add_onnx_cuda(package, "cuda", found)  # a CPU-only onnxruntime beside a CUDA torch
    assert found.runs == {}
    assert found.skipped == ["onnxruntime: no CUDAExecutionProvider in this build"]


def test_cli_prints_a_table_per_network(run_cli) -> None:  # type: ignore[no-untyped-def]
    status, out, err = run_cli(
        "bench", "gpu", "--device", "cpu", "--no-densenet121", "--repeats", "5", "--batch", "4"
    )
    assert status == 0, err
    assert "torch fp32" in out and "torch bf16" in out and "images/s" in out
    assert "training (forward, backward, AdamW; bf16 autocast, batch 4):" in out


def test_cli_refuses_a_demanded_gpu_in_one_line(run_cli) -> None:  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    status, _, err = run_cli("bench", "gpu")
    assert status != 0 and err.strip().startswith("error:") and "no CUDA GPU" in err
    assert len(err.strip().splitlines()) == 1
    status, _, err = run_cli("bench", "gpu", "--device", "gpu0")
    assert status != 0 and "unknown device 'gpu0'" in err and len(err.strip().splitlines()) == 1
