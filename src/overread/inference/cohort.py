"""Evaluation inputs from a model package run on a phantom cohort.

The statistics in :mod:`overread.evaluation` never run a model; this module, in the
layer that does, runs one and hands the aligned outputs to them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from overread.errors import EvaluationError
from overread.evaluation.inputs import EvaluationInputs, read_csv_table
from overread.inference.pipeline import Pipeline


def cohort_inputs(
    package: str,
    cohort: Path,
    *,
    batch_size: int = 16,
    tta_views: int | None = None,
    mc_dropout: int | None = None,
) -> EvaluationInputs:
    """Run a model package on a phantom cohort and pair its outputs with ``truth.csv``.

    Sex, Age, Site and Group become subgroup columns, PatientID the bootstrap
    cluster, and the package's operating-point thresholds the fixed thresholds.
    Images the model could not read are left out with a warning. The package's
    referral rule and conformal calibration (when it applies to these
    probabilities) travel along for the selective-prediction part of the report.
    """
    truth_path = cohort / "truth.csv"
    table = read_csv_table(truth_path, "truth")
    if "Path" not in table.columns:
        raise EvaluationError(f"{truth_path}: no Path column; is {cohort} a phantom cohort?")
    pipeline = Pipeline.from_name(package, tta_views=tta_views, mc_dropout=mc_dropout)
    names = [label for label in pipeline.labels if label in table.columns]
    if not names:
        raise EvaluationError(f"{truth_path}: none of the model's labels are columns here")
    paths = [str(cohort / p) for p in table["Path"].astype(str)]
    predictions = pipeline.predict(paths, batch_size=batch_size)
    warnings: list[str] = []
    ok = np.array([p.ok for p in predictions])
    for p in predictions:
        if not p.ok:
            warnings.append(f"{p.path}: {p.error}")
    if not ok.any():
        raise EvaluationError(f"{cohort}: the model could not read any image")
    kept = [p for p in predictions if p.ok]
    scores = np.array([[p.finding(n).probability for n in names] for p in kept])
    thresholds = {n: kept[0].finding(n).threshold for n in names}
    rows = table.loc[ok].reset_index(drop=True)
    truth = rows[names].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    group_columns = [c for c in ("Sex", "Age", "Site", "Group") if c in rows.columns]
    manifest = pipeline.package.manifest
    conformal = None
    if manifest.conformal is not None and pipeline.conformal_applies:
        conformal = manifest.conformal.model_dump(mode="json")
    return EvaluationInputs(
        ids=rows["Path"].astype(str).tolist(),
        labels=names,
        truth=truth,
        scores=scores,
        patient_ids=rows["PatientID"].astype(str).to_numpy()
        if "PatientID" in rows.columns
        else None,
        groups=rows[group_columns].copy(),
        thresholds=thresholds,
        source=f"{package} on {cohort}",
        warnings=warnings,
        failed=int((~ok).sum()),
        refer_proximity=manifest.refer_uncertainty,
        conformal=conformal,
    )


__all__ = ["cohort_inputs"]
