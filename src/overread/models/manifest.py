"""The model package manifest: what a model is, what it accepts, and how to check it.

A manifest is validated by pydantic when a package is loaded, so a package with a
missing threshold, an unknown task or a label without a name is refused before any
weights are read. Its canonical form (sorted keys, no whitespace, UTF-8, without the
``signature`` block) is what the package hash covers, so two byte-different but
equivalent manifest files hash the same and any change of meaning changes the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class Task(StrEnum):
    """What the model's output means."""

    MULTI_LABEL_CLASSIFICATION = "multi-label-classification"
    SEGMENTATION = "segmentation"
    DETECTION = "detection"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(_Strict):
    """A coded concept (DICOM style: scheme designator, value, meaning)."""

    scheme: str = Field(min_length=1)
    value: str = Field(min_length=1)
    meaning: str = Field(min_length=1)


class LabelSpec(_Strict):
    """One model output: its name and, where verified, its standard codes."""

    name: str = Field(min_length=1)
    codes: list[Code] = Field(default_factory=list)


class Accepts(_Strict):
    """Which images the model is meant for; an empty list accepts anything."""

    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    view_positions: list[str] = Field(default_factory=list)
    sop_class_uids: list[str] = Field(default_factory=list)


class StatisticSpec(_Strict):
    """One image statistic the input gate watches, with its robust fit on normal images.

    ``direction``: ``1`` when only high values are suspicious, ``-1`` only low, ``0``
    both. The statistic's score is its robust z (``(value - median) / scale``) in the
    suspicious direction, divided by ``q99``, its 99th percentile on the fit images.
    """

    name: str = Field(min_length=1)
    direction: Literal[-1, 0, 1] = 0
    median: float
    scale: float = Field(gt=0.0)
    q99: float = Field(gt=0.0)


class SubspaceSpec(_Strict):
    """A probabilistic-PCA Mahalanobis detector on a feature vector.

    ``score = (sum_k (c_k^2 / eigenvalues_k) + |residual|^2 / residual_variance) / d``
    for the centred vector's coordinates ``c`` on ``components`` (rows) and what they
    leave out, divided by ``q99``, the 99th percentile of that on the fit images.
    """

    name: str = Field(min_length=1)
    mean: list[float] = Field(min_length=1)
    components: list[list[float]] = Field(default_factory=list)
    eigenvalues: list[float] = Field(default_factory=list)
    residual_variance: float = Field(gt=0.0)
    q99: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _shapes(self) -> SubspaceSpec:
        if len(self.components) != len(self.eigenvalues):
            raise ValueError("one eigenvalue per component")
        if any(len(row) != len(self.mean) for row in self.components):
            raise ValueError("components must have the mean's length")
        if any(value <= 0 for value in self.eigenvalues):
            raise ValueError("eigenvalues must be positive")
        return self


class GateSpec(_Strict):
    """The input gate: what the package refuses or flags before it runs.

    Header rules come from ``accepts`` (a present value outside it is refused; a
    missing one is decided by the pixel check) and from ``min_age_years``
    (``below_min_age`` says whether a younger patient is refused or flagged). The
    pixel check combines the detectors below: each gives a score normalised so that
    1 is its 99th percentile on the fit images, the image's score is their maximum,
    and ``flag_threshold`` / ``refuse_threshold`` were chosen on the fit images for
    the false-flag and false-refusal rates recorded in ``fit``.
    """

    min_age_years: float | None = Field(default=None, ge=0.0)
    below_min_age: Literal["refuse", "flag"] = "refuse"
    statistics: list[StatisticSpec] = Field(default_factory=list)
    structure: SubspaceSpec | None = None
    features: SubspaceSpec | None = None
    flag_threshold: float = Field(gt=0.0)
    refuse_threshold: float = Field(gt=0.0)
    fit: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ordered(self) -> GateSpec:
        if self.flag_threshold > self.refuse_threshold:
            raise ValueError("flag_threshold must not exceed refuse_threshold")
        return self


class InputSpec(_Strict):
    """The network input and the exact preprocessing chain that produces it."""

    size: int = Field(gt=0)
    channels: int = Field(default=1, gt=0)
    chain: list[dict[str, Any]] = Field(default_factory=list)
    window: str = "file VOI window, else percentile window"
    normalisation: str = "[0, 1], bone bright"


class Calibration(_Strict):
    """Per-label probability calibration applied to the logits.

    ``temperature``: p = sigmoid(logit / T); ``platt``: p = sigmoid(a * logit + b);
    ``none``: p = sigmoid(logit). Labels missing from ``parameters`` are uncalibrated.
    """

    method: Literal["none", "temperature", "platt"] = "none"
    parameters: dict[str, dict[str, float]] = Field(default_factory=dict)


