"""How good are a model's explanations? Methods compared on a phantom cohort.

For every image of the cohort with a finding that has a ground-truth mask, and
for every method asked for, this runs the package's torch network through
:func:`overread.explain.explain_maps` for those findings' labels and measures
(definitions in :mod:`overread.explain.faithfulness`): pointing game and mask IoU
against the masks (mapped onto the model-input grid through the letterbox
geometry), deletion and insertion AUC, ROAD, and, on the first
``sanity_images`` images, the model-randomisation rank correlation. The same
measures of a random map are reported as the floor any method should beat.
Results come per method, per finding and by lesion size.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image as PilImage

from overread.errors import EvaluationError, OverreadError
from overread.explain.faithfulness import (
    ROAD_FRACTIONS,
    SIZE_CLASSES,
    SIZE_THRESHOLDS,
    Classifier,
    mask_iou,
    perturbation_curves,
    pointing_hit,
    pointing_tolerance,
    randomised_copy,
    rank_correlation,
    road_scores,
    size_class,
)
from overread.explain.maps import LAYER_METHODS, explain_maps, parse_method
from overread.explain.regions import TOP_FRACTION
from overread.imaging import read
from overread.imaging.transforms.spatial import Letterbox
from overread.inference.pipeline import Pipeline

Progress = Callable[[str], None]


@dataclass(frozen=True)
class FindingMask:
    """One positive finding of one image, its mask on the model-input grid."""

    label: str
    label_index: int
    mask: np.ndarray
    area_fraction: float


@dataclass(frozen=True)
class StudyImage:
    """One cohort image: its path and the findings that have a mask."""

    path: Path
    findings: tuple[tuple[str, Path], ...]


@dataclass
class _Tally:
    """Per-finding measurements of one method (flat lists, summarised at the end)."""

    label: list[str] = field(default_factory=list)
    size: list[str] = field(default_factory=list)
    hit: list[float] = field(default_factory=list)
    iou: list[float] = field(default_factory=list)
    deletion: list[float] = field(default_factory=list)
    insertion: list[float] = field(default_factory=list)
    road: list[np.ndarray] = field(default_factory=list)
    deletion_curves: list[np.ndarray] = field(default_factory=list)
    insertion_curves: list[np.ndarray] = field(default_factory=list)
    sanity: list[float] = field(default_factory=list)
    seconds: float = 0.0
    images: int = 0

    def add(
        self,
        finding: FindingMask,
        hit: bool,
        iou: float,
        deletion: np.ndarray,
        insertion: np.ndarray,
        fractions: np.ndarray,
        road: np.ndarray,
    ) -> None:
        self.label.append(finding.label)
        self.size.append(size_class(finding.area_fraction))
        self.hit.append(float(hit))
        self.iou.append(iou)
        width = np.diff(fractions)
        self.deletion.append(float(((deletion[1:] + deletion[:-1]) / 2 * width).sum()))
        self.insertion.append(float(((insertion[1:] + insertion[:-1]) / 2 * width).sum()))
        self.deletion_curves.append(deletion)
        self.insertion_curves.append(insertion)
        self.road.append(road)


def read_cohort(cohort: Path) -> list[StudyImage]:
    """The images of a phantom cohort and their findings' masks (from ground_truth.json).

    Raises
    ------
    EvaluationError
        If the directory or its ground truth is missing or unreadable.
    """
    if not cohort.is_dir():
        raise EvaluationError(f"{cohort}: no such cohort directory")
    truth_path = cohort / "ground_truth.json"
    try:
        truth = json.loads(truth_path.read_text(encoding="utf-8"))
        records = truth["images"]
        images = [
            StudyImage(
                path=cohort / str(record["path"]),
                findings=tuple(
                    (str(f["label"]), cohort / str(f["mask"]))
                    for f in record.get("findings", [])
                    if f.get("mask")
                ),
            )
            for record in records
        ]
    except FileNotFoundError:
        raise EvaluationError(
            f"{truth_path}: not found; is {cohort} a phantom cohort (overread phantom cxr)?"
        ) from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EvaluationError(f"{truth_path}: cannot read the ground truth ({exc})") from None
    if not images:
        raise EvaluationError(f"{truth_path}: the cohort has no images")
    return images


def mask_on_input(mask: np.ndarray, geometry: Letterbox | None, side: int) -> np.ndarray:
    """A stored-image mask placed on the ``side x side`` model input as the image was.

    Resampled bilinearly and kept at or above one half; a mask too thin to survive
    that keeps every pixel it touches instead, so no finding vanishes.
    """
    region = np.asarray(mask, dtype=bool)
    rows, cols = (side, side) if geometry is None else (geometry.new_rows, geometry.new_cols)
    top, left = (0, 0) if geometry is None else (geometry.top, geometry.left)
    scaled = np.asarray(
        PilImage.fromarray(region.astype(np.float32), mode="F").resize(
            (cols, rows), PilImage.Resampling.BILINEAR
        ),
        dtype=np.float32,
    )
    placed = scaled >= 0.5
    if not placed.any() and region.any():
        placed = scaled > 0
    out = np.zeros((side, side), dtype=bool)
    out[top : top + rows, left : left + cols] = placed[: side - top, : side - left]
    return out


def _load_masks(
    image: StudyImage, pipeline: Pipeline, geometry: Letterbox | None
) -> list[FindingMask]:
    side = pipeline.package.manifest.input.size
    found = []
    for label, mask_path in image.findings:
        if label not in pipeline.labels:
            continue
        try:
            stored = np.asarray(PilImage.open(mask_path).convert("L")) > 0
        except OSError as exc:
            raise EvaluationError(f"{mask_path}: cannot read the mask ({exc})") from None
        if not stored.any():
            continue
        found.append(
            FindingMask(
                label=label,
                label_index=pipeline.labels.index(label),
                mask=mask_on_input(stored, geometry, side),
                area_fraction=float(stored.mean()),
            )
        )
    return found


def load_findings(pipeline: Pipeline, item: StudyImage) -> tuple[np.ndarray, list[FindingMask]]:
    """The preprocessed input ``(C, H, W)`` of a cohort image and its findings' masks.

    Only findings the model has a label for, with a non-empty mask, are kept.
    """
    image = read(item.path)
    x, _ = pipeline.preprocess(image)
    return x, _load_masks(item, pipeline, pipeline.letterbox(image))


def _mean(values: Sequence[float]) -> float | None:
    return round(float(np.mean(values)), 4) if len(values) else None


def _summary(tally: _Tally, keep: np.ndarray) -> dict[str, Any]:
    def pick(values: list[float]) -> list[float]:
        return [v for v, k in zip(values, keep, strict=True) if k]

    return {
        "n": int(keep.sum()),
        "pointing_game": _mean(pick(tally.hit)),
        "mask_iou": _mean(pick(tally.iou)),
        "deletion_auc": _mean(pick(tally.deletion)),
        "insertion_auc": _mean(pick(tally.insertion)),
    }


def _report(
    tally: _Tally, fractions: np.ndarray, road_fractions: Sequence[float]
) -> dict[str, Any]:
    every = np.ones(len(tally.label), dtype=bool)
    labels = np.array(tally.label)
    sizes = np.array(tally.size)
    road = np.array(tally.road) if tally.road else np.zeros((0, len(road_fractions)))
    entry = _summary(tally, every)
    entry.update(
        {
            "sanity_rank_corr": _mean(tally.sanity),
            "sanity_maps": len(tally.sanity),
            "ms_per_image": round(1000.0 * tally.seconds / tally.images, 1)
            if tally.images
            else None,
            "road": {
                "order": "MoRF",
                "fractions": list(road_fractions),
                "probability": [_mean(road[:, i].tolist()) for i in range(road.shape[1])]
                if len(road)
                else [None] * len(road_fractions),
            },
            "curves": {
                "fractions": [round(float(f), 4) for f in fractions],
                "deletion": [round(float(v), 4) for v in np.mean(tally.deletion_curves, axis=0)]
                if tally.deletion_curves
                else [],
                "insertion": [round(float(v), 4) for v in np.mean(tally.insertion_curves, axis=0)]
                if tally.insertion_curves
                else [],
            },
            "by_size": {size: _summary(tally, sizes == size) for size in SIZE_CLASSES},
            "by_finding": {
                label: _summary(tally, labels == label) for label in sorted(set(tally.label))
            },
        }
    )
    return entry


def runtime_classifier(pipeline: Pipeline) -> Classifier:
    """The pipeline's runtime as a logits function when it runs the same fp32 model.

    ONNX Runtime scores the many perturbed images several times faster than eager
    torch; an INT8 runtime is a different model, so then the torch network scores.
    """
    if pipeline.model.precision != "fp32" or pipeline.model.runtime == "torch":
        return pipeline.network.eval()
    return pipeline.runtime_logits


def _random_map(side: int, rng: np.random.Generator) -> np.ndarray:
    return rng.random((side, side)).astype(np.float32)


@dataclass
class ExplanationStudy:
    """The comparison's result: the JSON-ready report and example maps for overlays."""

    report: dict[str, Any]
    #: ``(label, method) -> (model input (H, W), map (H, W), mask (H, W))``, first seen.
    examples: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]


