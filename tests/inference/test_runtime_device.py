"""Device selection for serving: ONNX Runtime's CUDA provider when present, the CPU otherwise.

No GPU is needed: the CUDA cases make onnxruntime (or torch) claim a GPU and check
that overread asks for it, falls back to the CPU when it cannot be used, and says
so in one line when a GPU was demanded.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import torch

from overread.errors import InferenceError, ModelPackageError
from overread.inference.runtimes import (
    OnnxRuntime,
    TorchRuntime,
    onnx_providers,
    open_runtime,
    torch_device,
)
from overread.models import load_package
from overread.models.registry import bundled_dir

CPU, CUDA = "CPUExecutionProvider", "CUDAExecutionProvider"


@pytest.fixture(scope="module")
def package() -> Any:
    return load_package(bundled_dir() / "cxr-default")


@pytest.fixture
def claims_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime reports a CUDA provider (as the onnxruntime-gpu wheel does)."""
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *real])


def _chest(package: Any) -> np.ndarray:
    from overread.models.calibration import synthetic_batch

    spec = package.manifest.input
    return synthetic_batch(2, spec.size, spec.channels, seed=3)


def test_provider_lists() -> None:
    assert onnx_providers("cpu", [CUDA, CPU]) == [CPU]
    assert onnx_providers("auto", [CPU]) == [CPU]
    assert onnx_providers("auto", [CUDA, CPU]) == [(CUDA, {"device_id": 0}), CPU]
    assert onnx_providers("cuda:1", [CUDA, CPU]) == [(CUDA, {"device_id": 1}), CPU]
    with pytest.raises(InferenceError, match=r"no CUDAExecutionProvider.*onnxruntime-gpu"):
        onnx_providers("cuda", [CPU])
    with pytest.raises(InferenceError, match="unknown device 'gpu'"):
        onnx_providers("gpu", [CPU])


def test_cpu_session_runs_on_the_cpu(package: Any) -> None:
    runtime = OnnxRuntime(package.runtime_file("fp32"), device="auto")
    assert runtime.provider == CPU  # this onnxruntime has no CUDA provider


def test_auto_asks_for_cuda_and_falls_back_to_the_cpu(
    package: Any, claims_cuda: None, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    asked: list[Any] = []
    real_session = ort.InferenceSession

    def session(path: str, options: Any, providers: list[Any]) -> Any:
        asked.append(providers)
        if any(p[0] == CUDA if isinstance(p, tuple) else p == CUDA for p in providers):
            raise RuntimeError("CUDA driver version is insufficient for CUDA runtime version")
        return real_session(path, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", session)
    path = package.runtime_file("fp32")
    with caplog.at_level(logging.WARNING, logger="overread.inference.runtimes"):
        runtime = OnnxRuntime(path, device="auto")
    assert asked[0] == [(CUDA, {"device_id": 0}), CPU] and asked[-1] == [CPU]
    assert runtime.provider == CPU
    assert "CUDA execution provider failed" in caplog.text and "driver" in caplog.text
    x = _chest(package)
    cpu = OnnxRuntime(path, device="cpu")
    np.testing.assert_allclose(runtime.run(x)[0], cpu.run(x)[0], atol=1e-5)
    # Demanded explicitly, the same failure is an error, not a silent CPU run.
    with pytest.raises(ModelPackageError, match="cannot load it: CUDA driver"):
        OnnxRuntime(path, device="cuda")


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_provider_onnxruntime_skips_is_reported_as_what_runs(
    package: Any, claims_cuda: None
) -> None:
    # The real (CPU-only) onnxruntime is handed the CUDA provider first: the session
    # it builds runs on the CPU, and the runtime says so.
    runtime = OnnxRuntime(package.runtime_file("fp32"), device="auto")
    assert runtime.provider == CPU


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_auto_precision_is_fp32_on_a_gpu(package: Any, claims_cuda: None) -> None:
    assert package.runtime_file("int8") is not None
    assert open_runtime(package, "onnx", precision="auto", device="auto").precision == "fp32"
    assert open_runtime(package, "onnx", precision="auto", device="cpu").precision == "int8"


def test_torch_device_selection(monkeypatch: pytest.MonkeyPatch, package: Any) -> None:
    if not torch.cuda.is_available():
        assert torch_device("auto") == torch.device("cpu")
        with pytest.raises(InferenceError, match="torch sees no CUDA GPU"):
            torch_device("cuda")
        with pytest.raises(InferenceError, match="torch sees no CUDA GPU"):
            TorchRuntime(package, device="cuda:0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert torch_device("auto") == torch.device("cuda", 0)
    assert torch_device("cuda:1") == torch.device("cuda", 1)
    assert torch_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # one GPU: cuda:1 is not there
    with pytest.raises(InferenceError, match=r"'cuda:1' asked for, but torch sees 1 CUDA GPU"):
        torch_device("cuda:1")


def test_torch_runtime_on_the_cpu_matches_onnx(package: Any) -> None:
    x = _chest(package)
    torch_logits, cam = TorchRuntime(package, device="cpu").run(x, with_cam=True)
    onnx_logits, _ = OnnxRuntime(package.runtime_file("fp32"), device="cpu").run(x)
    assert cam is not None and cam.shape[:2] == torch_logits.shape
    np.testing.assert_allclose(torch_logits, onnx_logits, atol=1e-3)


def test_device_is_a_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from overread.config import InferenceSettings
    from overread.inference.pipeline import Pipeline, configured_inference

    assert InferenceSettings().device == "auto"
    with pytest.raises(ValidationError):
        InferenceSettings(device="gpu")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OVERREAD_INFERENCE__DEVICE", "cpu")
    assert configured_inference().device == "cpu"
    pipeline = Pipeline(load_package(bundled_dir() / "cxr-default"), warmup=False)
    assert pipeline.device == "cpu"


def test_predict_refuses_an_unknown_device_in_one_line(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    image = tmp_path / "x.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64), np.uint8)).save(image)
    status, _, err = run_cli(
        "predict", image, "--model", bundled_dir() / "cxr-default", "--device", "tpu"
    )
    assert status != 0
    assert err.strip().startswith("error:") and "unknown device 'tpu'" in err
    assert len(err.strip().splitlines()) == 1


def test_bench_gpu_rows_only_where_a_gpu_runs(
    package: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.inference.bench import _gpu_runs

    assert _gpu_runs(package, "cpu").runs == {} and _gpu_runs(package, "cpu").skipped == []
    if not torch.cuda.is_available():
        found = _gpu_runs(package, "auto")
        assert found.runs == {}
        assert "torch: no CUDA GPU" in found.skipped
        with pytest.raises(InferenceError, match="torch sees no CUDA GPU"):
            _gpu_runs(package, "cuda")
    real = ort.get_available_providers()
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA, *real])
    real_session = ort.InferenceSession

    def session(path: str, options: Any, providers: list[Any]) -> Any:
        if isinstance(providers[0], tuple):
            raise RuntimeError("no CUDA-capable device is detected")
        return real_session(path, options, providers=providers)

    monkeypatch.setattr(ort, "InferenceSession", session)
    found = _gpu_runs(package, "auto")
    assert "onnxruntime cuda fp32" not in found.runs
    assert "onnxruntime: the CUDA session fell back to the CPU" in found.skipped


def test_bench_refuses_a_demanded_gpu_in_one_line(run_cli) -> None:  # type: ignore[no-untyped-def]
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    status, _, err = run_cli("bench", "inference", "--device", "cuda", "--repeats", "5")
    assert status != 0 and err.strip().startswith("error:") and "no CUDA GPU" in err
    assert len(err.strip().splitlines()) == 1
