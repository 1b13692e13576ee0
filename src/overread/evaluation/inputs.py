"""Evaluation inputs: aligned predictions, truth, patients and subgroups.

Both ways into an evaluation end here: prediction and label CSVs
(:func:`read_prediction_files`) and a model package run on a phantom cohort
(:func:`overread.inference.cohort.cohort_inputs`, which sits above the
statistics, in the layer that runs models).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray
from overread.evaluation.subgroups import age_band


@dataclass
class EvaluationInputs:
    """Aligned predictions and truth for one evaluation.

    ``truth`` and ``scores`` are (n, k) float arrays (truth NaN = missing),
    ``groups`` holds one column per subgroup attribute, and ``thresholds``
    optional fixed thresholds per label (from a model package or a validation
    run); labels without one get a threshold chosen on these data.
    ``refer_proximity`` is the model's threshold-proximity referral level and
    ``conformal`` its conformal calibration (``alpha``, ``method``, per-label
    ``quantiles``), when known: they add the selective-prediction section.
    """

    ids: list[str]
    labels: list[str]
    truth: FloatArray
    scores: FloatArray
    patient_ids: np.ndarray | None = None
    groups: pd.DataFrame = field(default_factory=pd.DataFrame)
    thresholds: dict[str, float] = field(default_factory=dict)
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    failed: int = 0
    refer_proximity: float | None = None
    conformal: Mapping[str, Any] | None = None


def read_csv_table(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={}, keep_default_na=True)
    except FileNotFoundError:
        raise EvaluationError(f"{path}: {what} file not found") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise EvaluationError(f"{path}: cannot read {what} CSV ({exc})") from None
    except OSError as exc:  # a folder, or a path through a file
        raise EvaluationError(f"{path}: cannot read {what} CSV ({exc.strerror or exc})") from None


def read_prediction_files(
    predictions: Path,
    labels: Path,
    groups: Path | None = None,
    *,
    id_column: str = "id",
    patient_column: str = "patient_id",
) -> EvaluationInputs:
    """Read and align the prediction, label and (optional) group CSVs by id.

    Label columns are those present in both files (other than the id and
    patient columns); labels must be 0/1 with blank for missing. The patient
    column may sit in any of the three files; without one, each row is its own
    patient.
    """
    pred = read_csv_table(predictions, "predictions")
    lab = read_csv_table(labels, "labels")
    grp = read_csv_table(groups, "groups") if groups is not None else pd.DataFrame()
    frames = {predictions: pred, labels: lab} | ({groups: grp} if groups is not None else {})
    for path, frame in frames.items():
        if id_column not in frame.columns:
            raise EvaluationError(f"{path}: no id column {id_column!r} (use --id-column)")
        frame[id_column] = frame[id_column].astype(str)
        dupes = frame[id_column][frame[id_column].duplicated()].unique()
        if dupes.size:
            raise EvaluationError(f"{path}: id {dupes[0]!r} appears more than once")
    reserved = {id_column, patient_column}
    names = [c for c in lab.columns if c not in reserved and c in pred.columns]
    if not names:
        raise EvaluationError(
            f"{labels}: no label column also present in {predictions} "
            f"(labels has {', '.join(map(str, lab.columns))})"
        )
    warnings: list[str] = []
    unscored = [c for c in lab.columns if c not in reserved and c not in pred.columns]
    if unscored:
        warnings.append(
            f"{labels}: column(s) {', '.join(map(str, unscored))} have no prediction column and are not evaluated"
        )
    merged = lab.merge(pred, on=id_column, how="inner", suffixes=("", "__score"))
    missing_pred = len(lab) - len(merged)
    if missing_pred:
        warnings.append(f"{missing_pred} labelled id(s) have no prediction and are left out")
    if len(pred) - len(merged):
        warnings.append(f"{len(pred) - len(merged)} predicted id(s) have no label and are left out")
    if merged.empty:
        raise EvaluationError(f"{predictions} and {labels} share no {id_column!r} values")
    truth = np.empty((len(merged), len(names)))
    scores = np.empty_like(truth)
    for j, name in enumerate(names):
        t = pd.to_numeric(merged[name], errors="coerce")
        bad = merged[name].notna() & t.isna()
        if bad.any() or not t.dropna().isin([0, 1]).all():
            example = merged.loc[bad | ~(t.isin([0, 1]) | t.isna()), name].iloc[0]
            raise EvaluationError(
                f"{labels}: column {name!r} has value {example!r}; labels must be 0, 1 or blank"
            )
        truth[:, j] = t.to_numpy(dtype=np.float64)
        s = pd.to_numeric(merged[f"{name}__score"], errors="coerce")
        if s.isna().any():
            row = merged.loc[s.isna(), id_column].iloc[0]
            raise EvaluationError(
                f"{predictions}: column {name!r} has a missing or non-numeric score for id {row!r}"
            )
        scores[:, j] = s.to_numpy(dtype=np.float64)
    patients = None
    for frame in (merged, grp):
        if patient_column in frame.columns:
            source = frame.set_index(id_column)[patient_column]
            patients = source.reindex(merged[id_column]).astype(str).to_numpy()
            break
    if patients is None:
        warnings.append(f"no {patient_column!r} column: each row is treated as its own patient")
    group_frame = pd.DataFrame(index=range(len(merged)))
    if not grp.empty:
        aligned = grp.set_index(id_column).reindex(merged[id_column])
        for column in aligned.columns:
            if column != patient_column:
                group_frame[column] = aligned[column].to_numpy()
    return EvaluationInputs(
        ids=merged[id_column].tolist(),
        labels=names,
        truth=truth,
        scores=scores,
        patient_ids=patients,
        groups=group_frame,
        source=f"{predictions} + {labels}",
        warnings=warnings,
    )


def subgroup_column(groups: pd.DataFrame, name: str) -> np.ndarray:
    """The group labels for attribute ``name`` (case-insensitive); ages become bands."""
    lookup = {c.lower(): c for c in groups.columns}
    column = lookup.get(name.lower())
    if column is None:
        raise EvaluationError(
            f"no subgroup column {name!r} (have: {', '.join(groups.columns) or 'none'})"
        )
    values = groups[column]
    if name.lower() in {"age", "age_years"} and pd.api.types.is_numeric_dtype(values):
        return age_band(values.to_numpy(dtype=np.float64))
    return values.fillna("unknown").astype(str).to_numpy()


__all__ = [
    "EvaluationInputs",
    "read_csv_table",
    "read_prediction_files",
    "subgroup_column",
]
