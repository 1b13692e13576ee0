"""The inference pipeline: preprocess -> runtime -> postprocess -> explain."""

from overread.inference.batching import MicroBatcher
from overread.inference.pipeline import Pipeline, clear_pipeline_cache
from overread.inference.postprocess import calibrate, decide, decision_uncertainty, sigmoid
from overread.inference.result import FindingResult, ModelRef, Prediction
from overread.inference.runtimes import (
    OnnxRuntime,
    TorchRuntime,
    open_runtime,
    runtime_unavailable_reason,
)

__all__ = [
    "FindingResult",
    "MicroBatcher",
    "ModelRef",
    "OnnxRuntime",
    "Pipeline",
    "Prediction",
    "TorchRuntime",
    "calibrate",
    "clear_pipeline_cache",
    "decide",
    "decision_uncertainty",
    "open_runtime",
    "runtime_unavailable_reason",
    "sigmoid",
]
