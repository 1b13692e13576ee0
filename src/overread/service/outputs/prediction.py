"""What the result builders check of a prediction before building from it.

The builders take an :class:`overread.results.Prediction` (what the pipeline
returns, and what a stored result reads back as) and its
:class:`~overread.results.FindingResult` items; nothing here guesses at attributes.
A finding's ``codes`` (``(scheme, value, meaning)`` triples from the model package)
name labels outside the built-in vocabulary.
"""

from __future__ import annotations

import numpy as np

from overread.errors import ServiceError
from overread.results import FindingResult, ModelRef, Prediction
from overread.service.outputs.codes import Concept, finding_concept


def model_identity(prediction: Prediction) -> ModelRef:
    """Return the model that made ``prediction``, after checking it names itself.

    Raises
    ------
    ServiceError
        If the prediction's model has no name or version: a result that cannot say
        which model produced it must not be sent.
    """
    model = prediction.model
    if not model.name or not model.version:
        raise ServiceError(
            f"prediction's model identity {model!r} lacks a name or version; refusing to "
            "build a result"
        )
    return model


def concept_of(finding: FindingResult) -> Concept:
    """Return the coded concept of a finding (see :func:`~.codes.finding_concept`)."""
    return finding_concept(finding.label, finding.codes)


def checked_findings(prediction: Prediction) -> list[FindingResult]:
    """Return the prediction's findings after checking each value is usable.

    Raises
    ------
    ServiceError
        If the prediction failed, there are no findings, a probability or threshold is
        outside [0, 1] or not finite, or a label repeats.
    """
    if not prediction.ok:
        error = prediction.error or "unknown error"
        raise ServiceError(f"prediction failed ({error}); no result can be built from it")
    findings = list(prediction.findings)
    if not findings:
        raise ServiceError("prediction has no findings; no result can be built from it")
    seen: set[str] = set()
    for finding in findings:
        for name, value in (("probability", finding.probability), ("threshold", finding.threshold)):
            if not np.isfinite(value) or not 0.0 <= value <= 1.0:
                raise ServiceError(
                    f"finding {finding.label!r}: {name} {value!r} is not a number in [0, 1]"
                )
        if finding.label in seen:
            raise ServiceError(f"finding {finding.label!r} appears twice in one prediction")
        seen.add(finding.label)
    return findings


__all__ = ["checked_findings", "concept_of", "model_identity"]
