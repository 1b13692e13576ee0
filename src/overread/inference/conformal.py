"""Calibrate a package's conformal sets on a held-out cohort; write a new version.

The package is run on a labelled phantom cohort exactly as it will serve (same
runtime, same test-time augmentation and dropout settings); the per-label
quantiles (:func:`overread.evaluation.conformal.calibrate_conformal`) go into a
``conformal`` manifest section of a **new** package version
(:func:`overread.models.package.derive_package`): a verified package is never
edited. The cohort must be one the model was neither trained nor evaluated on.
When the calibration used test-time augmentation or Monte Carlo dropout, the new
version's ``uncertainty`` section makes those settings its defaults, so the service
serves the probabilities the sets were calibrated on.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from overread.errors import EvaluationError
from overread.evaluation.conformal import ConformalMethod, calibrate_conformal
from overread.inference.cohort import cohort_inputs
from overread.inference.pipeline import Pipeline
from overread.models.package import ModelPackage, derive_package


def _cohort_description(cohort: Path, n_images: int) -> dict[str, Any]:
    truth = cohort / "truth.csv"
    description: dict[str, Any] = {
        "cohort": cohort.name,
        "images": n_images,
        "truth_sha256": hashlib.sha256(truth.read_bytes()).hexdigest(),
    }
    meta = cohort / "cohort.json"
    if meta.is_file():
        try:
            parameters = json.loads(meta.read_text()).get("parameters", {})
        except (OSError, ValueError):
            parameters = {}
        for key in ("seed", "n", "rows", "sites", "modality"):
            if key in parameters:
                description[f"phantom_{key}"] = parameters[key]
        description["generator"] = "overread phantom cxr"
    return description


def conformal_section(
    package: str,
    cohort: Path,
    *,
    alpha: float,
    method: ConformalMethod | str = ConformalMethod.CLASS_CONDITIONAL,
    tta_views: int | None = None,
    mc_dropout: int | None = None,
    batch_size: int = 16,
) -> tuple[ModelPackage, dict[str, Any]]:
    """The package and the ``conformal`` manifest section calibrated on ``cohort``."""
    method = ConformalMethod(method)
    inputs = cohort_inputs(
        package, cohort, batch_size=batch_size, tta_views=tta_views, mc_dropout=mc_dropout
    )
    if inputs.failed:
        raise EvaluationError(
            f"{cohort}: {inputs.failed} image(s) could not be read; calibrate on a cohort "
            f"the model reads in full ({inputs.warnings[0] if inputs.warnings else ''})"
        )
    pipeline = Pipeline.from_name(package, tta_views=tta_views, mc_dropout=mc_dropout)
    quantiles = calibrate_conformal(inputs.truth, inputs.scores, inputs.labels, alpha)
    description = _cohort_description(cohort, len(inputs.ids))
    if inputs.patient_ids is not None:
        description["patients"] = len(np.unique(inputs.patient_ids))
    section = {
        "alpha": alpha,
        "method": method.value,
        "quantiles": {label: q.to_dict() for label, q in quantiles.items()},
        "n": len(inputs.ids),
        "calibration": description,
        "scores": pipeline.sampling.describe()
        | {"runtime": pipeline.model.runtime, "precision": pipeline.model.precision},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return pipeline.package, section


def write_conformal_package(
    package: str,
    cohort: Path,
    out: Path,
    *,
    version: str,
    alpha: float,
    method: ConformalMethod | str = ConformalMethod.CLASS_CONDITIONAL,
    tta_views: int | None = None,
    mc_dropout: int | None = None,
    key: bytes | None = None,
) -> tuple[ModelPackage, dict[str, Any]]:
    """Calibrate on ``cohort`` and write the new version to ``out``; returns it and
    the section written."""
    source, section = conformal_section(
        package, cohort, alpha=alpha, method=method, tta_views=tta_views, mc_dropout=mc_dropout
    )
    updates: dict[str, Any] = {"conformal": section}
    if tta_views is not None or mc_dropout is not None:
        # Serve as calibrated: the new version's defaults are the settings used here.
        current = source.manifest.uncertainty
        settings = current.model_dump() if current is not None else {}
        if tta_views is not None:
            settings["tta_views"] = tta_views
        if mc_dropout is not None:
            settings["mc_dropout_passes"] = mc_dropout
        updates["uncertainty"] = settings
    derived = derive_package(source, out, version=version, key=key, **updates)
    return derived, section


__all__ = ["conformal_section", "write_conformal_package"]
