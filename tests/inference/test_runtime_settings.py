"""The serving runtime is a setting: ``[inference] runtime`` and ``precision``."""

from __future__ import annotations

import pytest

from overread.config import InferenceSettings, load_settings
from overread.inference import Pipeline
from overread.inference.pipeline import configured_inference
from overread.models import Registry


def test_defaults_are_onnx_runtime_auto_precision() -> None:
    assert InferenceSettings() == InferenceSettings(runtime="onnx", precision="auto")
    with pytest.raises(ValueError):
        InferenceSettings(runtime="tensorrt")


def test_from_name_follows_the_settings(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = Registry(tmp_path_factory.mktemp("registry"))
    monkeypatch.setenv("OVERREAD_INFERENCE__RUNTIME", "torch")
    assert load_settings().inference.runtime == "torch"
    assert configured_inference().runtime == "torch"
    assert Pipeline.from_name("cxr-default", registry=registry).runtime.name == "torch"
    monkeypatch.setenv("OVERREAD_INFERENCE__RUNTIME", "onnx")
    monkeypatch.setenv("OVERREAD_INFERENCE__PRECISION", "fp32")
    pipeline = Pipeline.from_name("cxr-default", registry=registry)
    assert (pipeline.runtime.name, pipeline.runtime.precision) == ("onnx", "fp32")
    # An explicit argument wins over the setting.
    explicit = Pipeline.from_name("cxr-default", registry=registry, precision="int8")
    assert explicit.runtime.precision == "int8"
