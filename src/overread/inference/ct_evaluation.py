"""``overread evaluate --model PACKAGE --data PHANTOM_CT_DIR`` for volumetric packages.

Each case's series runs through the package's
:class:`~overread.inference.volume.VolumePipeline` (as ``overread predict`` runs
it); lung and nodule masks come from its label map and detections from its
nodules (centre and box, score = mean nodule probability; a ``centre-heatmap`` detector's peak score). The figures are those
of :func:`overread.training.ct_eval.evaluate_cohort`, with case-level (each phantom
case is one patient) bootstrap 95% intervals on the lung and nodule Dice. A ``blob-cad``
package runs at its lowest nodule operating point (the score floor: the whole FROC)
and ``operating_points`` gives the sensitivity and false positives per scan at each of
its named points.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from overread.errors import EvaluationError


def is_ct_cohort(data: str | Path) -> bool:
    """Whether ``data`` is a cohort written by ``overread phantom ct`` (``cases.json``)."""
    return (Path(data) / "cases.json").is_file()


def _predictor(pipeline: Any, operating_point: str | None = None) -> Any:
    from overread.imaging import ImageMetadata
    from overread.imaging.series import Volume
    from overread.inference.volume import LUNG_VALUE
    from overread.training.ct import CtPrediction, Detection

    def predict(pixels: npt.NDArray[np.float32], spacing: tuple[float, float, float]) -> Any:
        affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])
        volume = Volume(pixels=pixels, affine=affine, spacing=spacing, metadata=ImageMetadata())
        output = pipeline.run_volume(volume, operating_point=operating_point)
        labels = output.label_map
        if labels is None:
            labels = np.zeros(pixels.shape, dtype=np.uint8)
        detections = []
        for region in output.prediction.regions or []:
            if region.centre_mm is None or region.box_voxels is None:
                continue
            x, y, z = region.centre_mm
            b = region.box_voxels
            detections.append(
                Detection(
                    (z / spacing[0], y / spacing[1], x / spacing[2]),
                    (b[0] - 0.5, b[1] - 0.5, b[2] - 0.5),
                    (b[3] - 0.5, b[4] - 0.5, b[5] - 0.5),
                    float(region.score),
                )
            )
        return CtPrediction(labels >= LUNG_VALUE, labels > LUNG_VALUE, detections)

    return predict


def _nodule_points(package: Any) -> dict[str, float]:
    """A ``blob-cad`` package's nodule operating points (a nodule is reported at or above
    one): ``{name: threshold}``; empty for other packages."""
    volume = package.manifest.volume
    if volume is None or volume.postprocess != "blob-cad":
        return {}
    return {
        name: float(t)
        for name, t in package.manifest.operating_points.get(volume.nodule_label, {}).items()
    }


def _bootstrap(values: list[float], resamples: int, seed: int) -> list[float] | None:
    v = np.array([x for x in values if np.isfinite(x)], dtype=float)
    if len(v) < 2:
        return None
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, len(v), size=(resamples, len(v)))].mean(axis=1)
    return [round(float(np.quantile(means, 0.025)), 4), round(float(np.quantile(means, 0.975)), 4)]


def evaluate_ct_package(
    model: str, data: str | Path, *, resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The CT figures of ``model`` on the phantom CT cohort ``data``."""
    from overread.inference import open_pipeline
    from overread.training.ct_eval import evaluate_cohort, figures_at

    pipeline: Any = open_pipeline(model)
    if not getattr(pipeline, "volumetric", False):
        raise EvaluationError(f"{model}: not a volumetric package; {data} is a CT cohort")
    package = pipeline.package
    points = _nodule_points(package)
    # A CAD runs at its lowest nodule point (its score floor): the FROC is the whole
    # curve, and each named point's figures are read off it.
    floor = min(points, key=lambda name: points[name]) if points else None
    metrics = evaluate_cohort(data, _predictor(pipeline, floor))
    if points and metrics["detection"].get("curve"):
        metrics["run_at"] = floor
        metrics["score_floor"] = points[floor] if floor is not None else 0.0
        metrics["operating_points"] = {
            name: figures_at(metrics["detection"], threshold)
            for name, threshold in sorted(points.items(), key=lambda item: -item[1])
        }
    cases = metrics["per_case"]
    metrics["model"] = {
        "name": package.name,
        "version": package.version,
        "task": package.manifest.task.value,
    }
    metrics["ci95"] = {
        "lung_dice": _bootstrap([c["lung_dice"] for c in cases], resamples, seed),
        "lung_hd95_mm": _bootstrap(
            [c["lung_hd95_mm"] for c in cases if c["lung_hd95_mm"] is not None], resamples, seed
        ),
        "lung_nsd": _bootstrap([c["lung_nsd"] for c in cases], resamples, seed),
        # Patient-level: a case's nodules are resampled together (mean per case).
        "nodule_dice_ge6mm": _bootstrap(
            [float(np.mean(c["nodule_dice_ge6mm"])) for c in cases if c["nodule_dice_ge6mm"]],
            resamples,
            seed,
        ),
    }
    volume = package.manifest.volume
    if volume is not None and volume.postprocess == "centre-heatmap":
        _drop_mask_figures(metrics)
    return metrics


