"""A generic folder of images with a CSV of labels.

The CSV has a path column (relative to the folder), optionally patient and
study columns, and one column per label holding 1/0/-1/blank. Every other
column is carried along as metadata (lower-cased). Without a patient column each
image counts as its own patient, which a patient-level split cannot protect:
the table's warnings say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from overread.data.readers.base import (
    assemble,
    drop_rows,
    finish,
    line_numbers,
    parse_label_values,
    read_csv,
    require_columns,
)
from overread.data.table import LabelTable, SkippedRow
from overread.errors import DatasetError

PATH_COLUMNS = ("path", "Path", "image", "filename", "file")
PATIENT_COLUMNS = ("patient_id", "PatientID", "Patient ID", "patient", "subject_id")
STUDY_COLUMNS = ("study_id", "StudyInstanceUID", "study")


def _pick(frame: pd.DataFrame, wanted: str | None, choices: Sequence[str]) -> str | None:
    if wanted is not None:
        return wanted
    return next((c for c in choices if c in frame.columns), None)


def read_folder(
    csv_path: Path,
    *,
    root: Path | None = None,
    labels: Sequence[str] | None = None,
    path_column: str | None = None,
    patient_column: str | None = None,
    study_column: str | None = None,
    check_files: bool | None = None,
) -> LabelTable:
    """Read a folder + CSV dataset into a :class:`LabelTable`.

    Parameters
    ----------
    csv_path
        The label CSV.
    root
        The image folder; defaults to the CSV's folder. Files are checked.
    labels
        Label columns to read. Default: every column that is not a key column and
        whose values are all 1, 0, -1 or blank.
    path_column, patient_column, study_column
        Column names; found among common spellings when not given.
    check_files
        Leave out rows whose image does not exist (default True).
    """
    source = Path(csv_path)
    raw = read_csv(source)
    path_col = _pick(raw, path_column, PATH_COLUMNS)
    if path_col is None:
        raise DatasetError(
            f"{source}: no image path column (tried {', '.join(PATH_COLUMNS)}); "
            "name it with path_column"
        )
    patient_col = _pick(raw, patient_column, PATIENT_COLUMNS)
    study_col = _pick(raw, study_column, STUDY_COLUMNS)
    keys_used = {c for c in (path_col, patient_col, study_col) if c is not None}
    if labels is None:
        labels = []
        for column in raw.columns:
            if column in keys_used:
                continue
            numbers = pd.to_numeric(raw[column], errors="coerce")
            given = raw[column].notna()
            if given.any() and numbers[given].isin([1.0, 0.0, -1.0]).all():
                labels.append(str(column))
        if not labels:
            raise DatasetError(f"{source}: no label columns found (columns of 1/0/-1/blank)")
    require_columns(
        raw,
        [path_col, *(c for c in keys_used if c != path_col), *labels],
        source,
        "labelled folder",
    )
    paths = raw[path_col].fillna("")
    values, bad, skipped = parse_label_values(raw, labels, paths)
    warnings: list[str] = []
    if patient_col is None:
        warnings.append(
            f"{source.name} has no patient column: each image is treated as its own patient, "
            "so splits cannot keep a patient's images together"
        )
        patient = paths
    else:
        patient = raw[patient_col].fillna("").astype(str)
    study = raw[study_col].fillna("").astype(str) if study_col is not None else patient
    keys = pd.DataFrame({"path": paths, "patient_id": patient, "study_id": study})
    meta = raw[[c for c in raw.columns if c not in keys_used and c not in labels]].copy()
    meta.columns = [str(c).lower().replace(" ", "_") for c in meta.columns]
    meta["source_line"] = line_numbers(raw)
    empty = (paths == "").to_numpy()
    lines = line_numbers(raw)
    for pos in np.flatnonzero(empty & ~bad).tolist():
        skipped.append(SkippedRow(int(lines[pos]), "", "image path is empty"))
    bad |= empty
    frame = drop_rows(assemble(keys, values, meta, labels), bad)
    skipped.sort(key=lambda row: row.line)
    table = LabelTable(
        frame=frame,
        labels=list(labels),
        root=Path(root) if root is not None else source.parent,
        dataset="folder",
        source=source,
        skipped=skipped,
        warnings=warnings,
    )
    return finish(table, check=True if check_files is None else check_files)


__all__ = ["read_folder"]
