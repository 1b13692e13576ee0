"""A phantom cohort rewritten in CheXpert's exact layout and CSV format.

CheXpert (Irvin et al., AAAI 2019) ships 8-bit JPEGs under
``CheXpert-v1.0-small/{train,valid}/patientNNNNN/studyN/viewN_frontal.jpg`` with
``train.csv`` and ``valid.csv`` beside them: ``Path, Sex, Age, Frontal/Lateral,
AP/PA`` and 14 labels written ``1.0``, ``0.0``, ``-1.0`` or blank. Training rows
carry the report labeller's labels; validation rows carry the radiologists'
consensus, 0/1 only. Here the phantom's ``labels.csv`` plays the labeller and its
``truth.csv`` the radiologists, so a CheXpert recipe can be run end to end (and
tested) without the real data.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd
import pydicom
from PIL import Image

from overread.errors import DatasetError
from overread.findings import CHEXPERT_LABELS

#: The columns of CheXpert's train.csv and valid.csv, in order.
CHEXPERT_COLUMNS: tuple[str, ...] = (
    "Path",
    "Sex",
    "Age",
    "Frontal/Lateral",
    "AP/PA",
    *CHEXPERT_LABELS,
)


@dataclass(frozen=True)
class ChexpertLayout:
    """Where :func:`write_chexpert_layout` put things."""

    root: Path  # the folder the CSVs' Path column is relative to
    train_csv: Path
    valid_csv: Path
    n_train: int
    n_valid: int


def _display(path: Path) -> npt.NDArray[np.uint8]:
    """The film as an 8-bit grey image: its VOI window, MONOCHROME1 inverted."""
    ds = pydicom.dcmread(path)
    pixels = np.asarray(ds.pixel_array, dtype=np.float32)
    pixels = pixels * float(ds.get("RescaleSlope", 1) or 1) + float(
        ds.get("RescaleIntercept", 0) or 0
    )
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None:
        c = float(center[0] if isinstance(center, pydicom.multival.MultiValue) else center)
        w = float(width[0] if isinstance(width, pydicom.multival.MultiValue) else width)
        x = np.clip((pixels - (c - w / 2)) / max(w, 1.0), 0.0, 1.0)
    else:
        lo, hi = float(pixels.min()), float(pixels.max())
        x = (pixels - lo) / max(hi - lo, 1.0)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        x = 1.0 - x
    return np.asarray(np.round(x * 255), dtype=np.uint8)


def _cell(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value == "":
        return ""
    return f"{float(str(value)):.1f}"


def write_chexpert_layout(
    cohort: Path,
    out: Path,
    *,
    valid_fraction: float = 0.2,
    seed: int = 0,
    folder: str = "CheXpert-v1.0-small",
    image_format: str = "jpg",
) -> ChexpertLayout:
    """Rewrite the phantom cohort in ``cohort`` as CheXpert under ``out/folder``.

    Parameters
    ----------
    cohort
        A folder written by ``overread phantom cxr`` (``labels.csv``, ``truth.csv``).
    out
        The root: ``out/folder/train.csv``'s paths are relative to it.
    valid_fraction
        Share of patients (drawn with ``seed``) that go to ``valid`` with exact labels.
    image_format
        ``jpg`` (as CheXpert ships) or ``png``.
    """
    if image_format not in ("jpg", "png"):
        raise DatasetError(f"image format must be jpg or png, not {image_format!r}")
    if not 0.0 < valid_fraction < 1.0:
        raise DatasetError(f"valid_fraction must be in (0, 1), got {valid_fraction}")
    cohort = Path(cohort)
    labels_path, truth_path = cohort / "labels.csv", cohort / "truth.csv"
    for path in (labels_path, truth_path):
        if not path.is_file():
            raise DatasetError(f"{cohort}: not a phantom cohort (no {path.name})")
    raw = pd.read_csv(labels_path, dtype=str, keep_default_na=False)
    truth = pd.read_csv(truth_path, dtype=str, keep_default_na=False).set_index("Path")
    patients = sorted(raw["PatientID"].unique())
    rng = np.random.default_rng(seed)
    n_valid = max(1, round(valid_fraction * len(patients)))
    if n_valid >= len(patients):
        raise DatasetError(f"{cohort}: too few patients ({len(patients)}) to split off valid")
    valid_patients = set(rng.choice(patients, size=n_valid, replace=False).tolist())
    base = Path(out) / folder
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    rows: dict[str, list[list[str]]] = {"train": [], "valid": []}
    for record in raw.to_dict("records"):
        split = "valid" if record["PatientID"] in valid_patients else "train"
        source = Path(str(record["Path"]))
        # images/patientNNNNN/studyN/viewN_frontal.dcm -> split/patientNNNNN/studyN/viewN_frontal.jpg
        relative = Path(split, *source.parts[-3:]).with_suffix(f".{image_format}")
        target = base / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        picture = Image.fromarray(_display(cohort / source))
        if image_format == "jpg":
            picture.save(target, quality=95)
        else:
            picture.save(target)
        values = truth.loc[str(record["Path"])] if split == "valid" else record
        row = [
            f"{folder}/{relative.as_posix()}",
            str(record["Sex"]),
            str(record["Age"]),
            str(record["Frontal/Lateral"]),
            str(record["AP/PA"]),
            *(_cell(values[label]) for label in CHEXPERT_LABELS),
        ]
        rows[split].append(row)
    paths = {}
    for split, content in rows.items():
        path = base / f"{split}.csv"
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow(CHEXPERT_COLUMNS)
            writer.writerows(content)
        paths[split] = path
    return ChexpertLayout(
        root=Path(out),
        train_csv=paths["train"],
        valid_csv=paths["valid"],
        n_train=len(rows["train"]),
        n_valid=len(rows["valid"]),
    )


__all__ = ["CHEXPERT_COLUMNS", "ChexpertLayout", "write_chexpert_layout"]
