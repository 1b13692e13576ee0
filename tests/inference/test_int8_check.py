"""precision="auto" checks an INT8 model against FP32 once and falls back when they disagree."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from overread.inference import Pipeline, runtimes
from overread.inference.runtimes import INT8_TOLERANCE, open_runtime
from overread.models import Registry, load_package, resign_package
from overread.models.calibration import synthetic_batch
from overread.models.package import ModelPackage


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    return Registry(tmp_path_factory.mktemp("registry")).load("cxr-default")


def _shift_classifier_bias(path: Path, logits: float) -> None:
    """Add ``logits`` to every label's quantised classifier bias (a broken INT8 build)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    by_name = {init.name: init for init in model.graph.initializer}
    bias = numpy_helper.to_array(by_name["classifier.bias_quantized"])
    scale = numpy_helper.to_array(by_name["classifier.bias_quantized_scale"])
    shifted = (bias + np.round(logits / scale)).astype(bias.dtype)
    by_name["classifier.bias_quantized"].CopyFrom(
        numpy_helper.from_array(shifted, "classifier.bias_quantized")
    )
    onnx.save(model, str(path))


@pytest.fixture(scope="module")
def broken_int8(bundled: ModelPackage, tmp_path_factory: pytest.TempPathFactory) -> ModelPackage:
    target = tmp_path_factory.mktemp("broken") / "cxr-default"
    shutil.copytree(bundled.path, target)
    (target / "model.int8.onnx").chmod(0o644)
    (target / "manifest.json").chmod(0o644)
    _shift_classifier_bias(target / "model.int8.onnx", 1.5)
    resign_package(target)
    return load_package(target)


def test_the_shipped_int8_model_passes_the_check_here(bundled: ModelPackage) -> None:
    runtime = open_runtime(bundled, precision="auto")
    assert runtime.precision == "int8"
    key = (bundled.sha256, str(bundled.runtime_file("int8")))
    assert runtimes._INT8_CHECKS[key] <= INT8_TOLERANCE


def test_auto_falls_back_to_fp32_when_int8_disagrees(
    broken_int8: ModelPackage, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="overread.inference.runtimes"):
        pipeline = Pipeline(broken_int8, precision="auto")
    assert pipeline.model.precision == "fp32"
    assert "using the FP32 model instead" in caplog.text
    x = synthetic_batch(3, broken_int8.manifest.input.size, seed=4)
    fp32 = Pipeline(broken_int8, precision="fp32")
    np.testing.assert_allclose(pipeline.predict_batch(x), fp32.predict_batch(x), atol=1e-6)


def test_explicit_int8_is_kept_with_a_warning(
    broken_int8: ModelPackage, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="overread.inference.runtimes"):
        pipeline = Pipeline(broken_int8, precision="int8")
    assert pipeline.model.precision == "int8"
    assert "keeping INT8 as requested" in caplog.text


def test_the_tolerance_decides(bundled: ModelPackage, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtimes, "INT8_TOLERANCE", -1.0)
    assert Pipeline(bundled, precision="auto", warmup=False).model.precision == "fp32"
    monkeypatch.setattr(runtimes, "INT8_TOLERANCE", 1.0)
    assert Pipeline(bundled, precision="auto", warmup=False).model.precision == "int8"
