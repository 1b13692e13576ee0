"""Calibrating an onboarded model on a labelled local cohort (``overread models calibrate``).

An onboarded package serves its own probabilities with every threshold at 0.5 and is
marked uncalibrated. This fits, on a labelled local cohort, what an overread-trained
package gets on its validation split: Platt scaling per label and the three operating
points (balanced, high sensitivity, high specificity) chosen on the *calibrated*
probabilities, then the split-conformal sets and an evaluation report.

Why the cohort is split: thresholds chosen on the same images they are then judged
on look better than they are, and a conformal guarantee needs scores the fitted
parts never saw. Patients are split in two at random (seeded): Platt scaling and
operating points are fitted on one half; the evaluation report and the conformal
quantiles come from the other, held-out half. The new version carries the report
(``evaluation/metrics.json``, ``evaluation/report.html``) among its files.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from overread.errors import EvaluationError, ModelPackageError
from overread.evaluation.conformal import calibrate_conformal
from overread.evaluation.inputs import EvaluationInputs
from overread.evaluation.report import write_report
from overread.evaluation.study import evaluate
from overread.inference.cohort import cohort_inputs
from overread.models.package import ModelPackage, derive_package
from overread.training.operating import apply_platt, operating_points, platt_calibration

#: Fewest images each half needs for the fit to mean anything.
MIN_IMAGES_PER_HALF = 20

#: Folder in the new package holding the evaluation report.
REPORT_FOLDER = "evaluation"


def _split(inputs: EvaluationInputs, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (fit, held out): a seeded half of the patients each."""
    keys = (
        np.asarray(inputs.patient_ids, dtype=str)
        if inputs.patient_ids is not None
        else np.asarray(inputs.ids, dtype=str)
    )
    patients = np.unique(keys)
    rng = np.random.default_rng(seed)
    chosen = set(rng.permutation(patients)[: len(patients) // 2].tolist())
    fit = np.array([k in chosen for k in keys])
    return fit, ~fit


def _subset(inputs: EvaluationInputs, keep: np.ndarray, scores: np.ndarray) -> EvaluationInputs:
    return replace(
        inputs,
        ids=[i for i, k in zip(inputs.ids, keep, strict=True) if k],
        truth=inputs.truth[keep],
        scores=scores[keep],
        patient_ids=None if inputs.patient_ids is None else inputs.patient_ids[keep],
        groups=inputs.groups.loc[keep].reset_index(drop=True),
    )


def calibrate_package(
    source: ModelPackage,
    cohort: Path,
    out: Path,
    *,
    version: str,
    alpha: float = 0.1,
    seed: int = 0,
    n_resamples: int = 500,
    key: bytes | None = None,
) -> tuple[ModelPackage, dict[str, Any]]:
    """Fit calibration, operating points and conformal sets on ``cohort``; write ``out``.

    Returns the new package and a summary (labels fitted, images per half, mean AUC
    and per-label figures on the held-out half).

    Raises
    ------
    ModelPackageError
        If the source is already calibrated (its calibration is not ``none``).
    EvaluationError
        If the cohort has no truth for the model's labels or is too small to split.
    """
    manifest = source.manifest
    if manifest.calibration.method != "none":
        raise ModelPackageError(
            f"{source.name} {source.version} is already calibrated "
            f"({manifest.calibration.method}); calibrate the uncalibrated version"
        )
    if manifest.is_ensemble:
        raise ModelPackageError(f"{source.name} {source.version}: calibrate its members instead")
    inputs = cohort_inputs(str(source.path), cohort)
    if inputs.failed:
        raise EvaluationError(
            f"{cohort}: {inputs.failed} image(s) could not be read "
            f"({inputs.warnings[0] if inputs.warnings else ''})"
        )
    fit, held = _split(inputs, seed)
    if min(int(fit.sum()), int(held.sum())) < MIN_IMAGES_PER_HALF:
        raise EvaluationError(
            f"{cohort}: {len(inputs.ids)} images; calibration needs at least "
            f"{2 * MIN_IMAGES_PER_HALF} (half to fit, half to check)"
        )
    names = inputs.labels
    mask = (~np.isnan(inputs.truth)).astype(np.float64)
    targets = np.nan_to_num(inputs.truth, nan=0.0)
    calibration = platt_calibration(inputs.scores[fit], targets[fit], mask[fit], names)
    calibrated = apply_platt(inputs.scores, calibration, names)
    fitted = operating_points(calibrated[fit], targets[fit], mask[fit], names)
    neutral = {"balanced": 0.5, "high sensitivity": 0.5, "high specificity": 0.5}
    points = {label: fitted.get(label, dict(neutral)) for label in source.labels}
    held_inputs = replace(
        _subset(inputs, held, calibrated),
        thresholds={label: points[label]["balanced"] for label in names},
        source=f"{source.name} {version} on the held-out half of {cohort.name}",
    )
    metrics = evaluate(held_inputs, n_resamples=n_resamples, subgroup_resamples=50, seed=seed)
    quantiles = calibrate_conformal(held_inputs.truth, held_inputs.scores, names, alpha)
    truth_file = cohort / "truth.csv"
    described = {
        "cohort": cohort.name,
        "images": len(inputs.ids),
        "fit_images": int(fit.sum()),
        "held_out_images": int(held.sum()),
        "split_seed": seed,
        "labels": names,
        "truth_sha256": hashlib.sha256(truth_file.read_bytes()).hexdigest(),
    }
    conformal = {
        "alpha": alpha,
        "method": "class-conditional",
        "quantiles": {label: q.to_dict() for label, q in quantiles.items()},
        "n": int(held.sum()),
        "calibration": described | {"half": "held out"},
        "scores": {"tta_views": 1, "tta": None, "mc_dropout_passes": 0},
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    per_label = {
        name: {
            k: metrics["labels"][name].get(k)
            for k in ("auc", "sensitivity", "specificity", "n_positive", "n_negative")
        }
        for name in names
    }
    summary = {
        "cohort": described,
        "mean_auc": metrics.get("mean_auc"),
        "labels": per_label,
    }
    updates: dict[str, Any] = {
        "calibration": calibration,
        "operating_points": points,
        "conformal": conformal,
        "uncertainty": None,
        "metrics": dict(manifest.metrics) | {"local_calibration": summary},
    }
    if manifest.onboarded is not None:
        updates["onboarded"] = manifest.onboarded.model_copy(
            update={"calibrated": True, "calibration_cohort": described}
        )

    def add_report(staging: Path) -> None:
        write_report(metrics, held_inputs, staging / REPORT_FOLDER, band_resamples=50)

    package = derive_package(source, out, version=version, key=key, contents=add_report, **updates)
    return package, summary


__all__ = ["MIN_IMAGES_PER_HALF", "REPORT_FOLDER", "calibrate_package"]
