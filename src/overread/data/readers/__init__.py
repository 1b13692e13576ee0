"""Dataset readers: one function per published format, one entry point.

:func:`read_labels` picks the reader by name; each returns a
:class:`~overread.data.table.LabelTable` with the same key columns.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overread.data.readers.chexpert import parse_chexpert_paths, read_chexpert
from overread.data.readers.folder import read_folder
from overread.data.readers.mimic import read_mimic
from overread.data.readers.nih import NIH_LABELS, NIH_TO_OVERREAD, read_nih, read_nih_bboxes
from overread.data.readers.phantom import read_phantom
from overread.data.readers.siim import read_siim, siim_mask
from overread.data.table import LabelTable
from overread.errors import DatasetError

#: Dataset names :func:`read_labels` understands.
DATASETS: tuple[str, ...] = (
    "chexpert",
    "nih",
    "mimic",
    "siim",
    "folder",
    "phantom",
    "phantom-truth",
)


def read_labels(
    dataset: str, csv_path: str | Path, root: str | Path | None = None, **options: Any
) -> LabelTable:
    """Read a dataset's label file into a :class:`LabelTable`.

    Parameters
    ----------
    dataset
        One of :data:`DATASETS`. ``"phantom-truth"`` is ``"phantom"`` with
        ``truth=True`` (the exact labels in ``truth.csv``).
    csv_path
        The label file (a phantom cohort folder is accepted too).
    root
        Folder the image paths are relative to; when given, rows whose image is
        missing are skipped (phantom and folder datasets check by default).
    **options
        Reader-specific options: ``label_set`` (nih), ``metadata`` and ``split``
        (mimic), ``labels``/``path_column``/``patient_column`` (folder),
        ``truth`` (phantom), ``check_files`` (all).

    Raises
    ------
    DatasetError
        Unknown dataset name, or a file that cannot be used at all. Bad rows do
        not raise: they are in the table's ``skipped`` list.
    """
    name = dataset.lower().strip()
    if name == "phantom-truth":
        options["truth"] = True
        name = "phantom"
    reader = _READERS.get(name)
    if reader is None:
        raise DatasetError(f"unknown dataset {dataset!r}: use one of {', '.join(DATASETS)}")
    accepted = set(inspect.signature(reader).parameters) - {"csv_path", "root"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise DatasetError(
            f"{name} reader has no option(s) {', '.join(unknown)}; it takes: {', '.join(sorted(accepted))}"
        )
    root_path = Path(root) if root is not None else None
    return reader(Path(csv_path), root=root_path, **options)


_READERS: dict[str, Callable[..., LabelTable]] = {
    "chexpert": read_chexpert,
    "nih": read_nih,
    "mimic": read_mimic,
    "siim": read_siim,
    "folder": read_folder,
    "phantom": read_phantom,
}


__all__ = [
    "DATASETS",
    "NIH_LABELS",
    "NIH_TO_OVERREAD",
    "parse_chexpert_paths",
    "read_chexpert",
    "read_folder",
    "read_labels",
    "read_mimic",
    "read_nih",
    "read_nih_bboxes",
    "read_phantom",
    "read_siim",
    "siim_mask",
]
