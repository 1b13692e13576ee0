"""The common shape every dataset reader returns: :class:`LabelTable`.

CheXpert, NIH ChestX-ray14, MIMIC-CXR-JPG, SIIM, a generic folder + CSV and
the phantom cohorts all describe the same thing (images of patients' studies with
per-label findings) in different spellings. Readers translate each spelling into
one pandas frame with fixed key columns, so that label policies, patient-level
splits, statistics and the PyTorch dataset are written once.

Raw label values are kept exactly as the source states them: ``1.0`` positive,
``0.0`` negative, ``-1.0`` uncertain, ``NaN`` blank (not mentioned). Turning them
into training targets is the job of :mod:`overread.data.policy`, not of readers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from overread.errors import DatasetError

#: Key columns every LabelTable frame has (metadata columns may follow).
KEY_COLUMNS: tuple[str, ...] = ("path", "patient_id", "study_id")

#: The raw values a label cell may hold, besides blank (NaN).
RAW_VALUES: frozenset[float] = frozenset({1.0, 0.0, -1.0})

POSITIVE = 1.0
NEGATIVE = 0.0
UNCERTAIN = -1.0


@dataclass(frozen=True)
class SkippedRow:
    """A row of a label file that a reader left out, and why.

    Parameters
    ----------
    line
        Line number in the source file (the header is line 1), or 0 when the
        problem is not tied to one line (an image found to be unreadable later).
    path
        The image path the row names, as written in the file ('' if none).
    reason
        One human-readable sentence saying what is wrong.
    """

    line: int
    path: str
    reason: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "image"
        name = f" ({self.path})" if self.path else ""
        return f"{where}{name}: {self.reason}"


@dataclass
class LabelTable:
    """Images with their patient, study and raw per-label findings.

    Attributes
    ----------
    frame
        One row per image (per study for label files without image lists):
        ``path`` (relative to :attr:`root`), ``patient_id``, ``study_id``, one
        column per name in :attr:`labels` holding 1/0/-1/NaN, then metadata
        columns such as ``sex``, ``age``, ``view``, ``site``, ``group``, and
        ``source_line``, the row's line in the label file (header = 1).
    labels
        The label names this table carries, in column order. CheXpert, MIMIC
        and the phantoms use :data:`overread.findings.CHEXPERT_LABELS`; NIH keeps
        its own set unless mapped.
    root
        Folder that ``path`` is relative to, or None when images are not at hand.
    dataset
        Which reader produced the table ("chexpert", "nih", ...).
    source
        The label file that was read.
    skipped
        Rows left out, each with a reason.
    warnings
        Whole-file remarks (a column filled in, images without labels dropped).
    """

    frame: pd.DataFrame
    labels: list[str]
    root: Path | None = None
    dataset: str = ""
    source: Path | None = None
    skipped: list[SkippedRow] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in (*KEY_COLUMNS, *self.labels) if c not in self.frame.columns]
        if missing:
            raise DatasetError(f"label table is missing columns: {', '.join(missing)}")

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def raw(self) -> npt.NDArray[np.float32]:
        """Raw labels as float32 (N, L): 1, 0, -1 or NaN."""
        return self.frame[self.labels].to_numpy(dtype=np.float32, na_value=np.nan)

    @property
    def n_patients(self) -> int:
        return int(self.frame["patient_id"].nunique())

    @property
    def n_studies(self) -> int:
        return int(self.frame["study_id"].nunique())

    @property
    def n_images(self) -> int:
        return int(self.frame["path"].nunique())

    def image_path(self, index: int) -> Path:
        """The image file of row ``index``: ``root / path`` (or ``path`` alone)."""
        rel = Path(str(self.frame["path"].iat[index]))
        return rel if self.root is None or rel.is_absolute() else self.root / rel

    def take(self, rows: Sequence[int] | npt.NDArray[np.integer] | pd.Series) -> LabelTable:
        """A new table with the given positional rows (index reset)."""
        idx = np.asarray(rows)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        frame = self.frame.iloc[idx].reset_index(drop=True)
        return replace(self, frame=frame, skipped=list(self.skipped), warnings=list(self.warnings))

    def with_labels(self, labels: Iterable[str]) -> LabelTable:
        """A new table restricted to (and ordered by) the given labels."""
        wanted = list(labels)
        unknown = [name for name in wanted if name not in self.labels]
        if unknown:
            raise DatasetError(
                f"labels not in this {self.dataset or 'dataset'} table: {', '.join(unknown)}; "
                f"it has: {', '.join(self.labels)}"
            )
        rest = [c for c in self.frame.columns if c not in self.labels and c not in KEY_COLUMNS]
        frame = self.frame[[*KEY_COLUMNS, *wanted, *rest]].copy()
        return replace(self, frame=frame, labels=wanted)


__all__ = [
    "KEY_COLUMNS",
    "NEGATIVE",
    "POSITIVE",
    "RAW_VALUES",
    "UNCERTAIN",
    "LabelTable",
    "SkippedRow",
]
