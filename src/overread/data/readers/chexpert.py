"""CheXpert (Irvin et al., AAAI 2019): ``train.csv`` / ``valid.csv``.

Columns ``Path, Sex, Age, Frontal/Lateral, AP/PA`` then the 14 labels with values
1.0, 0.0, -1.0 (uncertain) or blank. Patient and study come from the path, e.g.
``CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg`` is patient
``patient00001``, study ``patient00001/study1``, a frontal view.
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

#: Path pattern: ``.../patientNNNNN/studyN/viewN_frontal.ext`` (the prefix is free).
PATH_PATTERN = (
    r"(?:^|/)(?P<patient>patient\d+)/(?P<study>study\d+)/view\d+_(?P<view>frontal|lateral)\.\w+$"
)

#: CheXpert metadata columns and the names overread gives them.
METADATA_COLUMNS: dict[str, str] = {
    "Sex": "sex",
    "Age": "age",
    "Frontal/Lateral": "frontal_lateral",
    "AP/PA": "projection",
}


def parse_chexpert_paths(paths: pd.Series) -> pd.DataFrame:
    """Split CheXpert paths into patient, study (patient/studyN) and view.

    Rows whose path does not follow the layout get NaN in every column.
    """
    parts = paths.str.replace("\\", "/", regex=False).str.extract(PATH_PATTERN)
    study = parts["patient"] + "/" + parts["study"]
    return pd.DataFrame(
        {"patient_id": parts["patient"], "study_id": study, "view": parts["view"]},
        index=paths.index,
    )


def read_chexpert(
    csv_path: Path, *, root: Path | None = None, check_files: bool | None = None
) -> LabelTable:
    """Read a CheXpert label CSV into a :class:`LabelTable`.

    Parameters
    ----------
    csv_path
        ``train.csv`` or ``valid.csv`` (gzipped works too).
    root
        Folder the ``Path`` column is relative to (the parent of ``CheXpert-v1.0``).
    check_files
        Leave out rows whose image does not exist; defaults to True when a root is given.
    """
    source = Path(csv_path)
    raw = read_csv(source)
    require_columns(raw, ["Path", *CHEXPERT_LABELS], source, "CheXpert")
    paths = raw["Path"].fillna("")
    keys = parse_chexpert_paths(paths)
    keys.insert(0, "path", paths)
    values, bad, skipped = parse_label_values(raw, CHEXPERT_LABELS, paths)
    unparsed = keys["patient_id"].isna().to_numpy()
    lines = line_numbers(raw)
    for pos in np.flatnonzero(unparsed & ~bad).tolist():
        skipped.append(
            SkippedRow(
                int(lines[pos]),
                str(paths.iat[pos]),
                "path does not follow CheXpert's .../patientN/studyN/viewN_frontal|lateral.jpg layout",
            )
        )
    bad = bad | unparsed
    meta = pd.DataFrame(index=raw.index)
    meta["view"] = keys["view"]
    for column, name in METADATA_COLUMNS.items():
        if column in raw.columns:
            meta[name] = raw[column]
    if "age" in meta.columns:
        meta["age"] = pd.to_numeric(meta["age"], errors="coerce")
    split = paths.str.extract(r"(?:^|/)(train|valid|test)/")[0]
    meta["split"] = split
    meta["source_line"] = lines
    frame = drop_rows(assemble(keys, values, meta, CHEXPERT_LABELS), bad)
    skipped.sort(key=lambda row: row.line)
    table = LabelTable(
        frame=frame,
        labels=list(CHEXPERT_LABELS),
        root=root,
        dataset="chexpert",
        source=source,
        skipped=skipped,
    )
    return finish(table, check=root is not None if check_files is None else check_files)


__all__ = ["PATH_PATTERN", "parse_chexpert_paths", "read_chexpert"]
