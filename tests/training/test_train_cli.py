"""``overread train``: options, errors, and a tiny end-to-end run on a phantom cohort."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

HAS_PHANTOM = importlib.util.find_spec("overread.phantom") is not None


def test_list_presets(run_cli) -> None:  # type: ignore[no-untyped-def]
    status, out, _ = run_cli("train", "--list-presets")
    assert status == 0
    assert "cxr-phantom" in out.split()


def test_show_config_applies_overrides(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    status, out, _ = run_cli(
        "train", "--preset", "cxr-phantom", "--set", "optim.epochs=3",
        "--set", "data.policy=u-zeros", "-o", tmp_path / "o", "--show-config",
    )  # fmt: skip
    assert status == 0
    cfg = json.loads(out)
    assert cfg["optim"]["epochs"] == 3
    assert cfg["data"]["policy"] == "u-zeros"
    assert cfg["output"] == str((tmp_path / "o").resolve())


def test_errors_are_one_line(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    status, _, err = run_cli("train", "--preset", "cxr-phantom", "--set", "optim.lr=-1")
    assert status == 2 and err.startswith("error: preset cxr-phantom: invalid training config")
    assert "optim.lr" in err and len(err.strip().splitlines()) == 1
    status, _, err = run_cli("train", "--preset", "cxr-phantom", "--set", "novalue")
    assert status == 2 and "expected KEY=VALUE" in err
    status, _, err = run_cli("train", tmp_path / "nope.toml")
    assert status == 2 and "nope.toml: cannot read config" in err
    status, _, err = run_cli("train")
    assert status == 2 and "exactly one" in err


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PHANTOM, reason="phantom generator not installed")
def test_tiny_end_to_end_run_writes_a_loadable_package(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from overread.inference import Pipeline
    from overread.models import load_package

    out = tmp_path / "run"
    args = [
        "train", "--preset", "cxr-phantom", "-o", out,
        "--set", "data.phantom.n=32", "--set", "data.phantom.size=96",
        "--set", "data.test_phantom.n=16", "--set", "data.test_phantom.size=96",
        "--set", "data.num_workers=0", "--set", "data.size=64",
        "--set", "optim.epochs=2", "--set", "optim.batch_size=8",
        "--set", "model.kwargs={widths=[8, 16], blocks=[1, 1], stem_width=8}",
        "--set", "progress=false",
    ]  # fmt: skip
    status, stdout, stderr = run_cli(*args)
    assert status == 0, stderr
    assert "generating 32 phantom studies" in stdout
    assert "external: mean AUC" in stdout

    package = load_package(out / "package")  # verifies every checksum
    manifest = package.manifest
    assert manifest.trained and manifest.architecture == "cxr-convnet"
    assert manifest.input.size == 64 and manifest.input.channels == 1
    assert manifest.calibration.method == "platt"
    assert set(manifest.operating_points["Cardiomegaly"]) == {
        "balanced", "high sensitivity", "high specificity",
    }  # fmt: skip
    assert "external" in manifest.metrics["evaluations"]
    card = (out / "package" / "MODEL_CARD.md").read_text()
    assert "not for clinical use" in card and "95% CI" in card

    record = json.loads((out / "run.json").read_text())
    assert record["seed"] == 0 and "commit" in record["git"]
    assert record["data_hashes"]["train-cohort:truth.csv"]
    assert record["config"]["optim"]["epochs"] == 2
    epochs = (out / "metrics.jsonl").read_text().splitlines()
    assert len(epochs) == 2 and "val_auc" in json.loads(epochs[0])
    assert "data:image/png;base64," in (out / "report.html").read_text()

    dicom = next((tmp_path / "phantoms" / "test-n16-s1" / "images").rglob("*.dcm"))
    [prediction] = Pipeline.from_name(str(out / "package")).predict([dicom])
    assert prediction.ok and len(prediction.findings) == 14

    # Running again reuses the cohorts and the finished checkpoint.
    status, stdout, _ = run_cli(*args)
    assert status == 0 and "reusing phantom cohort" in stdout


@pytest.mark.slow
@pytest.mark.skipif(not HAS_PHANTOM, reason="phantom generator not installed")
def test_overread_train_under_torchrun_with_two_cpu_processes(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    result = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "overread", "train", "--preset", "cxr-phantom", "-o", str(out),
            "--set", "data.phantom.n=24", "--set", "data.phantom.size=96",
            "--set", "data.test_phantom.n=12", "--set", "data.test_phantom.size=96",
            "--set", "data.num_workers=0", "--set", "data.size=64",
            "--set", "optim.epochs=2", "--set", "optim.batch_size=8",
            "--set", "model.kwargs={widths=[8, 16], blocks=[1, 1], stem_width=8}",
            "--set", "progress=false", "--set", "package.export_onnx=false",
        ],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "run.json").read_text())
    assert record["world_size"] == 2
    assert (out / "package" / "manifest.json").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
