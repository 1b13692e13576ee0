"""What the result builders need from a prediction, as structural types.

The builders read a handful of attributes of :class:`overread.inference.Prediction`
(findings with label/probability/positive/uncertainty/threshold, the model's name,
version and sha256, optional heatmaps). They are written against these
:class:`~typing.Protocol` types instead of importing the inference package, so the
exporters depend on the *shape* of a prediction, not on import order, and tests can
build a realistic prediction without loading a model.

Two optional finding attributes are honoured when present: ``decision``
(``"positive"``, ``"negative"`` or ``"refer"`` - too close to call, a human must
read it) and ``codes`` (``(scheme, value, meaning)`` triples from the model
package, used for labels outside the built-in vocabulary).

The model identity is accepted either as an object with ``name``/``version``/
``sha256`` attributes, a mapping with those keys, or a ``(name, version, sha256)``
tuple; :func:`model_identity` normalises the three.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from overread.errors import ServiceError
from overread.service.outputs.codes import Concept, finding_concept


@runtime_checkable
class FindingLike(Protocol):
    """One finding of one image, as the model scored it at its operating point."""

    @property
    def label(self) -> str: ...

    @property
    def probability(self) -> float: ...

    @property
    def positive(self) -> bool: ...

    @property
    def uncertainty(self) -> float | None: ...

    @property
    def threshold(self) -> float: ...


class PredictionLike(Protocol):
    """The part of a prediction that results are built from."""

    @property
    def findings(self) -> Sequence[FindingLike]: ...

    @property
    def model(self) -> Any: ...

    @property
    def heatmaps(self) -> Mapping[str, np.ndarray] | None: ...


@dataclass(frozen=True)
class ModelIdentity:
    """Name, version and package checksum of the model that made a prediction."""

    name: str
    version: str
    sha256: str

    @property
    def short_hash(self) -> str:
        """The first 12 hex digits of the package checksum (for display)."""
        return self.sha256[:12]


def model_identity(prediction: PredictionLike) -> ModelIdentity:
    """Return the model identity of ``prediction`` whatever form it is stored in.

    Raises
    ------
    ServiceError
        If the prediction carries no usable model name and version: a result that
        cannot say which model produced it must not be sent.
    """
    model = getattr(prediction, "model", None)
    if model is None:
        raise ServiceError("prediction has no model identity; refusing to build a result")
    if isinstance(model, Mapping):
        name, version, sha = model.get("name"), model.get("version"), model.get("sha256")
    elif isinstance(model, tuple) and len(model) == 3 and not hasattr(model, "name"):
        name, version, sha = model
    else:
        name = getattr(model, "name", None)
        version = getattr(model, "version", None)
        sha = getattr(model, "sha256", None)
    if not name or not version:
        raise ServiceError(
            f"prediction's model identity {model!r} lacks a name or version; refusing to "
            "build a result"
        )
    return ModelIdentity(name=str(name), version=str(version), sha256=str(sha or ""))


def decision_of(finding: FindingLike) -> str:
    """Return ``"positive"``, ``"negative"`` or ``"refer"`` for a finding.

    Uses the finding's ``decision`` attribute when it has a recognised value, else
    its ``positive`` flag.
    """
    decision = str(getattr(finding, "decision", "") or "").lower()
    if decision in ("positive", "negative", "refer"):
        return decision
    return "positive" if finding.positive else "negative"


def concept_of(finding: FindingLike) -> Concept:
    """Return the coded concept of a finding (see :func:`~.codes.finding_concept`)."""
    return finding_concept(finding.label, getattr(finding, "codes", ()) or ())


def checked_findings(prediction: PredictionLike) -> list[FindingLike]:
    """Return the prediction's findings after checking each value is usable.

    Raises
    ------
    ServiceError
        If there are no findings, a probability or threshold is outside [0, 1] or
        not finite, or a label repeats.
    """
    findings = list(getattr(prediction, "findings", None) or [])
    if getattr(prediction, "ok", True) is False:
        error = getattr(prediction, "error", None) or "unknown error"
        raise ServiceError(f"prediction failed ({error}); no result can be built from it")
    if not findings:
        raise ServiceError("prediction has no findings; no result can be built from it")
    seen: set[str] = set()
    for finding in findings:
        for name in ("probability", "threshold"):
            value = float(getattr(finding, name))
            if not np.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ServiceError(
                    f"finding {finding.label!r}: {name} {value!r} is not a number in [0, 1]"
                )
        if finding.label in seen:
            raise ServiceError(f"finding {finding.label!r} appears twice in one prediction")
        seen.add(finding.label)
    return findings


__all__ = [
    "FindingLike",
    "ModelIdentity",
    "PredictionLike",
    "checked_findings",
    "concept_of",
    "decision_of",
    "model_identity",
]
