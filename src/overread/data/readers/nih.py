"""NIH ChestX-ray14 (Wang et al., CVPR 2017): ``Data_Entry_2017(_v2020).csv``.

``Finding Labels`` lists the image's findings separated by ``|``, or says
``No Finding``. The labels were mined from reports by NLP and have no uncertain or
blank values: a finding that is not listed is negative. ``Follow-up #`` numbers a
patient's studies, so a study is (``Patient ID``, ``Follow-up #``).

The table keeps NIH's own label set by default (:data:`NIH_LABELS`). With
``label_set="overread"`` the findings are mapped onto CheXpert's 14 labels where
they correspond (:data:`NIH_TO_OVERREAD`); CheXpert labels NIH never states
(Enlarged Cardiomediastinum, Lung Opacity, Fracture, Support Devices) are blank,
and NIH labels without a CheXpert counterpart (Infiltration, Emphysema, Fibrosis,
Hernia) are dropped.

``BBox_List_2017.csv`` gives boxes for 984 findings on 880 images:
:func:`read_nih_bboxes`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from overread.data.readers.base import (
    drop_rows,
    finish,
    line_numbers,
    locate_by_name,
    read_csv,
    require_columns,
)
from overread.data.table import KEY_COLUMNS, LabelTable, SkippedRow
from overread.errors import DatasetError
from overread.findings import CHEXPERT_LABELS, Finding

#: NIH's 14 findings in the order of the paper's tables, then "No Finding".
NIH_LABELS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
    "No Finding",
)

#: NIH finding -> overread (CheXpert) label, where the two mean the same thing.
#: Mass and Nodule are both CheXpert's "Lung Lesion" (positive if either is).
#: Pleural_Thickening is one of several findings CheXpert files under
#: "Pleural Other", so it can make that label positive but its absence cannot
#: make it negative (see :func:`read_nih`).
NIH_TO_OVERREAD: dict[str, str] = {
    "No Finding": Finding.NO_FINDING.value,
    "Atelectasis": Finding.ATELECTASIS.value,
    "Cardiomegaly": Finding.CARDIOMEGALY.value,
    "Effusion": Finding.PLEURAL_EFFUSION.value,
    "Pneumonia": Finding.PNEUMONIA.value,
    "Pneumothorax": Finding.PNEUMOTHORAX.value,
    "Consolidation": Finding.CONSOLIDATION.value,
    "Edema": Finding.EDEMA.value,
    "Mass": Finding.LUNG_LESION.value,
    "Nodule": Finding.LUNG_LESION.value,
    "Pleural_Thickening": Finding.PLEURAL_OTHER.value,
}

#: Overread labels that an NIH finding can only make positive.
POSITIVE_ONLY: frozenset[str] = frozenset({Finding.PLEURAL_OTHER.value})

REQUIRED = ("Image Index", "Finding Labels", "Patient ID")
METADATA_COLUMNS: dict[str, str] = {
    "Follow-up #": "follow_up",
    "Patient Age": "age",
    "Patient Gender": "sex",
    "View Position": "projection",
}


def _nih_findings(text: pd.Series) -> pd.DataFrame:
    """One 0/1 column per NIH label from the '|'-separated ``Finding Labels``."""
    dummies = text.fillna("").str.get_dummies(sep="|")
    dummies.columns = [str(c).strip() for c in dummies.columns]
    return dummies.T.groupby(level=0).max().T if dummies.columns.duplicated().any() else dummies


def read_nih(
    csv_path: Path,
    *,
    root: Path | None = None,
    label_set: Literal["nih", "overread"] = "nih",
    check_files: bool | None = None,
) -> LabelTable:
    """Read NIH ChestX-ray14's ``Data_Entry_2017`` CSV into a :class:`LabelTable`.

    Parameters
    ----------
    csv_path
        ``Data_Entry_2017.csv`` or ``Data_Entry_2017_v2020.csv`` (gzipped works).
    root
        Folder holding the images, in any sub-folders (``images_001/images/...``):
        images are found by file name.
    label_set
        ``"nih"`` keeps NIH's 14 findings + No Finding; ``"overread"`` maps them
        onto the 14 CheXpert labels.
    check_files
        Leave out rows whose image is not found; defaults to True when a root is given.
    """
    source = Path(csv_path)
    raw = read_csv(source)
    require_columns(raw, REQUIRED, source, "NIH ChestX-ray14")
    lines = line_numbers(raw)
    names = raw["Image Index"].fillna("").str.strip()
    findings = _nih_findings(raw["Finding Labels"])
    skipped: list[SkippedRow] = []
    bad = np.zeros(len(raw), dtype=bool)
    unknown = [c for c in findings.columns if c not in NIH_LABELS]
    for column in unknown:
        for pos in np.flatnonzero(findings[column].to_numpy() > 0).tolist():
            if not bad[pos]:
                skipped.append(
                    SkippedRow(
                        int(lines[pos]),
                        str(names.iat[pos]),
                        f"unknown finding {column!r} in Finding Labels "
                        f"(known: {', '.join(NIH_LABELS)})",
                    )
                )
            bad[pos] = True
    empty = (raw["Finding Labels"].fillna("").str.strip() == "").to_numpy()
    both = np.zeros(len(raw), dtype=bool)
    if "No Finding" in findings.columns:
        others = [c for c in findings.columns if c != "No Finding"]
        both = (findings["No Finding"].to_numpy() > 0) & (findings[others].to_numpy().sum(1) > 0)
    no_name = (names == "").to_numpy()
    no_patient = raw["Patient ID"].isna().to_numpy()
    for mask, reason in (
        (empty, "Finding Labels is empty"),
        (both, "Finding Labels combines 'No Finding' with findings"),
        (no_name, "Image Index is empty"),
        (no_patient, "Patient ID is empty"),
    ):
        for pos in np.flatnonzero(mask & ~bad).tolist():
            skipped.append(SkippedRow(int(lines[pos]), str(names.iat[pos]), reason))
        bad |= mask
    native = pd.DataFrame(
        {
            label: (
                findings[label].to_numpy(dtype=np.float32)
                if label in findings.columns
                else np.zeros(len(raw), dtype=np.float32)
            )
            for label in NIH_LABELS
        }
    )
    if label_set == "nih":
        labels = list(NIH_LABELS)
        values = native
    elif label_set == "overread":
        labels = list(CHEXPERT_LABELS)
        values = pd.DataFrame(np.nan, index=native.index, columns=labels, dtype=np.float32)
        for nih_label, ours in NIH_TO_OVERREAD.items():
            if ours in POSITIVE_ONLY:
                values[ours] = np.where(native[nih_label] > 0, 1.0, values[ours])
            else:
                current = values[ours].fillna(0.0)
                values[ours] = np.maximum(current, native[nih_label])
    else:
        raise DatasetError(f"unknown NIH label set {label_set!r}: use 'nih' or 'overread'")
    patient = raw["Patient ID"].fillna("").str.strip().str.lstrip("0").replace("", "0")
    follow = raw["Follow-up #"].fillna("0").str.strip() if "Follow-up #" in raw.columns else None
    keys = pd.DataFrame(
        {
            "path": names,
            "patient_id": patient,
            "study_id": patient + "/" + (follow if follow is not None else names),
        }
    )
    meta = pd.DataFrame(index=raw.index)
    for column, name in METADATA_COLUMNS.items():
        if column in raw.columns:
            meta[name] = raw[column]
    for name in ("age", "follow_up"):
        if name in meta.columns:
            meta[name] = pd.to_numeric(meta[name], errors="coerce")
    meta["source_line"] = lines
    frame = pd.concat([keys[list(KEY_COLUMNS)], values[labels], meta], axis=1)
    frame = drop_rows(frame, bad)
    if root is not None:
        located = locate_by_name(Path(root), frame["path"])
        frame["path"] = frame["path"].map(lambda name: located.get(name, name))
    skipped.sort(key=lambda row: row.line)
    table = LabelTable(
        frame=frame, labels=labels, root=root, dataset="nih", source=source, skipped=skipped
    )
    return finish(table, check=root is not None if check_files is None else check_files)


def read_nih_bboxes(csv_path: Path) -> pd.DataFrame:
    """Read ``BBox_List_2017.csv``: one row per box.

    The file's header is ``Image Index, Finding Label, Bbox [x,y,w,h], , ,`` (the
    four numbers spill into unnamed columns). Returns columns ``image``, ``label``,
    ``x``, ``y``, ``w``, ``h`` (pixels of the 1024x1024 image), plus ``x1``/``y1``
    for the far corner. Rows with a label outside NIH's set or non-numeric boxes
    raise a DatasetError naming the line.
    """
    source = Path(csv_path)
    raw = read_csv(source)
    if len(raw.columns) < 6 or list(raw.columns[:2]) != ["Image Index", "Finding Label"]:
        raise DatasetError(
            f"{source}: not an NIH BBox_List file: expected 'Image Index, Finding Label, "
            f"Bbox [x,y,w,h]' and three more columns, found {', '.join(map(str, raw.columns))}"
        )
    box = raw.iloc[:, 2:6].apply(pd.to_numeric, errors="coerce")
    box.columns = ["x", "y", "w", "h"]
    out = pd.DataFrame({"image": raw["Image Index"].str.strip(), "label": raw["Finding Label"]})
    out["label"] = out["label"].str.strip().replace({"Infiltrate": "Infiltration"})
    out = pd.concat([out, box], axis=1)
    lines = line_numbers(raw)
    for pos in np.flatnonzero(box.isna().any(axis=1).to_numpy()).tolist():
        raise DatasetError(f"{source}: line {lines[pos]}: bounding box is not four numbers")
    for pos in np.flatnonzero(~out["label"].isin(NIH_LABELS).to_numpy()).tolist():
        raise DatasetError(
            f"{source}: line {lines[pos]}: unknown finding {out['label'].iat[pos]!r}"
        )
    out["x1"] = out["x"] + out["w"]
    out["y1"] = out["y"] + out["h"]
    boxes: pd.DataFrame = out
    return boxes


__all__ = ["NIH_LABELS", "NIH_TO_OVERREAD", "read_nih", "read_nih_bboxes"]
