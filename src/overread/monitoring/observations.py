"""What monitoring keeps of each study: a small, typed, label-free record.

A :class:`StudyObservation` holds the facts drift monitoring compares between
periods, in the spirit of CheXstray (Soin et al. 2022): the header mix
(manufacturer, station, view, kVp, exposure...), a few image statistics, the
model's per-label probabilities and a low-dimensional embedding of the image. It
carries no pixels and no patient identity beyond the subgroup attributes fairness
needs, so the service can store one per study cheaply.

The embedding is a fixed image descriptor, not the network's pooled features: the
serving runtime (ONNX) returns logits and CAMs only, and asking it for an inner
layer would cost a second graph. The descriptor is the model input averaged over a
4 x 4 grid of blocks (16 values: where the image is bright or dark) followed by an
8-bin histogram of the input values (how its grey levels are spread); 24 numbers
that move when the acquisition, positioning or processing changes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from overread.results import Prediction

#: Header fields compared as categories (the "header mix").
HEADER_FIELDS: tuple[str, ...] = (
    "manufacturer",
    "model_name",
    "station",
    "modality",
    "view",
    "kvp",
    "exposure",
    "detector",
    "bits_stored",
    "photometric",
    "software",
)

#: Image statistics compared as distributions.
IMAGE_STATISTICS: tuple[str, ...] = (
    "mean",
    "contrast",
    "p05",
    "p50",
    "p95",
    "noise",
    "entropy",
    "rows",
    "cols",
    "spacing",
)

#: Grid (per side) and histogram bins of the embedding.
EMBEDDING_GRID = 4
EMBEDDING_BINS = 8


@dataclass(frozen=True)
class StudyObservation:
    """One study as monitoring sees it.

    Parameters
    ----------
    study_instance_uid
        Joins the observation to reader feedback.
    site
        Where the study was acquired (the service's site code).
    date
        The study date (windows are by study date, not arrival).
    model
        ``name@version`` of the model that produced the probabilities.
    header
        One value per :data:`HEADER_FIELDS` field, as text ("" when absent).
    image
        One value per :data:`IMAGE_STATISTICS` statistic.
    labels, probabilities, positive
        The model's labels, calibrated probabilities and positive decisions.
    embedding
        The image descriptor (see the module docstring).
    sex, age, group
        Subgroup attributes ("" / -1 when unknown).
    patient_id
        For clustered intervals (one patient, several studies).
    """

    study_instance_uid: str
    site: str
    date: dt.date
    model: str
    header: tuple[str, ...]
    image: tuple[float, ...]
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    positive: tuple[bool, ...]
    embedding: tuple[float, ...]
    sex: str = ""
    age: int = -1
    group: str = ""
    patient_id: str = ""

    def header_value(self, name: str) -> str:
        """The header field ``name`` (one of :data:`HEADER_FIELDS`)."""
        return self.header[HEADER_FIELDS.index(name)]

    def probability(self, label: str) -> float:
        """The probability of ``label`` (NaN when the model has no such label)."""
        return self.probabilities[self.labels.index(label)] if label in self.labels else np.nan

    def subgroup(self, attribute: str) -> str:
        """The value of a subgroup attribute: ``sex``, ``age_band``, ``group`` or ``site``."""
        if attribute == "age_band":
            if self.age < 0:
                return ""
            edges = (40, 60, 80)
            return ("<40", "40-59", "60-79", "80+")[sum(self.age >= e for e in edges)]
        value: str = getattr(self, attribute)
        return value


def _text(dataset: Any, keyword: str) -> str:
    value = dataset.get(keyword, "") if dataset is not None else ""
    if value is None:
        return ""
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _study_date(dataset: Any) -> dt.date:
    text = _text(dataset, "StudyDate") or _text(dataset, "AcquisitionDate")
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return dt.date.min


def image_statistics(
    pixels: npt.NDArray[Any], rows: int, cols: int, spacing: float
) -> tuple[float, ...]:
    """The :data:`IMAGE_STATISTICS` of a preprocessed image (values in 0..1).

    ``noise`` is a robust estimate of the pixel noise: the median absolute value of
    the Laplacian residual scaled to a Gaussian standard deviation (Immerkaer
    1996's idea, with a median for robustness to edges).
    """
    x = np.asarray(pixels, dtype=np.float64)
    p05, p50, p95 = np.percentile(x, [5, 50, 95])
    residual = ndimage.laplace(x)
    noise = float(np.median(np.abs(residual)) * 1.4826 / np.sqrt(20.0))
    hist, _ = np.histogram(np.clip(x, 0.0, 1.0), bins=32, range=(0.0, 1.0))
    share = hist[hist > 0] / hist.sum()
    entropy = float(-(share * np.log2(share)).sum())
    return (
        float(x.mean()),
        float(x.std()),
        float(p05),
        float(p50),
        float(p95),
        noise,
        entropy,
        float(rows),
        float(cols),
        float(spacing),
    )


def image_embedding(pixels: npt.NDArray[Any]) -> tuple[float, ...]:
    """The fixed descriptor: 4 x 4 block means, then an 8-bin histogram (shares)."""
    x = np.asarray(pixels, dtype=np.float64)
    g = EMBEDDING_GRID
    h, w = (x.shape[0] // g) * g, (x.shape[1] // g) * g
    blocks = x[:h, :w].reshape(g, h // g, g, w // g).mean(axis=(1, 3)).ravel()
    hist, _ = np.histogram(np.clip(x, 0.0, 1.0), bins=EMBEDDING_BINS, range=(0.0, 1.0))
    return tuple(float(v) for v in (*blocks, *(hist / max(1, hist.sum()))))


def observe(
    dataset: Any,
    model_input: npt.NDArray[Any],
    prediction: Prediction,
    *,
    site: str | None = None,
) -> StudyObservation:
    """Build the observation of one study (pure: reads, never changes, its inputs).

    Parameters
    ----------
    dataset
        The study's pydicom dataset (header only is enough).
    model_input
        The preprocessed image the model saw: ``(H, W)`` or ``(C, H, W)``, values
        in 0..1.
    prediction
        The model's result for it.
    site
        The site code; default the Institution Name.
    """
    x = np.asarray(model_input, dtype=np.float32)
    if x.ndim == 3:
        x = x[0]
    spacing_value = dataset.get("PixelSpacing") or dataset.get("ImagerPixelSpacing")
    spacing = float(spacing_value[0]) if spacing_value else float("nan")
    header = (
        _text(dataset, "Manufacturer"),
        _text(dataset, "ManufacturerModelName"),
        _text(dataset, "StationName"),
        _text(dataset, "Modality"),
        _text(dataset, "ViewPosition"),
        _text(dataset, "KVP"),
        _text(dataset, "Exposure"),
        _text(dataset, "DetectorType"),
        _text(dataset, "BitsStored"),
        _text(dataset, "PhotometricInterpretation"),
        _text(dataset, "SoftwareVersions"),
    )
    rows = int(dataset.get("Rows", x.shape[0]) or x.shape[0])
    cols = int(dataset.get("Columns", x.shape[1]) or x.shape[1])
    age_text = _text(dataset, "PatientAge")
    age = int(age_text[:3]) if age_text[:3].isdigit() else -1
    findings = prediction.findings
    return StudyObservation(
        study_instance_uid=_text(dataset, "StudyInstanceUID"),
        site=site if site is not None else _text(dataset, "InstitutionName"),
        date=_study_date(dataset),
        model=f"{prediction.model.name}@{prediction.model.version}",
        header=header,
        image=image_statistics(x, rows, cols, spacing),
        labels=tuple(f.label for f in findings),
        probabilities=tuple(float(f.probability) for f in findings),
        positive=tuple(bool(f.positive) for f in findings),
        embedding=image_embedding(x),
        sex=_text(dataset, "PatientSex"),
        age=age,
        group=_text(dataset, "EthnicGroup"),
        patient_id=_text(dataset, "PatientID"),
    )


__all__ = [
    "EMBEDDING_BINS",
    "EMBEDDING_GRID",
    "HEADER_FIELDS",
    "IMAGE_STATISTICS",
    "StudyObservation",
    "image_embedding",
    "image_statistics",
    "observe",
]