def fit_operating_points(
    model: str,
    root: str | Path,
    *,
    rates: dict[str, float] | None = None,
    resamples: int = 200,
) -> tuple[dict[str, float], dict[str, Any]]:
    """The CAD package ``model`` run on the TRAINING cohort ``root`` at its score floor
    (:func:`evaluate_ct_package`), and the nodule operating points chosen on its FROC
    (:func:`overread.training.ct_cad.nodule_operating_points`)."""
    from overread.training.ct_cad import nodule_operating_points

    metrics = evaluate_ct_package(model, root, resamples=resamples)
    if not metrics["detection"].get("curve"):
        raise EvaluationError(f"{root}: the cohort has no nodules; its FROC chooses no point")
    if "operating_points" not in metrics:
        raise EvaluationError(f"{model}: not a blob-cad package with nodule operating points")
    return nodule_operating_points(metrics, rates=rates), metrics


def _drop_mask_figures(metrics: dict[str, Any]) -> None:
    """A pure detector draws no masks: its lung and nodule overlap figures are absent."""
    for key in (
        "lung_dice",
        "lung_dice_min",
        "lung_hd95_mm",
        "lung_nsd",
        "nodule_dice_ge6mm",
        "nodule_hd95_ge6mm_mm",
        "nodules_ge6mm_missed",
    ):
        metrics[key] = None
    metrics["masks"] = False
    metrics["ci95"] = dict.fromkeys(metrics["ci95"])
    for case in metrics["per_case"]:
        case.update(lung_dice=None, lung_hd95_mm=None, lung_nsd=None, nodule_dice_ge6mm=[])
    for block in metrics["by_size"].values():
        block["nodule_dice"] = None
    for block in metrics["by_density"].values():
        block["nodule_dice_ge6mm"] = None


def froc_svg(curve: dict[str, list[float]], *, max_fp: float = 8.0) -> str:
    """The FROC curve (sensitivity against false positives per scan, log x) as SVG."""
    width, height, pad = 360, 240, 40
    lo, hi = np.log2(0.125), np.log2(max_fp)

    def xy(fp: float, sens: float) -> str:
        x = pad + (np.log2(min(max(fp, 0.125), max_fp)) - lo) / (hi - lo) * (width - 2 * pad)
        y = height - pad - sens * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    points = " ".join(
        xy(f, s) for f, s in zip(curve["fp_per_scan"], curve["sensitivity"], strict=True)
    )
    ticks = "".join(
        f"<text x='{xy(t, 0).split(',')[0]}' y='{height - pad + 14}' font-size='10' "
        f"text-anchor='middle'>{t:g}</text>"
        for t in (0.125, 0.25, 0.5, 1, 2, 4, 8)
    )
    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
        "role='img' aria-label='FROC curve'>"
        f"<rect x='{pad}' y='{pad}' width='{width - 2 * pad}' height='{height - 2 * pad}' "
        "fill='none' stroke='#888'/>"
        f"<polyline points='{points}' fill='none' stroke='#1f5fa8' stroke-width='2'/>"
        f"{ticks}<text x='{width / 2}' y='{height - 6}' font-size='11' text-anchor='middle'>"
        "false positives per scan</text>"
        f"<text x='12' y='{height / 2}' font-size='11' transform='rotate(-90 12 {height / 2})' "
        "text-anchor='middle'>sensitivity</text></svg>"
    )


def write_ct_report(metrics: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """``metrics.json`` and ``report.html`` under ``out``."""
    from overread.training.ct_eval import markdown_table

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2) + "\n")
    table = markdown_table(metrics, metrics).splitlines()
    rows = "".join(
        "<tr>"
        + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line.strip("|").split("|")[:2])
        + "</tr>"
        for line in table[2:]
    )
    ci = metrics.get("ci95", {})
    body = (
        f"<h1>CT evaluation: {html.escape(str(metrics['model']['name']))}</h1>"
        f"<p>{metrics['cases']} cases, {metrics['nodules']} nodules. 95% case-level "
        f"bootstrap intervals: lung Dice {ci.get('lung_dice')}, lung HD95 (mm) {ci.get('lung_hd95_mm')}, "
        f"lung NSD {ci.get('lung_nsd')}, nodule Dice (&ge; 6 mm) "
        f"{ci.get('nodule_dice_ge6mm')}.</p><table><tr><th>Figure</th><th>Value</th></tr>"
        f"{rows}</table>"
    )
    curve = metrics.get("detection", {}).get("curve")
    if curve:
        body += "<h2>FROC (all nodules)</h2>" + froc_svg(curve)
    report_path = out / "report.html"
    report_path.write_text(f"<!doctype html><meta charset='utf-8'><title>CT</title>{body}\n")
    return metrics_path, report_path


__all__ = ["evaluate_ct_package", "fit_operating_points", "is_ct_cohort", "write_ct_report"]
