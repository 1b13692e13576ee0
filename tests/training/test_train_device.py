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


@pytest.mark.parametrize(("mode", "compiled"), [("off", False), ("gpu", False), ("on", True)])
def test_compile_wraps_only_the_training_forward(
    monkeypatch: pytest.MonkeyPatch, tmp_path, mode: str, compiled: bool
) -> None:  # type: ignore[no-untyped-def]
    from synthetic_task import QuadrantDataset, SmallNet

    from overread.training.config import LossConfig, OptimConfig
    from overread.training.trainer import Trainer

    wrapped: list[torch.nn.Module] = []

    class Compiled(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner
            self.calls = 0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.calls += 1
            return self.inner(x)

    def fake_compile(module: torch.nn.Module, **_: object) -> torch.nn.Module:
        wrapped.append(Compiled(module))
        return wrapped[-1]

    monkeypatch.setattr(torch, "compile", fake_compile)
    trainer = Trainer(
        SmallNet(),
        QuadrantDataset(32, seed=1),
        QuadrantDataset(16, seed=2),
        output=tmp_path,
        optim=OptimConfig(lr=1e-3, batch_size=16, epochs=1, warmup_epochs=0, compile=mode),
        loss=LossConfig(),
        device="cpu",
        progress=False,
    )
    trainer.fit()
    assert trainer.compiled is compiled and len(wrapped) == int(compiled)
    if compiled:
        assert wrapped[0].calls == trainer.steps_per_epoch  # every training step went through it
        assert wrapped[0].inner is trainer.network
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert not any(key.startswith(("_orig_mod", "inner")) for key in state)
