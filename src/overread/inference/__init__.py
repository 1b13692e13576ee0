"""The inference pipeline: preprocess -> runtime -> postprocess -> explain."""

from overread.inference.batching import MicroBatcher
from overread.inference.pipeline import Pipeline, clear_pipeline_cache, open_pipeline
from overread.inference.postprocess import calibrate, decide, sigmoid, threshold_proximity
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
    "open_pipeline",
    "open_runtime",
    "runtime_unavailable_reason",
    "sigmoid",
    "threshold_proximity",
]
