"""``--device`` for CT (volumetric, sliding-window) models: the windows run where the
option says (cpu, cuda, cuda:N or auto, as for the chest X-ray models), and a device
that is unknown or not there is refused in one line."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from overread.errors import InferenceError
from overread.inference.pipeline import clear_pipeline_cache, open_pipeline
from overread.inference.volume import VolumePipeline
from overread.models.ct_baseline import NAME, write_baseline_package
from overread.models.package import load_package

from .ct_series import NODULES, SHAPE, SPACING, chest_volume, write_series

Run = Callable[..., tuple[int, str, str]]

NO_CUDA = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ct") / "series"
    write_series(folder, chest_volume(SHAPE, SPACING, NODULES), SPACING)
    return folder


@pytest.fixture(scope="module")
def package_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_baseline_package(tmp_path_factory.mktemp("pkg") / "seg")


def test_the_pipeline_runs_on_the_device_it_is_given(package_dir: Path) -> None:
    pipeline = VolumePipeline(load_package(package_dir), device="cpu")
    assert pipeline.device == torch.device("cpu")
    tensors = [*pipeline.network.parameters(), *pipeline.network.buffers()]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    with pytest.raises(InferenceError, match="unknown device 'tpu'"):
        VolumePipeline(load_package(package_dir), device="tpu")


@pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU")
def test_cuda_without_a_gpu_is_refused_naming_the_device(package_dir: Path) -> None:
    with pytest.raises(InferenceError, match="device 'cuda' asked for, but torch sees no CUDA"):
        VolumePipeline(load_package(package_dir), device="cuda")


def test_open_pipeline_keeps_one_volume_pipeline_per_device(
    package_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.models import Registry

    clear_pipeline_cache()
    registry = Registry(package_dir.parent / "registry", include_bundled=False)
    registry.import_package(package_dir)
    name = load_package(package_dir).name
    on_cpu = open_pipeline(name, registry=registry, device="cpu")
    assert isinstance(on_cpu, VolumePipeline) and on_cpu.device.type == "cpu"
    assert open_pipeline(name, registry=registry, device="cpu") is on_cpu
    # No device named: the [inference] setting (auto: the GPU when torch sees one),
    # not the cached cpu pipeline nor VolumePipeline's own default.
    monkeypatch.setenv("OVERREAD_INFERENCE__DEVICE", "cuda")
    if NO_CUDA:
        with pytest.raises(InferenceError, match="device 'cuda' asked for"):
            open_pipeline(name, registry=registry)
    else:
        on_gpu = open_pipeline(name, registry=registry)
        assert isinstance(on_gpu, VolumePipeline) and on_gpu.device.type == "cuda"
    monkeypatch.setenv("OVERREAD_INFERENCE__DEVICE", "cpu")
    default = open_pipeline(name, registry=registry)
    assert isinstance(default, VolumePipeline) and default.device.type == "cpu"
    assert default is on_cpu  # the same device, the same cached pipeline
    clear_pipeline_cache()


def test_predict_honours_device_cpu_for_a_ct_series(
    run_cli: Run, series: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    clear_pipeline_cache()
    status, stdout, stderr = run_cli(
        "predict", series, "--model", NAME, "--device", "cpu", "--json"
    )
    assert status == 0, stderr
    [record] = [json.loads(line) for line in stdout.splitlines()]
    assert record["task"] == "segmentation" and len(record["regions"]) == 2


@pytest.mark.parametrize(
    ("device", "message"),
    [
        pytest.param(
            "cuda",
            "error: device 'cuda' asked for, but torch sees no CUDA GPU",
            marks=pytest.mark.skipif(not NO_CUDA, reason="this machine has a CUDA GPU"),
        ),
        ("npu", "error: unknown device 'npu'"),
    ],
)
def test_predict_refuses_an_unavailable_device_for_ct_in_one_line(
    run_cli: Run,
    series: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    device: str,
    message: str,
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    clear_pipeline_cache()
    status, stdout, stderr = run_cli("predict", series, "--model", NAME, "--device", device)
    assert status != 0
    assert [line for line in stderr.splitlines() if line.strip()] == [
        next(line for line in stderr.splitlines() if line.startswith(message))
    ]
    assert "Traceback" not in stderr and "nodules:" not in stdout


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU")
def test_cuda_gives_the_cpu_s_nodules(package_dir: Path, series: Path) -> None:
    paths = sorted(series.glob("*.dcm"))
    [on_cpu] = VolumePipeline(load_package(package_dir), device="cpu").predict_series(paths)
    gpu = VolumePipeline(load_package(package_dir), device="cuda")
    tensors = [*gpu.network.parameters(), *gpu.network.buffers()]
    assert tensors and all(t.device.type == "cuda" for t in tensors)
    [on_gpu] = gpu.predict_series(paths)
    cpu_regions = on_cpu.prediction.regions or []
    gpu_regions = on_gpu.prediction.regions or []
    assert len(gpu_regions) == len(cpu_regions) == 2
    for a, b in zip(cpu_regions, gpu_regions, strict=True):
        assert np.isclose(a.volume_mm3, b.volume_mm3, rtol=0.02)
        assert np.isclose(a.longest_diameter_mm, b.longest_diameter_mm, rtol=0.02)
