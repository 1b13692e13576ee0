"""What the pipeline returns for one input: the :class:`Prediction`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from overread.imaging import ImageMetadata
from overread.imaging.transforms import Letterbox


@dataclass(frozen=True)
class ModelRef:
    """Provenance of a result: which package produced it."""

    name: str
    version: str
    sha256: str
    runtime: str = "onnx"
    precision: str = "fp32"
    trained: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "name": self.name,
            "version": self.version,
            "sha256": self.sha256,
            "runtime": self.runtime,
            "precision": self.precision,
            "trained": self.trained,
        }


@dataclass(frozen=True)
class FindingResult:
    """One label's outcome.

    Attributes
    ----------
    probability
        Calibrated probability.
    positive
        ``probability >= threshold``.
    uncertainty
        0 far from the threshold, 1 at it (see :func:`overread.inference.postprocess.decide`).
    threshold
        The threshold of the operating point used.
    decision
        ``"positive"``, ``"negative"`` or ``"refer"`` (too close to call: a human reads it).
    """

    label: str
    probability: float
    positive: bool
    uncertainty: float
    threshold: float
    decision: str = "negative"
    operating_point: str = "balanced"
    codes: tuple[tuple[str, str, str], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form."""
        return {
            "label": self.label,
            "probability": round(self.probability, 6),
            "positive": self.positive,
            "uncertainty": round(self.uncertainty, 6),
            "threshold": self.threshold,
            "decision": self.decision,
            "operating_point": self.operating_point,
            "codes": [list(c) for c in self.codes],
        }


@dataclass
class Prediction:
    """The pipeline's result for one input, successful (``ok``) or not (``error``).

    ``heatmaps`` are per-label maps in [0, 1] at the model input resolution;
    ``letterbox`` maps them back to stored-image coordinates and ``model_input`` is the
    preprocessed image they align with (both only when explaining).
    """

    path: str | None
    ok: bool
    model: ModelRef
    error: str | None = None
    findings: list[FindingResult] = field(default_factory=list)
    heatmaps: dict[str, np.ndarray] | None = None
    metadata: ImageMetadata | None = None
    timings: dict[str, float] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    model_input: np.ndarray | None = None
    letterbox: Letterbox | None = None

    @property
    def positives(self) -> list[FindingResult]:
        """Findings decided positive."""
        return [f for f in self.findings if f.positive]

    def finding(self, label: str) -> FindingResult:
        """The result for one label."""
        for item in self.findings:
            if item.label == label:
                return item
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (heatmaps left out; they are written as images)."""
        return {
            "path": self.path,
            "ok": self.ok,
            "error": self.error,
            "model": self.model.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "study_instance_uid": self.metadata.study_instance_uid if self.metadata else None,
            "sop_instance_uid": self.metadata.sop_instance_uid if self.metadata else None,
            "timings": {k: round(v, 6) for k, v in self.timings.items()},
            "warnings": list(self.warnings),
        }


__all__ = ["FindingResult", "ModelRef", "Prediction"]
