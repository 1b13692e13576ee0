"""The gateway's ports to the model runtime and to the result builders.

Workers depend on two small protocols rather than on concrete classes:
:class:`PipelineProvider` (model alias -> something with ``predict``) and
:class:`ArtifactBuilder` (prediction -> DICOM objects to send). The defaults use
:class:`overread.inference.Pipeline` and :mod:`overread.service.outputs`; both are
imported lazily so the service starts (and reports clearly) without them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from overread.errors import InferenceError, ServiceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    """The name and version a result is recorded under."""

    name: str
    version: str


@runtime_checkable
class PipelineLike(Protocol):
    """What a worker needs from an inference pipeline."""

    def predict(self, inputs: Sequence[Any], *, explain: bool = False) -> list[Any]:
        """One prediction per input (``ok=False`` for a bad input)."""
        ...


class PipelineProvider(Protocol):
    """Resolves a model alias to its identity and a ready pipeline."""

    def identify(self, alias: str) -> ModelIdentity:
        """The name and version ``alias`` refers to now."""
        ...

    def get(self, alias: str) -> PipelineLike:
        """A (cached) pipeline for ``alias``."""
        ...


class ArtifactBuilder(Protocol):
    """Turns one prediction into DICOM objects to store and send."""

    def build(self, prediction: Any, source_datasets: Sequence[Any]) -> list[Any]:
        """pydicom datasets (SR, overlays) derived from ``prediction``."""
        ...


def _first_attr(obj: Any, *paths: str) -> Any:
    for path in paths:
        value: Any = obj
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
            if value is None:
                break
        if value is not None:
            return value
    return None


def identity_of(pipeline: Any, alias: str) -> ModelIdentity:
    """Read the model name and version off a pipeline object, as far as it tells."""
    name = _first_attr(
        pipeline, "package.name", "package.manifest.name", "manifest.name", "model_name", "name"
    )
    version = _first_attr(
        pipeline,
        "package.version",
        "package.manifest.version",
        "manifest.version",
        "model_version",
        "version",
    )
    return ModelIdentity(str(name or alias), str(version or "unversioned"))


class RegistryPipelineProvider:
    """Pipelines from :meth:`overread.inference.Pipeline.from_name`.

    Every call asks the registry again (the pipeline caches loaded models per package
    hash), so an alias switched in the registry applies to the next study routed,
    without a restart.
    """

    def get(self, alias: str) -> PipelineLike:
        try:
            from overread.inference import Pipeline
        except ImportError as exc:
            raise ServiceError(f"the inference pipeline is not available: {exc}") from None
        pipeline: PipelineLike = Pipeline.from_name(alias)
        return pipeline

    def identify(self, alias: str) -> ModelIdentity:
        return identity_of(self.get(alias), alias)


class OutputsArtifactBuilder:
    """Builds a TID 1500 Structured Report per image with :func:`~overread.service.outputs.build_sr`,
    and, when the prediction carries heatmaps (``--explain``), one Secondary Capture overlay
    per positive or referred finding with :func:`~overread.service.outputs.build_overlays`.
    """

    def __init__(self) -> None:
        try:
            from overread.service import outputs
        except ImportError as exc:
            raise ServiceError(f"result builders are not available: {exc}") from None
        self._outputs = outputs

    def build(self, prediction: Any, source_datasets: Sequence[Any]) -> list[Any]:
        built: list[Any] = [self._outputs.build_sr(prediction, list(source_datasets))]
        if getattr(prediction, "heatmaps", None) and source_datasets:
            built.extend(self._outputs.build_overlays(prediction, source_datasets[0]))
        return built


def default_artifact_builder() -> ArtifactBuilder | None:
    """The SR builder, or ``None`` (with a warning) when it cannot be imported."""
    try:
        return OutputsArtifactBuilder()
    except ServiceError as exc:
        logger.warning("%s; results are stored but no SR is built or sent", exc)
        return None


def prediction_summary(prediction: Any) -> dict[str, Any]:
    """A JSON-ready summary of a prediction (duck-typed on the inference contract)."""
    findings = []
    for finding in getattr(prediction, "findings", None) or []:
        findings.append(
            {
                "label": str(getattr(finding, "label", "")),
                "probability": _float(getattr(finding, "probability", None)),
                "positive": bool(getattr(finding, "positive", False)),
                "uncertainty": _float(getattr(finding, "uncertainty", None)),
                "threshold": _float(getattr(finding, "threshold", None)),
            }
        )
    model = getattr(prediction, "model", None)
    return {
        "path": str(getattr(prediction, "path", "")),
        "ok": bool(getattr(prediction, "ok", False)),
        "error": getattr(prediction, "error", None),
        "model": {
            "name": _first_attr(model, "name"),
            "version": _first_attr(model, "version"),
            "sha256": _first_attr(model, "sha256"),
        }
        if model is not None
        else None,
        "findings": findings,
        "timings": {
            str(k): _float(v) for k, v in (getattr(prediction, "timings", None) or {}).items()
        },
    }


def _float(value: Any) -> float | None:
    try:
        return None if value is None else float(value)
    except (TypeError, ValueError):
        return None


def require_ok(predictions: Sequence[Any], paths: Sequence[Path]) -> None:
    """Raise when no input of a study could be run at all."""
    if predictions and not any(getattr(p, "ok", False) for p in predictions):
        errors = "; ".join(str(getattr(p, "error", "?")) for p in predictions[:3])
        raise InferenceError(f"no instance of the study could be read by the model: {errors}")
    if not predictions and paths:
        raise InferenceError("the pipeline returned no predictions")


__all__ = [
    "ArtifactBuilder",
    "ModelIdentity",
    "OutputsArtifactBuilder",
    "PipelineLike",
    "PipelineProvider",
    "RegistryPipelineProvider",
    "default_artifact_builder",
    "identity_of",
    "prediction_summary",
    "require_ok",
]