class RuntimeFiles(_Strict):
    """Files (relative to the package) that the runtimes load."""

    torch_state_dict: str | None = None
    onnx_fp32: str | None = None
    onnx_int8: str | None = None


class FileEntry(_Strict):
    """A file's size and SHA-256, checked on every load."""

    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Signature(_Strict):
    """Hash of the canonical manifest and, when a key is configured, its HMAC."""

    manifest_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    hmac_sha256: str | None = None


class Manifest(_Strict):
    """Everything a deployment needs to know about one model version."""

    format_version: int = FORMAT_VERSION
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    task: Task = Task.MULTI_LABEL_CLASSIFICATION
    trained: bool = True
    architecture: str = Field(min_length=1)
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    accepts: Accepts = Field(default_factory=Accepts)
    gate: GateSpec | None = None
    input: InputSpec
    labels: list[LabelSpec] = Field(min_length=1)
    operating_points: dict[str, dict[str, float]] = Field(default_factory=dict)
    default_operating_point: str = "balanced"
    refer_uncertainty: float = Field(default=0.8, ge=0.0, le=1.0)
    calibration: Calibration = Field(default_factory=Calibration)
    cam: Literal["onnx-output", "none"] = "onnx-output"
    intended_use: str = Field(min_length=1)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    runtime: RuntimeFiles = Field(default_factory=RuntimeFiles)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    created: str = ""
    signature: Signature | None = None

    @field_validator("operating_points")
    @classmethod
    def _thresholds_in_unit_interval(
        cls, value: dict[str, dict[str, float]]
    ) -> dict[str, dict[str, float]]:
        for label, points in value.items():
            for point, threshold in points.items():
                if not 0.0 <= threshold <= 1.0:
                    raise ValueError(
                        f"threshold {point!r} of {label!r} is {threshold}, not in [0, 1]"
                    )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError("label names are not unique")
        unknown = set(self.operating_points) - set(names)
        if unknown:
            raise ValueError(f"operating points for unknown labels: {sorted(unknown)}")
        unknown = set(self.calibration.parameters) - set(names)
        if unknown:
            raise ValueError(f"calibration for unknown labels: {sorted(unknown)}")
        for path in (self.runtime.torch_state_dict, self.runtime.onnx_fp32, self.runtime.onnx_int8):
            if path is not None and path not in self.files:
                raise ValueError(f"runtime file {path!r} has no sha256 entry in 'files'")
        for path in self.files:
            if path.startswith(("/", "\\")) or ".." in path.split("/") or path == MANIFEST_NAME:
                raise ValueError(f"file entry {path!r} is not a plain relative path")
        return self

    @property
    def label_names(self) -> list[str]:
        """Output names in output order."""
        return [label.name for label in self.labels]

    def canonical_bytes(self) -> bytes:
        """The manifest without its signature, as canonical JSON bytes."""
        data = self._dump(exclude={"signature"})
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def content_sha256(self) -> str:
        """SHA-256 of :meth:`canonical_bytes`: the package's identity."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def hmac_sha256(self, key: bytes) -> str:
        """HMAC-SHA-256 of :meth:`canonical_bytes` under ``key``."""
        return hmac.new(key, self.canonical_bytes(), hashlib.sha256).hexdigest()

    def signed(self, key: bytes | None = None) -> Manifest:
        """A copy carrying a signature over its current content."""
        signature = Signature(
            manifest_sha256=self.content_sha256(),
            hmac_sha256=self.hmac_sha256(key) if key else None,
        )
        return self.model_copy(update={"signature": signature})

    def to_json(self) -> str:
        """The manifest file's text (indented for people; the hash ignores layout)."""
        return json.dumps(self._dump(), indent=2, ensure_ascii=False) + "\n"

    def _dump(self, exclude: set[str] | None = None) -> dict[str, Any]:
        """The JSON form; optional sections added after a package was made (``gate``)
        are left out when absent, so an older package keeps its hash."""
        data = self.model_dump(mode="json", exclude=exclude)
        if data.get("gate") is None:
            data.pop("gate", None)
        return data


__all__ = [
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "Accepts",
    "Calibration",
    "Code",
    "FileEntry",
    "GateSpec",
    "InputSpec",
    "LabelSpec",
    "Manifest",
    "RuntimeFiles",
    "Signature",
    "StatisticSpec",
    "SubspaceSpec",
    "Task",
]
