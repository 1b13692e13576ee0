"""What all readers share: reading a CSV with clear errors, checking label values
row by row without a Python loop per row, and checking that image files exist.

A label file that cannot be used at all (missing, unparseable, required columns
absent) raises :class:`~overread.errors.DatasetError` naming the file. A row that
cannot be used (a label value outside 1/0/-1/blank, a path that does not parse or
does not exist) is left out and recorded as a :class:`SkippedRow`: one bad row in
200,000 must not stop a training run, but it must not pass silently either.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from overread.data.table import KEY_COLUMNS, LabelTable, SkippedRow
from overread.errors import DatasetError

log = logging.getLogger(__name__)


def read_csv(path: Path, *, dtype: object = str) -> pd.DataFrame:
    """Read a (possibly gzipped) CSV as strings, with column names stripped.

    Strings, so that a label cell written ``1.0``, ``1`` or ``yes`` is judged by
    :func:`parse_label_values`, not silently coerced by pandas.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: label file not found")
    try:
        frame = pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values=[""])  # type: ignore[call-overload]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as exc:
        raise DatasetError(f"{path}: cannot be read as CSV: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    assert isinstance(frame, pd.DataFrame)
    return frame


def require_columns(frame: pd.DataFrame, columns: Iterable[str], source: Path, kind: str) -> None:
    """Raise a DatasetError naming every required column the file lacks."""
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DatasetError(
            f"{source}: not a {kind} label file: missing column(s) "
            f"{', '.join(repr(c) for c in missing)} (found: {', '.join(map(str, frame.columns))})"
        )


def line_numbers(frame: pd.DataFrame) -> npt.NDArray[np.int64]:
    """File line numbers of the rows of a freshly read frame (header is line 1)."""
    return np.asarray(frame.index, dtype=np.int64) + 2


def parse_label_values(
    frame: pd.DataFrame, labels: Sequence[str], paths: pd.Series
) -> tuple[pd.DataFrame, npt.NDArray[np.bool_], list[SkippedRow]]:
    """Turn label columns of strings into floats 1/0/-1/NaN, finding bad cells.

    Returns
    -------
    values
        Float frame with the label columns (bad cells set to NaN).
    bad
        Boolean mask of rows that hold at least one invalid cell.
    skipped
        One :class:`SkippedRow` per bad row naming the first bad label and value.
    """
    values = pd.DataFrame(index=frame.index)
    bad = np.zeros(len(frame), dtype=bool)
    first_problem: dict[int, str] = {}
    for label in labels:
        text = frame[label]
        numbers = pd.to_numeric(text, errors="coerce")
        given = text.notna().to_numpy()
        valid = numbers.isin([1.0, 0.0, -1.0]).to_numpy()
        wrong = given & ~valid
        if wrong.any():
            for pos in np.flatnonzero(wrong).tolist():
                first_problem.setdefault(
                    int(pos),
                    f"label {label!r} has value {text.iat[pos]!r} (expected 1, 0, -1 or blank)",
                )
            bad |= wrong
        values[label] = numbers.where(valid, np.nan).astype(np.float32)
    lines = line_numbers(frame)
    skipped = [
        SkippedRow(int(lines[pos]), str(paths.iat[pos]), first_problem[pos])
        for pos in sorted(first_problem)
    ]
    return values, bad, skipped


def assemble(
    keys: pd.DataFrame,
    values: pd.DataFrame,
    metadata: pd.DataFrame | None,
    labels: Sequence[str],
) -> pd.DataFrame:
    """Join key columns, label columns and metadata in the canonical order."""
    parts = [
        keys[list(KEY_COLUMNS)].reset_index(drop=True),
        values[list(labels)].reset_index(drop=True),
    ]
    if metadata is not None and len(metadata.columns):
        parts.append(metadata.reset_index(drop=True))
    return pd.concat(parts, axis=1)


def drop_rows(frame: pd.DataFrame, bad: npt.NDArray[np.bool_]) -> pd.DataFrame:
    """Rows of ``frame`` not marked bad, index reset."""
    return frame.loc[~bad].reset_index(drop=True)


def check_files(table: LabelTable) -> LabelTable:
    """Leave out rows whose image file does not exist under the table's root."""
    if table.root is None or not len(table):
        return table
    exists = np.fromiter(
        (table.image_path(i).is_file() for i in range(len(table))), dtype=bool, count=len(table)
    )
    if exists.all():
        return table
    missing = np.flatnonzero(~exists)
    line = table.frame["source_line"] if "source_line" in table.frame.columns else None
    new = [
        SkippedRow(
            int(str(line.iat[pos])) if line is not None else 0,
            str(table.frame["path"].iat[pos]),
            f"image file not found: {table.image_path(int(pos))}",
        )
        for pos in missing.tolist()
    ]
    out = table.take(np.flatnonzero(exists))
    out.skipped.extend(new)
    return out


def locate_by_name(root: Path, names: Iterable[str]) -> dict[str, str]:
    """Map file names to their path relative to ``root`` by walking it once.

    NIH and SIIM name images by file name only, while the published archives
    spread them over several folders (``images_001/images/...``).
    """
    wanted = set(names)
    found: dict[str, str] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            if name in wanted and name not in found:
                found[name] = os.path.relpath(os.path.join(folder, name), root)
    log.debug("located %d of %d images under %s", len(found), len(wanted), root)
    return found


def finish(table: LabelTable, check: bool) -> LabelTable:
    """Common last step: the optional file check, and a log line if rows were skipped."""
    if check:
        table = check_files(table)
    if table.skipped:
        log.warning(
            "%s: %d row(s) skipped, first: %s", table.source, len(table.skipped), table.skipped[0]
        )
    return table


__all__ = [
    "assemble",
    "check_files",
    "drop_rows",
    "finish",
    "line_numbers",
    "locate_by_name",
    "parse_label_values",
    "read_csv",
    "require_columns",
]
