from __future__ import annotations

import pytest

from overread.inference.bench import benchmark_inference
from overread.models import Registry


@pytest.mark.slow
def test_benchmark_reports_every_runtime_side_by_side(tmp_path) -> None:  # type: ignore[no-untyped-def]
    package = Registry(tmp_path / "registry").load("cxr-default")
    result = benchmark_inference(package, repeats=5)
    from overread.inference.bench import openvino_available

    names = [r["runtime"] for r in result["runtimes"]]
    assert names[:3] == ["torch eager fp32", "onnxruntime fp32", "onnxruntime int8"]
    assert names[3:] == (["openvino fp32", "openvino int8"] if openvino_available() else [])
    assert "avx512_vnni" in result["machine"]["cpu_flags"] and "amx" in result["machine"]
    for row in result["runtimes"]:
        assert 0 < row["batch1_min_ms"] <= row["batch1_p50_ms"] <= row["batch1_p95_ms"]
        assert row["batch8_images_per_s"] > 0
    assert result["int8_speedup"] > 0
    assert result["int8_max_prob_diff"] < 0.05
    pre = result["preprocessing"]
    assert pre["read_ms"] > 0 and pre["preprocess_ms"] > 0 and pre["full_resolution_ms"] > 0
    assert pre["reduced_first"] is True  # the 3000 x 3000 CR takes the reduced read
    assert pre["max_input_diff_vs_full_resolution"] <= 1e-3
    assert result["densenet121"] is None
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


def test_network_runtimes_time_every_runtime_on_one_network() -> None:
    import torch

    from overread.imaging.transforms import cxr_chain
    from overread.inference.bench import network_runtimes, openvino_available
    from overread.models import build_network

    torch.manual_seed(0)
    arch = {"widths": [8, 16], "blocks": [1, 1], "stem_width": 8}
    network = build_network("cxr-convnet", num_classes=14, **arch)
    rows = network_runtimes(network, 1, 64, cxr_chain(64).to_spec(), repeats=5, threads=1)
    names = [row["runtime"] for row in rows]
    expected = ["torch eager fp32", "onnxruntime fp32", "onnxruntime int8"]
    if openvino_available():
        expected += ["openvino fp32", "openvino bf16", "openvino int8"]
    assert names == expected
    by_name = {row["runtime"]: row for row in rows}
    assert by_name["torch eager fp32"]["max_prob_diff_vs_torch_eager"] == 0.0
    assert by_name["onnxruntime fp32"]["max_prob_diff_vs_torch_eager"] < 1e-4
    assert by_name["onnxruntime int8"]["max_prob_diff_vs_torch_eager"] < 0.1
    for row in rows:
        assert 0 < row["batch1_min_ms"] <= row["batch1_p50_ms"] <= row["batch1_p95_ms"]


def test_cpu_description_names_the_int8_and_bf16_flags() -> None:
    from overread.bench.machine import cpu_flags_line, machine_info
    from overread.models.cpu import CPU_FEATURES, cpu_description

    cpu = cpu_description()
    assert set(cpu["cpu_flags"]) == set(CPU_FEATURES)
    assert cpu["vnni"] == (cpu["cpu_flags"]["avx512_vnni"] or cpu["cpu_flags"]["avx_vnni"])
    assert cpu["amx"] == cpu["cpu_flags"]["amx_int8"]
    flags = open("/proc/cpuinfo").read()  # noqa: SIM115 - the same source, read directly
    assert cpu["cpu_flags"]["avx512_vnni"] == (" avx512_vnni" in flags)
    machine = machine_info()
    assert machine["cpu_flags"] == cpu["cpu_flags"] and "load_average" in machine
    assert "AVX-512 VNNI" in cpu_flags_line(machine) and "AMX INT8" in cpu_flags_line(machine)
