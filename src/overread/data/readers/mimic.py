"""MIMIC-CXR-JPG v2.0.0 (Johnson et al., 2019).

Labels come per *study*: ``mimic-cxr-2.0.0-chexpert.csv`` or ``-negbio.csv``
(``subject_id, study_id`` and the 14 CheXpert labels, 1/0/-1/blank, in
alphabetical column order). Images come from ``mimic-cxr-2.0.0-metadata.csv``
(``dicom_id, subject_id, study_id, ViewPosition, ...``) and the official split
from ``mimic-cxr-2.0.0-split.csv`` (``dicom_id, study_id, subject_id, split``).

With the metadata file the table has one row per image, at
``files/p10/p10000032/s50414267/<dicom_id>.jpg``; without it, one row per study
whose path is the study folder. Images of studies the label file does not cover
are dropped (counted in the table's warnings); label rows of studies with no
image in the metadata are skipped rows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from overread.data.readers.base import (
    drop_rows,
    finish,
    line_numbers,
    parse_label_values,
    read_csv,
    require_columns,
)
from overread.data.table import KEY_COLUMNS, LabelTable, SkippedRow
from overread.errors import DatasetError
from overread.findings import CHEXPERT_LABELS


def _study_folder(subject: pd.Series, study: pd.Series) -> pd.Series:
    return "files/p" + subject.str[:2] + "/p" + subject + "/s" + study


def read_mimic(
    csv_path: Path,
    *,
    root: Path | None = None,
    metadata: Path | None = None,
    split: Path | None = None,
    check_files: bool | None = None,
) -> LabelTable:
    """Read MIMIC-CXR-JPG labels (and optionally images and split) into a LabelTable.

    Parameters
    ----------
    csv_path
        ``mimic-cxr-2.0.0-chexpert.csv`` or ``mimic-cxr-2.0.0-negbio.csv``.
    root
        The MIMIC-CXR-JPG folder that holds ``files/``.
    metadata
        ``mimic-cxr-2.0.0-metadata.csv``: expands studies into images, adds ``view``.
    split
        ``mimic-cxr-2.0.0-split.csv``: adds the official ``split`` column (needs metadata).
    check_files
        Leave out rows whose image is not found; defaults to True when a root is given.
    """
    source = Path(csv_path)
    raw = read_csv(source)
    require_columns(raw, ["subject_id", "study_id", *CHEXPERT_LABELS], source, "MIMIC-CXR-JPG")
    subject = raw["subject_id"].fillna("").str.strip()
    study = raw["study_id"].fillna("").str.strip()
    folders = _study_folder(subject, study)
    values, bad, skipped = parse_label_values(raw, CHEXPERT_LABELS, folders)
    lines = line_numbers(raw)
    no_key = ((subject == "") | (study == "")).to_numpy()
    for pos in np.flatnonzero(no_key & ~bad).tolist():
        skipped.append(SkippedRow(int(lines[pos]), "", "subject_id or study_id is empty"))
    bad |= no_key
    studies = pd.concat(
        [
            pd.DataFrame(
                {
                    "path": folders,
                    "patient_id": subject,
                    "study_id": study,
                    "source_line": lines,
                }
            ),
            values,
        ],
        axis=1,
    )
    studies = drop_rows(studies, bad)
    warnings: list[str] = []
    if metadata is None:
        if split is not None:
            raise DatasetError(
                f"{split}: the MIMIC split file lists images (dicom_id); give the metadata "
                "file too so studies can be expanded into images"
            )
        frame = studies
    else:
        meta_source = Path(metadata)
        meta = read_csv(meta_source)
        require_columns(meta, ["dicom_id", "subject_id", "study_id"], meta_source, "MIMIC metadata")
        keep = ["dicom_id", "subject_id", "study_id"]
        meta = meta[keep + (["ViewPosition"] if "ViewPosition" in meta.columns else [])].copy()
        meta = meta.rename(columns={"subject_id": "patient_id", "ViewPosition": "view"})
        merged = studies.drop(columns="path").merge(
            meta, on=["patient_id", "study_id"], how="left", indicator=True
        )
        lonely = merged["_merge"] == "left_only"
        for _, row in merged.loc[lonely].iterrows():
            skipped.append(
                SkippedRow(
                    int(row["source_line"]),
                    "",
                    f"study {row['study_id']} of subject {row['patient_id']} has no image "
                    "in the metadata file",
                )
            )
        merged = merged.loc[~lonely].drop(columns="_merge")
        unlabelled = len(meta) - len(merged)
        if unlabelled:
            warnings.append(
                f"{unlabelled} image(s) in {meta_source.name} belong to studies without labels "
                f"in {source.name} and were dropped"
            )
        merged["path"] = (
            _study_folder(merged["patient_id"], merged["study_id"])
            + "/"
            + merged["dicom_id"]
            + ".jpg"
        )
        if split is not None:
            split_source = Path(split)
            splits = read_csv(split_source)
            require_columns(splits, ["dicom_id", "split"], split_source, "MIMIC split")
            merged = merged.merge(splits[["dicom_id", "split"]], on="dicom_id", how="left")
        frame = merged.reset_index(drop=True)
    labels = list(CHEXPERT_LABELS)
    rest = [c for c in frame.columns if c not in (*KEY_COLUMNS, *labels)]
    frame = frame[[*KEY_COLUMNS, *labels, *rest]]
    skipped.sort(key=lambda row: row.line)
    table = LabelTable(
        frame=frame,
        labels=labels,
        root=root,
        dataset="mimic",
        source=source,
        skipped=skipped,
        warnings=warnings,
    )
    return finish(table, check=root is not None if check_files is None else check_files)


__all__ = ["read_mimic"]
