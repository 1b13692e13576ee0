"""Evaluate CT lung/nodule segmentation and nodule detection on a phantom CT cohort.

Each case's DICOM series is read through :func:`overread.imaging.series.load_series`
(as the pipeline reads it); a case with a missing slice is compared on the slices
it has, each matched to its row of the truth grid by position. Figures:

* lung Dice, HD95 (mm) and normalised surface Dice at ``NSD_TOLERANCE_MM`` per case;
* nodule Dice and HD95 per true nodule >= 6 mm, within the nodule's box widened by
  its radius (other predictions elsewhere are the detector's false positives);
* FROC: a detection hits a nodule when its centre lies within the nodule's
  sphere (radius = diameter / 2, the LUNA16 rule); sensitivity at 1 false
  positive per scan and the CPM, over all nodules and by size and density
  (detections hitting nodules outside a subgroup are left out of that subgroup).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from overread.errors import ConfigError, EvaluationError
from overread.evaluation.froc import Mark, cpm_score, froc_curve
from overread.evaluation.segmentation import dice, hausdorff_distance, normalized_surface_dice
from overread.training.ct import (
    SIZE_BINS,
    CtPrediction,
    CtTrainConfig,
    CtTrainResult,
    Detection,
    predict_ct,
    threshold_baseline,
    train_ct,
    write_ct_package,
)

#: Tolerance of the lung's normalised surface Dice (about one voxel of the 2.5 mm grid).
NSD_TOLERANCE_MM = 2.5

Predictor = Callable[[npt.NDArray[np.float32], tuple[float, float, float]], CtPrediction]


@dataclass
class _CaseResult:
    lung_dice: float
    lung_hd95: float
    lung_nsd: float
    nodule_dice: list[tuple[dict[str, Any], float, float | None]]
    marks: list[tuple[float, int | None]]
    labels: list[int]


def _mm_of(det: Detection, affine: npt.NDArray[np.float64], positions: Sequence[float]) -> Any:
    z, r, c = det.centre
    xyz = affine @ np.array([c, r, z, 1.0])
    # Slice positions, not the mean step: a missing slice leaves the spacing uneven.
    xyz[2] = float(np.interp(z, np.arange(len(positions)), positions))
    return xyz[:3]


def evaluate_case(folder: Path, predictor: Predictor) -> _CaseResult:
    from overread.imaging.series import load_series
    from overread.phantom.ct import read_mask

    loaded = load_series([folder / "series"])
    if len(loaded.volumes) != 1:
        raise EvaluationError(f"{folder}: expected one series, got {len(loaded.volumes)}")
    volume = loaded.volumes[0]
    info = json.loads((folder / "case.json").read_text())
    truth_affine = np.array(info["affine_lps"])
    z0, step = truth_affine[2, 3], truth_affine[2, 2]
    index = [round((p - z0) / step) for p in volume.positions]
    lung_truth, _ = read_mask(folder / "lung.nii.gz")
    nod_truth, _ = read_mask(folder / "nodules.nii.gz")
    lung_truth, nod_truth = lung_truth[index], nod_truth[index]
    spacing = (float(step), float(volume.spacing[1]), float(volume.spacing[2]))
    pred = predictor(volume.pixels, spacing)
    lung_d = dice(pred.lung, lung_truth > 0)
    lung_hd = hausdorff_distance(pred.lung, lung_truth > 0, spacing) if pred.lung.any() else np.inf
    lung_nsd = (
        normalized_surface_dice(pred.lung, lung_truth > 0, NSD_TOLERANCE_MM, spacing)
        if pred.lung.any()
        else 0.0
    )
    nodules = read_nodules(folder / "nodules.json")
    per_nodule: list[tuple[dict[str, Any], float, float | None]] = []
    for nod in nodules:
        if nod["diameter_mm"] < 6.0:
            continue
        truth = nod_truth == nod["label"]
        if not truth.any():
            continue
        zs, ys, xs = np.nonzero(truth)
        margin = [max(2, int(np.ceil(nod["diameter_mm"] / 2 / s))) for s in spacing]
        sl = (
            slice(max(0, zs.min() - margin[0]), zs.max() + margin[0] + 1),
            slice(max(0, ys.min() - margin[1]), ys.max() + margin[1] + 1),
            slice(max(0, xs.min() - margin[2]), xs.max() + margin[2] + 1),
        )
        p, t = pred.nodule[sl], truth[sl]
        hd = hausdorff_distance(p, t, spacing) if p.any() else None
        per_nodule.append((nod, dice(p, t), hd))
    marks: list[tuple[float, int | None]] = []
    for det in pred.detections:
        mm = _mm_of(det, volume.affine, volume.positions)
        hit = None
        best = np.inf
        for nod in nodules:
            d = float(np.linalg.norm(mm - np.array(nod["centre_mm"])))
            if d <= nod["diameter_mm"] / 2 and d < best:
                hit, best = int(nod["label"]), d
        marks.append((det.score, hit))
    return _CaseResult(
        lung_d, float(lung_hd), lung_nsd, per_nodule, marks, [int(n["label"]) for n in nodules]
    )


def _froc(
    results: Sequence[_CaseResult],
    nodules: Sequence[Sequence[dict[str, Any]]],
    keep: Callable[[dict[str, Any]], bool],
) -> dict[str, Any]:
    all_marks: list[list[Mark]] = []
    all_lesions: list[list[str]] = []
    for res, nods in zip(results, nodules, strict=True):
        wanted = {int(n["label"]) for n in nods if keep(n)}
        image_marks = []
        for score, hit in res.marks:
            if hit is None:
                image_marks.append(Mark(score, None))
            elif hit in wanted:
                image_marks.append(Mark(score, str(hit)))
        all_marks.append(image_marks)
        all_lesions.append([str(label) for label in sorted(wanted)])
    n = sum(len(x) for x in all_lesions)
    if n == 0:
        return {"nodules": 0}
    curve = froc_curve(all_marks, all_lesions)
    cpm, _ = cpm_score(curve)
    return {
        "nodules": n,
        "sensitivity_at_1fp": round(curve.sensitivity_at(1.0), 4),
        "cpm": round(cpm, 4),
        "max_sensitivity": round(float(curve.sensitivity.max()), 4),
        "curve": {
            "fp_per_scan": [round(float(v), 4) for v in curve.fp_per_image],
            "sensitivity": [round(float(v), 4) for v in curve.sensitivity],
            # The lowest score counted at each point (none at the first: no mark).
            "score": [None, *(float(v) for v in curve.thresholds[1:])],
        },
    }


def figures_at(detection: dict[str, Any], threshold: float) -> dict[str, float]:
    """Sensitivity and false positives per scan of the marks scoring at least ``threshold``
    (read off a FROC block of :func:`evaluate_cohort`, e.g. its ``detection``)."""
    curve = detection["curve"]
    index = 0
    for i, score in enumerate(curve["score"]):
        if score is not None and score >= threshold:
            index = i
    return {
        "threshold": float(threshold),
        "sensitivity": float(curve["sensitivity"][index]),
        "fp_per_scan": float(curve["fp_per_scan"][index]),
    }


def threshold_for_fp(
    detection: dict[str, Any], fp_per_scan: float, *, floor: float = 0.0
) -> float | None:
    """A threshold keeping the marks of the lowest score whose false positives per scan
    are at most ``fp_per_scan`` (the FROC point closest to the rate, not above it):
    half way between that score and the next lower one (or ``floor``, the score the
    marks were cut at, below the lowest), so that no mark sits on the boundary and a
    float rounding cannot keep or drop one. ``None`` when even the best scoring mark is
    past the rate."""
    curve = detection["curve"]
    scores = [float(s) for s in curve["score"] if s is not None]
    fps = [
        float(f) for s, f in zip(curve["score"], curve["fp_per_scan"], strict=True) if s is not None
    ]
    kept = [i for i, fp in enumerate(fps) if fp <= fp_per_scan]
    if not kept:
        return None
    last = kept[-1]
    lower = scores[last + 1] if last + 1 < len(scores) else floor
    if lower >= scores[last]:
        return scores[last]
    return (scores[last] + lower) / 2


def _size_filter(lo: float, hi: float) -> Callable[[dict[str, Any]], bool]:
    return lambda n: bool(lo <= n["diameter_mm"] < hi)


def _density_filter(density: str) -> Callable[[dict[str, Any]], bool]:
    return lambda n: bool(n["density"] == density)


def _mean(values: Sequence[float]) -> float | None:
    v = [x for x in values if np.isfinite(x)]
    return round(float(np.mean(v)), 4) if v else None


def read_cases(root: str | Path) -> list[dict[str, Any]]:
    """The rows of a phantom CT cohort's ``cases.json`` (each names its case's folder),
    checked before any work: a ``ConfigError`` when it is missing, not JSON, not a list
    of cases, empty, or names a case without its files (:data:`CASE_FILES`) or with a
    bad ``nodules.json`` (:func:`read_nodules`)."""
    root = Path(root)
    cases_file = root / "cases.json"
    if not cases_file.is_file():
        raise ConfigError(f"{root}: not a phantom CT cohort (no cases.json)")
    try:
        rows = json.loads(cases_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{cases_file}: not readable JSON: {exc}") from None
    if not isinstance(rows, list) or not all(
        isinstance(row, dict) and isinstance(row.get("case"), str) and row["case"] for row in rows
    ):
        raise ConfigError(f"{cases_file}: not a list of cases (objects with a 'case' folder)")
    if not rows:
        raise ConfigError(f"{cases_file}: no cases")
    for row in rows:
        folder = root / row["case"]
        if not (folder / "nodules.json").is_file():
            raise ConfigError(f"{folder}: not a phantom CT case (no nodules.json)")
        for name in CASE_FILES:
            present = (folder / name).is_dir() if name == "series" else (folder / name).is_file()
            if not present:
                raise ConfigError(f"{folder}: not a phantom CT case (no {name})")
        read_nodules(folder / "nodules.json")
    return rows


#: What a phantom CT case holds besides ``nodules.json`` (what the evaluation reads).
CASE_FILES = ("series", "case.json", "lung.nii.gz", "nodules.nii.gz")


def _number(value: object) -> bool:
    return (
        isinstance(value, int | float) and not isinstance(value, bool) and bool(np.isfinite(value))
    )


def read_nodules(path: Path) -> list[dict[str, Any]]:
    """A case's ``nodules.json``, checked: a ``ConfigError`` when it is not a list of
    nodules each with an integer ``label``, a ``centre_mm`` of three numbers, a positive
    ``diameter_mm`` and a ``density`` (what the evaluation reads)."""
    try:
        nodules = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not readable JSON: {exc}") from None
    if not isinstance(nodules, list):
        raise ConfigError(f"{path}: not a list of nodules")
    for i, nod in enumerate(nodules):
        where = f"{path}: nodule {i + 1}"
        if not isinstance(nod, dict):
            raise ConfigError(f"{where}: not an object")
        for key in ("label", "centre_mm", "diameter_mm", "density"):
            if key not in nod:
                raise ConfigError(f"{where}: no {key!r}")
        label, centre, diameter = nod["label"], nod["centre_mm"], nod["diameter_mm"]
        if not isinstance(label, int) or isinstance(label, bool):
            raise ConfigError(f"{where}: 'label' is not an integer")
        if not (isinstance(centre, list) and len(centre) == 3 and all(map(_number, centre))):
            raise ConfigError(f"{where}: 'centre_mm' is not three numbers")
        if not (_number(diameter) and diameter > 0):
            raise ConfigError(f"{where}: 'diameter_mm' is not a positive number")
        if not isinstance(nod["density"], str):
            raise ConfigError(f"{where}: 'density' is not a text")
    return nodules


def cohort_nodules(root: str | Path) -> int:
    """How many nodules the cohort at ``root`` holds (its cases and their nodules
    checked first, :func:`read_cases`)."""
    root = Path(root)
    return sum(len(read_nodules(root / row["case"] / "nodules.json")) for row in read_cases(root))


def evaluate_cohort(
    root: str | Path, predictor: Predictor, *, echo: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """All figures of the module docstring for the cohort written under ``root``."""
    root = Path(root)
    rows = read_cases(root)
    results: list[_CaseResult] = []
    nodules: list[list[dict[str, Any]]] = []
    for row in rows:
        folder = root / row["case"]
        results.append(evaluate_case(folder, predictor))
        nodules.append(read_nodules(folder / "nodules.json"))
        if echo is not None:
            echo(f"  {row['case']}: lung Dice {results[-1].lung_dice:.3f}")
    per_nod = [x for r in results for x in r.nodule_dice]
    out: dict[str, Any] = {
        "cases": len(rows),
        "nodules": sum(len(n) for n in nodules),
        "lung_dice": _mean([r.lung_dice for r in results]),
        "lung_dice_min": round(min(r.lung_dice for r in results), 4),
        "lung_hd95_mm": _mean([r.lung_hd95 for r in results]),
        "lung_nsd": _mean([r.lung_nsd for r in results]),
        "nsd_tolerance_mm": NSD_TOLERANCE_MM,
        "nodule_dice_ge6mm": _mean([d for _, d, _ in per_nod]),
        "nodule_hd95_ge6mm_mm": _mean([h for _, _, h in per_nod if h is not None]),
        "nodules_ge6mm": len(per_nod),
        "nodules_ge6mm_missed": sum(1 for _, _, h in per_nod if h is None),
        "detection": _froc(results, nodules, lambda n: True),
        "per_case": [
            {
                "case": row["case"],
                "lung_dice": round(r.lung_dice, 4),
                "lung_hd95_mm": round(r.lung_hd95, 4) if np.isfinite(r.lung_hd95) else None,
                "lung_nsd": round(r.lung_nsd, 4),
                "nodule_dice_ge6mm": [round(d, 4) for _, d, _ in r.nodule_dice],
            }
            for row, r in zip(rows, results, strict=True)
        ],
        "by_size": {},
        "by_density": {},
    }
    for name, lo, hi in SIZE_BINS:
        sub = [d for n, d, _ in per_nod if lo <= n["diameter_mm"] < hi]
        out["by_size"][name] = {
            "nodule_dice": _mean(sub),
            **_froc(results, nodules, _size_filter(lo, hi)),
        }
    for density in ("solid", "part-solid", "ground-glass"):
        sub = [d for n, d, _ in per_nod if n["density"] == density]
        out["by_density"][density] = {
            "nodule_dice_ge6mm": _mean(sub),
            **_froc(results, nodules, _density_filter(density)),
        }
    return out


def markdown_table(model: dict[str, Any], baseline: dict[str, Any]) -> str:
    """Model against the HU threshold, one figure per row."""

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    rows = [
        ("Lung Dice (mean over cases)", "lung_dice"),
        ("Lung Dice (worst case)", "lung_dice_min"),
        ("Lung HD95 (mm)", "lung_hd95_mm"),
        ("Lung NSD (2.5 mm)", "lung_nsd"),
        ("Nodule Dice, nodules >= 6 mm", "nodule_dice_ge6mm"),
        ("Nodule HD95 (mm), >= 6 mm found", "nodule_hd95_ge6mm_mm"),
    ]
    lines = ["| Figure | Model | HU threshold |", "|---|---|---|"]
    for label, key in rows:
        lines.append(f"| {label} | {fmt(model.get(key))} | {fmt(baseline.get(key))} |")
    for label, key in (("Sensitivity at 1 FP/scan", "sensitivity_at_1fp"), ("CPM", "cpm")):
        lines.append(
            f"| {label}, all nodules | {fmt(model['detection'].get(key))} | "
            f"{fmt(baseline['detection'].get(key))} |"
        )
    for group in ("by_size", "by_density"):
        for name, block in model[group].items():
            base = baseline[group][name]
            dkey = "nodule_dice" if group == "by_size" else "nodule_dice_ge6mm"
            lines.append(
                f"| {name} (n={block.get('nodules', 0)}): Dice / sens@1FP / CPM | "
                f"{fmt(block.get(dkey))} / {fmt(block.get('sensitivity_at_1fp'))} / "
                f"{fmt(block.get('cpm'))} | {fmt(base.get(dkey))} / "
                f"{fmt(base.get('sensitivity_at_1fp'))} / {fmt(base.get('cpm'))} |"
            )
    return "\n".join(lines) + "\n"


def run_ct_training(cfg: CtTrainConfig, *, echo: Callable[[str], None] = print) -> CtTrainResult:
    """Train, then evaluate model and HU threshold on the held-out cohort; write metrics."""
    from overread.phantom.ct import write_ct_cohort

    net, result = train_ct(cfg, echo=echo)
    echo(f"trained in {result.seconds:.0f} s; checkpoint {result.checkpoint}")
    test_dir = cfg.data.test_dir or (Path(cfg.output) / "test-phantoms")
    if not (test_dir / "cases.json").is_file():
        echo(
            f"writing {cfg.data.test_n} held-out phantoms (seed {cfg.data.test_seed}) to {test_dir}"
        )
        write_ct_cohort(test_dir, cfg.data.test_n, cfg.data.test_seed, size=cfg.data.size)

    def model(hu: npt.NDArray[np.float32], spacing: tuple[float, float, float]) -> CtPrediction:
        return predict_ct(net, hu, spacing, cfg)

    echo("evaluating the model")
    metrics = evaluate_cohort(test_dir, model, echo=echo)
    echo("evaluating the HU threshold")
    baseline = evaluate_cohort(test_dir, threshold_baseline, echo=echo)
    result.metrics = {
        "model": metrics,
        "threshold": baseline,
        "test_dir": str(test_dir),
        "train_seconds": round(result.seconds, 1),
        "config": json.loads(cfg.model_dump_json()),
    }
    out = Path(cfg.output)
    (out / "metrics.json").write_text(json.dumps(result.metrics, indent=1) + "\n")
    result.package = write_ct_package(
        net, cfg, out / "package", metrics={"model": metrics, "threshold": baseline}
    )
    table = markdown_table(metrics, baseline)
    (out / "report.md").write_text(table)
    echo(table)
    return result


__all__ = [
    "CASE_FILES",
    "cohort_nodules",
    "evaluate_case",
    "evaluate_cohort",
    "figures_at",
    "markdown_table",
    "read_cases",
    "read_nodules",
    "run_ct_training",
    "threshold_for_fp",
]
