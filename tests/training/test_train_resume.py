"""Kill a training process with SIGKILL mid-epoch, resume it, and get the same model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).with_name("synthetic_task.py")


def _run(out: Path, *extra: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--checkpoint-every",
            "3",
            *extra,
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


def _epoch_records(path: Path) -> list[dict[str, object]]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:
        r.pop("seconds")
    return records


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path: Path) -> None:
    reference = tmp_path / "reference"
    _run(reference)

    resumed = tmp_path / "resumed"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(SCRIPT),
            "--out",
            str(resumed),
            "--epochs",
            "3",
            "--checkpoint-every",
            "3",
            "--sleep",
            "0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    last = resumed / "checkpoints" / "last.pt"
    deadline = time.time() + 120
    killed_at = None
    try:
        while time.time() < deadline:
            if last.exists():
                loop = torch.load(last, weights_only=False)["loop"]
                if loop["epoch"] == 1 and loop["batch_in_epoch"] > 0:
                    killed_at = loop
                    break
            time.sleep(0.05)
        time.sleep(0.15)  # let it get beyond the checkpoint, into unsaved work
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert killed_at is not None, "no mid-epoch checkpoint appeared"
    assert not (resumed / "final-rank0.pt").exists()
    loop = torch.load(last, weights_only=False)["loop"]
    assert loop["batch_in_epoch"] > 0 and loop["epoch"] == 1  # really mid-epoch

    _run(resumed)
    want = torch.load(reference / "final-rank0.pt")
    got = torch.load(resumed / "final-rank0.pt")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-7)
    assert _epoch_records(resumed / "metrics.jsonl") == _epoch_records(reference / "metrics.jsonl")
