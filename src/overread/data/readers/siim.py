"""SIIM-ACR Pneumothorax Segmentation (2019): ``train-rle.csv``.

Columns ``ImageId, EncodedPixels`` (the second header has a leading space in the
published file). An image with several pneumothoraces has one row per region; an
image without one has a single ``-1`` row. The table has one row per image with
the single label ``Pneumothorax`` (1 if any region), ``path`` ``<ImageId>.dcm``
(found by name under ``root``), and the image's RLE strings joined by ``|`` in
``encoded_pixels``; :func:`siim_mask` turns those into the union mask.

SIIM's DICOMs carry anonymised per-image patient IDs, so each image is its own
patient and study here: a split cannot be checked for patient overlap beyond that.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from overread.data.readers.base import (
    finish,
    line_numbers,
    locate_by_name,
    read_csv,
    require_columns,
)
from overread.data.rle import SIIM_SHAPE, decode_rle, rle_runs
from overread.data.table import LabelTable, SkippedRow
from overread.errors import DatasetError
from overread.findings import Finding

LABEL = Finding.PNEUMOTHORAX.value


def read_siim(
    csv_path: Path, *, root: Path | None = None, check_files: bool | None = None
) -> LabelTable:
    """Read a SIIM-ACR RLE CSV into a one-label :class:`LabelTable`.

    Rows with an RLE that does not decode (not integer pairs, runs off the
    image) are skipped, naming the line; the image's other rows still count.
    """
    source = Path(csv_path)
    raw = read_csv(source)
    require_columns(raw, ["ImageId", "EncodedPixels"], source, "SIIM-ACR pneumothorax")
    lines = line_numbers(raw)
    ids = raw["ImageId"].fillna("").str.strip()
    rle = raw["EncodedPixels"].fillna("").str.strip()
    skipped: list[SkippedRow] = []
    good = np.ones(len(raw), dtype=bool)
    for pos in np.flatnonzero((rle != "-1").to_numpy()).tolist():
        try:
            rle_runs(str(rle.iat[pos]), SIIM_SHAPE)
        except DatasetError as exc:
            skipped.append(SkippedRow(int(lines[pos]), str(ids.iat[pos]), str(exc)))
            good[pos] = False
    empty_id = (ids == "").to_numpy()
    for pos in np.flatnonzero(empty_id & good).tolist():
        skipped.append(SkippedRow(int(lines[pos]), "", "ImageId is empty"))
    good &= ~empty_id
    rows = pd.DataFrame({"image": ids, "rle": rle, "source_line": lines}).loc[good]
    rows["positive"] = rows["rle"] != "-1"
    grouped = rows.groupby("image", sort=False)
    images = pd.DataFrame(
        {
            LABEL: grouped["positive"].any().astype(np.float32),
            "encoded_pixels": grouped["rle"].agg(
                lambda values: "|".join(v for v in values if v != "-1")
            ),
            "source_line": grouped["source_line"].min(),
        }
    ).reset_index()
    images["path"] = images["image"] + ".dcm"
    images["patient_id"] = images["image"]
    images["study_id"] = images["image"]
    frame = images[
        ["path", "patient_id", "study_id", LABEL, "encoded_pixels", "image", "source_line"]
    ]
    frame = frame.rename(columns={"image": "image_id"})
    if root is not None:
        located = locate_by_name(Path(root), frame["path"])
        frame = frame.assign(path=frame["path"].map(lambda name: located.get(name, name)))
    table = LabelTable(
        frame=frame.reset_index(drop=True),
        labels=[LABEL],
        root=root,
        dataset="siim",
        source=source,
        skipped=skipped,
    )
    return finish(table, check=root is not None if check_files is None else check_files)


def siim_mask(encoded_pixels: str, shape: tuple[int, int] = SIIM_SHAPE) -> npt.NDArray[np.uint8]:
    """Union mask (0/1) of an image's RLE strings joined by ``|`` (as in the table)."""
    mask = np.zeros(shape, dtype=np.uint8)
    for part in encoded_pixels.split("|"):
        if part.strip():
            mask |= decode_rle(part, shape)
    return mask


__all__ = ["read_siim", "siim_mask"]
