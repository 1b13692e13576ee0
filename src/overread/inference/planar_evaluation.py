"""``overread evaluate --model PACKAGE --data PHANTOM_CXR_DIR`` for planar segmentation.

Each image of a phantom chest X-ray cohort (``overread phantom cxr``) runs through
the package's :class:`~overread.inference.planar.PlanarPipeline`, as ``overread
predict`` runs it; the lung-field mask on the source grid (the SEG's) is compared
with the phantom's ``lung_field.png``: Dice, HD95 (mm, at the image's Pixel
Spacing) and normalised surface Dice at :data:`NSD_TOLERANCE_MM`. Intervals are
patient-level bootstrap 95% intervals (a patient's studies are resampled together,
each patient counting by the mean of its images).
"""

from __future__ import annotations

import html
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PILImage

from overread.errors import EvaluationError, OverreadError
from overread.evaluation.segmentation import dice, hausdorff_distance, normalized_surface_dice

#: Tolerance of the normalised surface Dice, mm (about two pixels of a 256 px phantom).
NSD_TOLERANCE_MM = 3.0
#: Figures with a patient-level interval.
FIGURES = ("dice", "hd95_mm", "nsd")


def is_cxr_cohort(data: str | Path) -> bool:
    """Whether ``data`` is a cohort written by ``overread phantom cxr``."""
    folder = Path(data)
    return (folder / "ground_truth.json").is_file() and (folder / "cohort.json").is_file()


def is_planar_package(model: str) -> bool:
    """Whether ``model`` (alias, name or path) is a planar segmentation package."""
    from overread.models.registry import Registry

    try:
        package = Registry.from_settings().load(model)
    except OverreadError:
        return False  # the classifier path reports why it cannot be loaded
    volume = package.manifest.volume
    return volume is not None and volume.planar


def patient_bootstrap(
    values: dict[str, list[float]], resamples: int, seed: int
) -> list[float] | None:
    """95% interval of the mean over patients (each the mean of its images), resampling
    patients; ``None`` with fewer than two patients."""
    means = np.array([np.mean(v) for v in values.values() if v], dtype=float)
    means = means[np.isfinite(means)]
    if len(means) < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = means[rng.integers(0, len(means), size=(resamples, len(means)))].mean(axis=1)
    return [round(float(np.quantile(draws, 0.025)), 4), round(float(np.quantile(draws, 0.975)), 4)]


def evaluate_planar_package(
    model: str, data: str | Path, *, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Lung-field Dice, HD95 and NSD of ``model`` on the phantom cohort ``data``."""
    from overread.inference import open_pipeline
    from overread.training.cxr_seg import cohort_images

    folder = Path(data)
    pipeline: Any = open_pipeline(model)
    if not getattr(pipeline, "planar", False):
        raise EvaluationError(f"{model}: not a planar segmentation package")
    spec = pipeline.spec
    label = spec.lung_label if spec.postprocess == "lung-field" else pipeline.labels[0]
    value = pipeline.labels.index(label) + 1
    per_image: list[dict[str, Any]] = []
    failed: list[str] = []
    started = time.perf_counter()
    for record in cohort_images(folder):
        output = pipeline.run_image(folder / record["path"])
        prediction = output.prediction
        if not prediction.ok or output.label_map is None:
            failed.append(f"{record['path']}: {prediction.error}")
            continue
        predicted = output.label_map[0] == value
        truth = np.asarray(PILImage.open(folder / record["lung_field"])) > 127
        if predicted.shape != truth.shape:
            raise EvaluationError(
                f"{record['path']}: mask {predicted.shape} is not the image's {truth.shape}"
            )
        spacing = prediction.metadata.pixel_spacing or (1.0, 1.0)
        hd95 = nsd = None
        if predicted.any() and truth.any():
            hd95 = hausdorff_distance(predicted, truth, spacing)
            nsd = normalized_surface_dice(predicted, truth, NSD_TOLERANCE_MM, spacing)
        per_image.append(
            {
                "path": record["path"],
                "patient_id": record.get("patient_id", ""),
                "dice": round(dice(predicted, truth), 5),
                "hd95_mm": None if hd95 is None else round(hd95, 3),
                "nsd": None if nsd is None else round(nsd, 5),
            }
        )
    if not per_image:
        raise EvaluationError(f"{folder}: no image could be analysed ({'; '.join(failed[:3])})")
    seconds = time.perf_counter() - started
    metrics: dict[str, Any] = {
        "model": {
            "name": pipeline.package.name,
            "version": pipeline.package.version,
            "task": pipeline.package.manifest.task.value,
            "label": label,
        },
        "data": str(folder),
        "images": len(per_image),
        "patients": len({r["patient_id"] for r in per_image}),
        "failed": failed,
        "nsd_tolerance_mm": NSD_TOLERANCE_MM,
        "seconds_per_image": round(seconds / len(per_image), 4),
        "ci95": {},
        "per_image": per_image,
    }
    for name in FIGURES:
        values = [r[name] for r in per_image if r[name] is not None]
        metrics[name] = round(float(np.mean(values)), 5) if values else None
        by_patient: dict[str, list[float]] = {}
        for r in per_image:
            if r[name] is not None:
                by_patient.setdefault(r["patient_id"], []).append(float(r[name]))
        metrics["ci95"][name] = patient_bootstrap(by_patient, resamples, seed)
    metrics["dice_min"] = round(min(r["dice"] for r in per_image), 5)
    return metrics


def write_planar_report(metrics: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """``metrics.json`` and ``report.html`` under ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    ci = metrics["ci95"]
    rows = "".join(
        f"<tr><td>{html.escape(title)}</td><td>{metrics[key]}</td><td>{ci.get(key)}</td></tr>"
        for title, key in (
            ("Dice", "dice"),
            ("HD95 (mm)", "hd95_mm"),
            (f"NSD ({metrics['nsd_tolerance_mm']:g} mm)", "nsd"),
        )
    )
    body = (
        f"<h1>Lung-field segmentation: {html.escape(str(metrics['model']['name']))} "
        f"{html.escape(str(metrics['model']['version']))}</h1>"
        f"<p>{metrics['images']} images of {metrics['patients']} patients; 95% patient-level "
        f"bootstrap intervals. Lowest image Dice {metrics['dice_min']}.</p>"
        f"<table><tr><th>Figure</th><th>Mean</th><th>95% CI</th></tr>{rows}</table>"
    )
    report_path = out / "report.html"
    report_path.write_text(
        f"<!doctype html><meta charset='utf-8'><title>Lung fields</title>{body}\n"
    )
    return metrics_path, report_path


__all__ = [
    "NSD_TOLERANCE_MM",
    "evaluate_planar_package",
    "is_cxr_cohort",
    "is_planar_package",
    "patient_bootstrap",
    "write_planar_report",
]
