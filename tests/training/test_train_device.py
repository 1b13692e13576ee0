"""Training's device and mixed-precision choices, checked without a GPU."""

from __future__ import annotations

import pytest
import torch

from overread.errors import ConfigError
from overread.training import load_config
from overread.training.trainer import DistributedContext, amp_dtype, resolve_device


def test_amp_is_full_precision_on_the_cpu() -> None:
    cpu = torch.device("cpu")
    assert amp_dtype("auto", cpu) is None and amp_dtype("off", cpu) is None
    assert amp_dtype("bf16", cpu) is torch.bfloat16
    with pytest.raises(ConfigError, match="fp16' needs a CUDA device"):
        amp_dtype("fp16", cpu)


@pytest.mark.parametrize(("bf16", "expected"), [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_amp_on_a_gpu_prefers_bf16(
    monkeypatch: pytest.MonkeyPatch, bf16: bool, expected: torch.dtype
) -> None:
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    gpu = torch.device("cuda", 0)
    assert amp_dtype("auto", gpu) is expected
    assert amp_dtype("fp16", gpu) is torch.float16
    assert amp_dtype("off", gpu) is None


def test_device_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    ctx = DistributedContext()
    if not torch.cuda.is_available():
        assert resolve_device("auto", ctx) == torch.device("cpu")
        with pytest.raises(ConfigError, match="no CUDA GPU is available"):
            resolve_device("cuda", ctx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto", DistributedContext(rank=3, world_size=4, local_rank=3)) == (
        torch.device("cuda", 1)
    )


def test_device_is_validated_in_the_config(run_cli) -> None:  # type: ignore[no-untyped-def]
    assert load_config(preset="cxr-phantom", overrides={"device": "cuda:1"}).device == "cuda:1"
    with pytest.raises(ConfigError, match="device"):
        load_config(preset="cxr-phantom", overrides={"device": "gpu"})
    status, out, _ = run_cli("train", "--preset", "cxr-phantom", "--device", "cpu", "--show-config")
    assert status == 0 and '"device": "cpu"' in out
