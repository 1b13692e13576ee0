"""Two CPU processes under torchrun (gloo) train like one process with the same global batch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from overread.netutil import free_port

SCRIPT = Path(__file__).with_name("synthetic_task.py")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_two_process_gloo_matches_single_process(tmp_path: Path) -> None:
    args = ["--epochs", "2", "--head-epochs", "1", "--batch-size", "16"]
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, str(SCRIPT), "--out", str(single), *args],
        check=True,
        capture_output=True,
        timeout=300,
    )
    ddp = tmp_path / "ddp"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            str(SCRIPT),
            "--out",
            str(ddp),
            *args,
        ],
        capture_output=True,
        timeout=300,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rank0 = torch.load(ddp / "final-rank0.pt")
    rank1 = torch.load(ddp / "final-rank1.pt")
    reference = torch.load(single / "final-rank0.pt")
    for name in reference:
        # Gradients are all-reduced: both ranks hold identical weights after every step.
        assert torch.equal(rank0[name], rank1[name]), name
        # Same global batch, same per-sample augmentation: same model as one process.
        torch.testing.assert_close(rank0[name], reference[name], rtol=1e-4, atol=1e-5)
    # The run actually changed the weights (a no-op would also be "in sync").
    torch.manual_seed(0)
    from synthetic_task import SmallNet

    init = SmallNet().state_dict()
    assert not torch.allclose(init["head.weight"], rank0["head.weight"])
