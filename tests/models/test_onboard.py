"""``overread models package``: foreign models become verified, runnable packages."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from tests.models.foreign import (
    LABELS,
    write_monai_bundle,
    write_onnx,
    write_torchscript,
    write_xrv_state_dict,
)

from overread.models import load_package, verify_package
from overread.models.manifest import OutputKind, SourceFormat
from overread.models.onboard import XRV_PATHOLOGIES, OnboardSpec, package_model

Run = Callable[..., tuple[int, str, str]]


def _logits(package_dir: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(package_dir / "model.onnx"))
    return np.asarray(session.run(["logits"], {"image": x.astype(np.float32)})[0])


def _phantom_prediction(package_dir: Path, dicom: Path) -> dict[str, object]:
    from overread.inference.pipeline import Pipeline

    prediction = Pipeline(load_package(package_dir)).predict([str(dicom)])[0]
    assert prediction.ok, prediction.error
    return prediction.to_dict()


@pytest.fixture(scope="module")
def phantom_dicom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from overread.phantom import generate_cohort

    out = tmp_path_factory.mktemp("phantom")
    generate_cohort(out, 1, 11, rows=256, cols=256)
    return sorted(out.rglob("*.dcm"))[0]


def test_torchscript_with_probabilities_is_packaged_uncalibrated(
    tmp_path: Path, phantom_dicom: Path
) -> None:
    net = write_torchscript(tmp_path / "model.ts", size=64, sigmoid=True)
    package = package_model(
        SourceFormat.TORCHSCRIPT,
        tmp_path / "model.ts",
        tmp_path / "pkg",
        OnboardSpec(name="ts-model", version="1.0", labels=tuple(LABELS), size=64),
    )
    assert verify_package(package.path) == []
    manifest = package.manifest
    onboarded = manifest.onboarded
    assert onboarded is not None and onboarded.format is SourceFormat.TORCHSCRIPT
    # Every output was in [0, 1] on the phantoms: probabilities, inferred.
    assert onboarded.outputs is OutputKind.PROBABILITIES and onboarded.outputs_inferred
    assert not onboarded.calibrated and not manifest.calibrated
    assert manifest.operating_points == {label: {"balanced": 0.5} for label in LABELS}
    assert manifest.runtime.onnx_int8 is not None and manifest.runtime.torch_state_dict is None
    assert onboarded.validation["output_shape"] == [8, 3]
    # The packaged graph turns the probabilities into logits; sigmoid gives them back.
    x = np.random.default_rng(0).random((4, 1, 64, 64), dtype=np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    got = 1 / (1 + np.exp(-_logits(package.path, x)))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # It runs on a phantom DICOM like any package, and says it is uncalibrated.
    result = _phantom_prediction(package.path, phantom_dicom)
    assert result["model"]["calibrated"] is False  # type: ignore[index]
    findings = result["findings"]
    assert [f["label"] for f in findings] == LABELS  # type: ignore[union-attr]
    assert {f["threshold"] for f in findings} == {0.5}  # type: ignore[union-attr]


def test_onnx_with_its_own_names_and_fixed_batch(tmp_path: Path, phantom_dicom: Path) -> None:
    net = write_onnx(tmp_path / "vendor.onnx", size=64)
    package = package_model(
        SourceFormat.ONNX,
        tmp_path / "vendor.onnx",
        tmp_path / "pkg",
        OnboardSpec(name="vendor", version="2.1", labels=tuple(LABELS)),
    )
    assert verify_package(package.path) == []
    onboarded = package.manifest.onboarded
    assert onboarded is not None and onboarded.outputs is OutputKind.LOGITS
    assert onboarded.outputs_inferred
    assert package.manifest.input.size == 64  # read from the graph's input shape
    x = np.random.default_rng(1).random((5, 1, 64, 64), dtype=np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_logits(package.path, x), expected, atol=1e-4)
    assert len(_phantom_prediction(package.path, phantom_dicom)["findings"]) == 3  # type: ignore[arg-type]


def test_monai_bundle_takes_name_labels_and_size_from_its_metadata(
    tmp_path: Path, phantom_dicom: Path
) -> None:
    net = write_monai_bundle(tmp_path / "bundle", size=64)
    package = package_model(
        SourceFormat.MONAI_BUNDLE, tmp_path / "bundle", tmp_path / "pkg", OnboardSpec()
    )
    assert verify_package(package.path) == []
    assert (package.name, package.version) == ("Chest-findings-demo", "0.2.0")
    assert package.labels == LABELS and package.manifest.input.size == 64
    # A MONAI DenseNet reaches its classifier through global pooling: exact CAMs.
    assert package.manifest.cam == "onnx-output"
    x = np.random.default_rng(2).random((2, 1, 64, 64), dtype=np.float32)
    expected = net(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(_logits(package.path, x), expected, atol=1e-4)
    result = _phantom_prediction(package.path, phantom_dicom)
    assert result["model"]["name"] == "Chest-findings-demo"  # type: ignore[index]


@pytest.mark.slow
def test_torchxrayvision_densenet121_state_dict(tmp_path: Path, phantom_dicom: Path) -> None:
    replica = write_xrv_state_dict(tmp_path / "xrv-densenet121.pt")
    package = package_model(
        SourceFormat.STATE_DICT,
        tmp_path / "xrv-densenet121.pt",
        tmp_path / "pkg",
        OnboardSpec(name="xrv-all", version="1.0", int8=False),
        architecture="densenet121",
    )
    assert verify_package(package.path) == []
    manifest = package.manifest
    assert manifest.architecture == "densenet121" and manifest.runtime.torch_state_dict
    assert package.labels == list(XRV_PATHOLOGIES)
    assert manifest.onboarded is not None and manifest.onboarded.layout == "torchxrayvision"
    assert manifest.onboarded.outputs is OutputKind.LOGITS
    # TorchXRayVision's input range, after the standard chain.
    assert manifest.input.chain[-1] == {"name": "rescale", "lower": -1024.0, "upper": 1024.0}
    assert manifest.cam == "onnx-output"
    # The renamed weights compute exactly what the published layout computes.
    x = torch.rand(2, 1, 224, 224) * 2048 - 1024
    with torch.no_grad():
        np.testing.assert_allclose(
            package.build_network()(x).numpy(), replica(x).numpy(), atol=1e-4
        )
    np.testing.assert_allclose(
        _logits(package.path, x.numpy()), replica(x).detach().numpy(), atol=1e-3
    )
    result = _phantom_prediction(package.path, phantom_dicom)
    assert len(result["findings"]) == 18  # type: ignore[arg-type]


def test_refusals_are_one_line(run_cli: Run, tmp_path: Path) -> None:
    write_torchscript(tmp_path / "model.ts", size=64, sigmoid=False)
    (tmp_path / "garbage.onnx").write_bytes(b"not a model")
    torch.save(torch.nn.Linear(2, 2), tmp_path / "pickled.pt")
    cases = [
        (["--torchscript", tmp_path / "model.ts", "--labels", "A,B", "--size", "64"], "(8, 2)"),
        (
            ["--torchscript", tmp_path / "model.ts", "--labels", "A,B,C", "--size", "64",
             "--outputs", "probabilities"],
            "--outputs probabilities",
        ),
        (["--onnx", tmp_path / "garbage.onnx", "--labels", "A"], "not an ONNX model"),
        (["--state-dict", tmp_path / "pickled.pt"], "--architecture"),
        (
            ["--state-dict", tmp_path / "pickled.pt", "--architecture", "densenet121"],
            "state dict",
        ),
        (["--torchscript", tmp_path / "model.ts", "--labels", "A,B,C"], "--size"),
        (["--labels", "A"], "exactly one of"),
    ]  # fmt: skip
    for args, words in cases:
        status, _, err = run_cli(
            "models", "package", *args, "--name", "x", "--version", "1", "--out", tmp_path / "o"
        )
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert status != 0 and len(lines) == 1 and words in lines[0], (args, err)
        assert "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_toml_file_and_cli_make_an_importable_package(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    write_torchscript(tmp_path / "model.ts", size=64, sigmoid=False)
    (tmp_path / "onboard.toml").write_text(
        'torchscript = "model.ts"\nname = "from-toml"\nversion = "0.9"\n'
        'labels = ["Atelectasis", "Cardiomegaly", "Pleural Effusion"]\nsize = 64\n'
        'intended_use = "tests only"\nint8 = false\n'
        "[operating_points.Atelectasis]\nbalanced = 0.4\n"
        "[operating_points.Cardiomegaly]\nbalanced = 0.6\n"
        '[operating_points."Pleural Effusion"]\nbalanced = 0.5\n',
        encoding="utf-8",
    )
    out = tmp_path / "pkg"
    status, stdout, err = run_cli(
        "models", "package", "--config", tmp_path / "onboard.toml", "--version", "1.0",
        "--out", out, "--json",
    )  # fmt: skip
    assert status == 0, err
    summary = json.loads(stdout)
    assert summary["version"] == "1.0" and summary["name"] == "from-toml"  # option wins
    assert summary["outputs"] == "logits" and summary["calibrated"] is True
    assert summary["runtime"]["onnx_int8"] is None
    package = load_package(out)
    assert package.manifest.operating_points["Cardiomegaly"] == {"balanced": 0.6}
    assert package.manifest.intended_use == "tests only"
    status, stdout, _ = run_cli("models", "verify", out)
    assert status == 0 and "ok" in stdout and "UNCALIBRATED" not in stdout
    status, stdout, err = run_cli("models", "import", out)
    assert status == 0, err
    assert "from-toml 1.0" in stdout and (tmp_path / "registry" / "from-toml" / "1.0").is_dir()
