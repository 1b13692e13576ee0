"""Phantom cohorts written by ``overread phantom cxr``.

``DIR/labels.csv`` is what a report labeller would produce (CheXpert columns,
uncertain and noisy); ``DIR/truth.csv`` holds the exact 0/1 ground truth of the
same images. Train on the first, evaluate on the second. Patient and study come
from the DICOM identifiers in the ``PatientID`` and ``StudyInstanceUID``
columns; site, scanner and demographic group come along as metadata for
site-held-out splits and subgroup analysis.
"""

from __future__ import annotations

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
from overread.findings import CHEXPERT_LABELS

#: Phantom metadata columns and the names overread gives them.
METADATA_COLUMNS: dict[str, str] = {
    "Sex": "sex",
    "Age": "age",
    "Frontal/Lateral": "frontal_lateral",
    "AP/PA": "projection",
    "SeriesInstanceUID": "series_instance_uid",
    "SOPInstanceUID": "sop_instance_uid",
    "StudyDate": "study_date",
    "AccessionNumber": "accession_number",
    "Site": "site",
    "Station": "station",
    "Manufacturer": "manufacturer",
    "Department": "department",
    "Group": "group",
}


def _resolve(csv_path: Path, truth: bool) -> Path:
    path = Path(csv_path)
    if path.is_dir():
        return path / ("truth.csv" if truth else "labels.csv")
    if truth and path.name == "labels.csv":
        return path.with_name("truth.csv")
    return path


def read_phantom(
    csv_path: Path,
    *,
    root: Path | None = None,
    truth: bool = False,
    check_files: bool | None = None,
) -> LabelTable:
    """Read a phantom cohort's ``labels.csv`` (or ``truth.csv``) into a LabelTable.

    Parameters
    ----------
    csv_path
        ``DIR/labels.csv``, ``DIR/truth.csv``, or the cohort folder ``DIR``.
    root
        The cohort folder; defaults to the CSV's folder (``Path`` is relative to it).
    truth
        Read ``truth.csv`` (exact labels) instead of ``labels.csv``.
    check_files
        Leave out rows whose DICOM file is missing (default True).
    """
    source = _resolve(csv_path, truth)
    raw = read_csv(source)
    require_columns(
        raw, ["Path", "PatientID", "StudyInstanceUID", *CHEXPERT_LABELS], source, "phantom cohort"
    )
    paths = raw["Path"].fillna("")
    values, bad, skipped = parse_label_values(raw, CHEXPERT_LABELS, paths)
    lines = line_numbers(raw)
    keys = pd.DataFrame(
        {
            "path": paths,
            "patient_id": raw["PatientID"].fillna(""),
            "study_id": raw["StudyInstanceUID"].fillna(""),
        }
    )
    missing_key = ((keys == "").any(axis=1)).to_numpy()
    for pos in np.flatnonzero(missing_key & ~bad).tolist():
        skipped.append(
            SkippedRow(
                int(lines[pos]), str(paths.iat[pos]), "Path, PatientID or StudyInstanceUID is empty"
            )
        )
    bad |= missing_key
    meta = pd.DataFrame(index=raw.index)
    for column, name in METADATA_COLUMNS.items():
        if column in raw.columns:
            meta[name] = raw[column]
    if "age" in meta.columns:
        meta["age"] = pd.to_numeric(meta["age"], errors="coerce")
    meta["source_line"] = lines
    frame = drop_rows(assemble(keys, values, meta, CHEXPERT_LABELS), bad)
    skipped.sort(key=lambda row: row.line)
    table = LabelTable(
        frame=frame,
        labels=list(CHEXPERT_LABELS),
        root=Path(root) if root is not None else source.parent,
        dataset="phantom-truth" if truth or source.name == "truth.csv" else "phantom",
        source=source,
        skipped=skipped,
    )
    return finish(table, check=True if check_files is None else check_files)


__all__ = ["read_phantom"]