def run_explanation_study(
    pipeline: Pipeline,
    cohort: Path,
    methods: Sequence[str],
    *,
    limit: int | None = None,
    steps: int = 10,
    road_fractions: Sequence[float] = ROAD_FRACTIONS,
    sanity_images: int = 10,
    target_layer: str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> ExplanationStudy:
    """Compare explanation methods on a phantom cohort (see the module docstring).

    Parameters
    ----------
    limit
        Use only the first ``limit`` images of the cohort.
    steps
        Steps of the deletion and insertion curves.
    sanity_images
        Images (with a finding) on which the randomisation check runs; it costs one
        more map per finding and method.
    target_layer
        The layer the layer methods hook (default per architecture).

    Raises
    ------
    EvaluationError
        If the cohort is unreadable or no image has a finding with a mask that the
        model knows.
    """
    names = [parse_method(m) for m in methods]
    images = read_cohort(cohort)[: limit if limit is not None else None]
    network = pipeline.network.eval()
    scorer = runtime_classifier(pipeline)
    randomised = randomised_copy(network, seed=seed)
    side = pipeline.package.manifest.input.size
    tolerance = pointing_tolerance(side)
    tallies: dict[str, _Tally] = {name: _Tally() for name in names}
    reference = _Tally()
    rng = np.random.default_rng(seed)
    examples: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    fractions = np.linspace(0.0, 1.0, steps + 1)
    used = skipped = failed = 0
    for number, item in enumerate(images, start=1):
        try:
            x_np, findings = load_findings(pipeline, item)
        except OverreadError as exc:
            failed += 1
            if progress:
                progress(f"{item.path}: {exc}")
            continue
        if not findings:
            skipped += 1
            continue
        x = torch.from_numpy(np.ascontiguousarray(x_np, dtype=np.float32))
        indices = [f.label_index for f in findings]
        maps_by_method: dict[str, np.ndarray] = {}
        for name in names:
            started = time.perf_counter()
            maps = explain_maps(
                network,
                x[None],
                name,
                indices,
                target_layer=_layer(name, target_layer),
                forward=scorer,
            )[0]
            tallies[name].seconds += time.perf_counter() - started
            tallies[name].images += 1
            maps_by_method[name] = maps
            if used < sanity_images:
                shuffled = explain_maps(
                    randomised, x[None], name, indices, target_layer=_layer(name, target_layer)
                )[0]
                tallies[name].sanity.extend(rank_correlation(maps, shuffled).tolist())
        maps_by_method[""] = _random_map(side, rng)[None]  # one map for every label
        for key, maps in maps_by_method.items():
            tally = tallies[key] if key else reference
            curves = perturbation_curves(scorer, x, maps, indices, steps=steps, seed=seed)
            road = road_scores(scorer, x, maps, indices, fractions=road_fractions, seed=seed)
            for m, finding in enumerate(findings):
                heatmap = maps[min(m, len(maps) - 1)]
                tally.add(
                    finding,
                    pointing_hit(heatmap, finding.mask, tolerance),
                    mask_iou(heatmap, finding.mask),
                    curves.deletion[m],
                    curves.insertion[m],
                    fractions,
                    road[m],
                )
                if key:
                    examples.setdefault((finding.label, key), (x_np[0], heatmap, finding.mask))
        used += 1
        if progress:
            progress(f"explained image {number}/{len(images)} ({len(findings)} finding(s))")
    if used == 0:
        raise EvaluationError(
            f"{cohort}: no image has a finding with a mask that the model"
            f" {pipeline.model.name} knows"
        )
    floor = _report(reference, fractions, road_fractions)
    for unused in ("sanity_rank_corr", "sanity_maps", "ms_per_image"):
        floor.pop(unused)
    report: dict[str, Any] = {
        "model": {
            "name": pipeline.model.name,
            "version": pipeline.model.version,
            "sha256": pipeline.model.sha256,
            "architecture": pipeline.package.manifest.architecture,
            "input_size": side,
        },
        "cohort": str(cohort),
        "images": {"explained": used, "without_findings": skipped, "failed": failed},
        "findings": len(reference.label),
        "definitions": {
            "pointing_tolerance_px": tolerance,
            "top_region": f"pixels >= {TOP_FRACTION} x the map's maximum",
            "size_thresholds": {
                "small": f"mask area < {SIZE_THRESHOLDS[0]:.0%} of the image",
                "medium": f"{SIZE_THRESHOLDS[0]:.0%} to < {SIZE_THRESHOLDS[1]:.0%}",
                "large": f">= {SIZE_THRESHOLDS[1]:.0%}",
            },
            "deletion": "most salient pixels replaced by the image mean, in steps of "
            f"{1 / steps:.0%}; AUC of the sigmoid probability (low is good)",
            "insertion": "from the image blurred (sigma 5 px at 224) the most salient pixels "
            "are put back; AUC (high is good)",
            "road": "MoRF removal with noisy linear imputation; probability (low is good)",
            "sanity_rank_corr": "Spearman correlation of maps of the trained and the "
            f"re-initialised network, mean over the findings of {min(used, sanity_images)} "
            "image(s) (low is good)",
        },
        "methods": {name: _report(tallies[name], fractions, road_fractions) for name in names},
        "random_map": floor,
    }
    return ExplanationStudy(report=report, examples=examples)


def _layer(method: str, target_layer: str | None) -> str | None:
    """The target layer for the methods that hook one; None for the others."""
    return target_layer if method in LAYER_METHODS else None


__all__ = [
    "ExplanationStudy",
    "FindingMask",
    "StudyImage",
    "load_findings",
    "mask_on_input",
    "read_cohort",
    "run_explanation_study",
    "runtime_classifier",
]
