"""``ct-nodule-cad``: the two-stage nodule CAD as a volumetric package.

The lung comes from the HU-threshold network of :mod:`overread.models.ct_baseline`
(2 mm sliding windows, components cleaned, the ``classical`` lung of
:mod:`overread.inference.lung_mask`); the nodules from the ``blob-cad``
postprocess (:mod:`overread.models.blob_cad`): multi-scale blob candidates inside the
lung on the source grid, a logistic score from their features (weights fitted on
training phantoms and kept in the manifest, so they are in its hash and signature),
and a half-maximum mask per nodule. A segmentation package: a SEG with the lung and
one segment per nodule, and the TID 1500 measurements of each nodule.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from overread.errors import ConfigError
from overread.models.blob_cad import (
    CANDIDATE_CLOSING_MM,
    CLOSING_RADII,
    DEFAULT_SCALES_MM,
    DEFAULT_WEIGHTS,
    FEATURES,
    FEATURES_V3,
    MAX_CANDIDATES,
    MAX_CANDIDATES_V3,
    MIN_BLOBNESS,
    RIM_HU,
    RIM_RATIO,
    RIM_RATIO_V3,
)
from overread.models.ct_baseline import ARCHITECTURE, HU_INPUT_SPEC, LABELS
from overread.models.hu_threshold import HuThreshold
from overread.models.manifest import Task, VolumeSpec

NAME = "ct-nodule-cad"
VERSION = "1.1.0"
#: The nodule label's threshold: the lowest candidate score reported (FROC needs the
#: weaker marks too; the strongest carry the high scores).
SCORE_FLOOR = 0.02
#: The most nodules reported per series.
MAX_DETECTIONS = 20
INTENDED_USE = (
    "Research: pulmonary nodule detection and segmentation on chest CT by a blob "
    "filter, a logistic candidate score and half-maximum masks, fitted on synthetic "
    "phantoms only. Not for diagnosis."
)


#: The bundled revision-3 tree ensemble (plain numbers; see :func:`default_trees`).
TREES_FILE = Path(__file__).resolve().parent / "ct_cad_trees.json"

#: The nodule operating points of the bundled trees and how they were chosen (``nodule``:
#: ``{name: threshold}``; ``record``: the manifest's ``training.operating_points``),
#: written by ``overread models ct-operating-points`` on a tuning cohort.
POINTS_FILE = Path(__file__).resolve().parent / "ct_cad_points.json"

#: The nodule point at the score floor (every candidate the CAD keeps).
FLOOR_POINT = "all candidates"


def default_points() -> tuple[dict[str, float], dict[str, Any]]:
    """The bundled trees' nodule operating points (``{name: threshold}``, the floor
    point included) and their record (:data:`POINTS_FILE`)."""
    data = json.loads(POINTS_FILE.read_text(encoding="utf-8"))
    nodule = {str(k): float(v) for k, v in data["nodule"].items()}
    return {**nodule, FLOOR_POINT: SCORE_FLOOR}, dict(data["record"])


def operating_points_section(record: dict[str, Any], *, default: str, floor: float) -> str:
    """The card's ``## Operating points`` section for a points ``record`` (cohort, rule,
    figures at each point, and the held-out figures when measured)."""
    held = record.get("held_out") or {}
    held_figures = held.get("figures", {})
    head = "| Point | Score at least | Sensitivity | FP/scan |"
    rule = "|---|---|---|---|"
    if held_figures:
        head += " Held-out sensitivity | Held-out FP/scan |"
        rule += "---|---|"
    rows = []
    for name, f in record["figures"].items():
        row = f"| {name} | {f['threshold']:.4f} | {f['sensitivity']:.3f} | {f['fp_per_scan']:.2f} |"
        if held_figures:
            h = held_figures.get(name)
            row += f" {h['sensitivity']:.3f} | {h['fp_per_scan']:.2f} |" if h else " - | - |"
        rows.append(row)
    held_text = f" Held out: {held['cohort']}." if held_figures else ""
    return (
        "## Operating points\n\n"
        "A nodule is reported when its score reaches the operating point (default "
        f"`{default}`); the study's finding carries the best score below it. Chosen on "
        f"the FROC of {record['cohort']} ({record['rule']}); `{FLOOR_POINT}` is the "
        f"score floor, {floor:g}.{held_text}\n\n" + "\n".join([head, rule, *rows]) + "\n"
    )


def default_trees() -> tuple[tuple[float, ...], ...]:
    """The tree ensemble the bundled package scores with (``ct_cad_trees.json``, written
    by :func:`overread.training.ct_cad.fit_cad_trees` on training phantoms)."""
    data = json.loads(TREES_FILE.read_text(encoding="utf-8"))
    return tuple(tuple(float(v) for v in tree) for tree in data["trees"])


def cad_volume_spec(
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    *,
    trees: Sequence[Sequence[float]] | None = None,
) -> VolumeSpec:
    """The package's volume section: revision 3 with a tree ensemble (``trees``), or
    revision 2 with logistic candidate ``weights`` when ``trees`` is None."""
    common: dict[str, Any] = {
        "postprocess": "blob-cad",
        "clean_components": True,
        "lung_refine": "classical",
        "min_nodule_mm": 2.0,
        "max_nodule_mm": 40.0,
        "max_detections": MAX_DETECTIONS,
        "cad_scales_mm": DEFAULT_SCALES_MM,
        "cad_min_blobness": MIN_BLOBNESS,
        "cad_rim_hu": RIM_HU,
    }
    if trees is not None:
        return VolumeSpec(
            **common,
            cad_weights=(),
            cad_trees=tuple(tuple(float(v) for v in tree) for tree in trees),
            cad_revision=3,
            cad_max_candidates=MAX_CANDIDATES_V3,
            cad_rim_ratio=RIM_RATIO_V3,
            cad_candidate_closing_mm=CANDIDATE_CLOSING_MM,
        )
    return VolumeSpec(
        **common,
        cad_weights=tuple(float(w) for w in weights),
        cad_revision=2,
        cad_max_candidates=MAX_CANDIDATES,
        cad_rim_ratio=RIM_RATIO,
    )


def write_cad_package(
    out: Path | str,
    *,
    weights: Sequence[float] = DEFAULT_WEIGHTS,
    trees: Sequence[Sequence[float]] | None = None,
    revision: int = 3,
    training: dict[str, object] | None = None,
    key: bytes | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the CAD as a verified segmentation package: revision 3 scores candidates by
    ``trees`` (default: :func:`default_trees`), revision 2 by the logistic ``weights``.
    Another revision, or trees with revision 2, is a ``ConfigError``."""
    from overread.models.package import resign_package, write_package

    if revision not in (2, 3):
        raise ConfigError(f"the CAD has revisions 2 and 3, not {revision}")
    if revision == 2 and trees is not None:
        raise ConfigError("revision 2 scores by weights: trees are for revision 3")
    if revision == 3 and trees is None:
        trees = default_trees()
    features = FEATURES_V3 if trees is not None else FEATURES
    record = dict(training or {"kind": "blob-cad", "features": list(features)})
    points: dict[str, Any] | None = None
    if trees is not None and tuple(tuple(float(v) for v in t) for t in trees) == default_trees():
        # The bundled trees: their fitted points (other scores: the floor alone).
        nodule, points = default_points()
        record["operating_points"] = points
    else:
        nodule = {"balanced": SCORE_FLOOR}
    path = write_package(
        out,
        network=HuThreshold(),
        architecture=ARCHITECTURE,
        labels=list(LABELS),
        input_spec=dict(HU_INPUT_SPEC),
        name=NAME,
        version=VERSION,
        intended_use=INTENDED_USE,
        task=Task.SEGMENTATION,
        trained=True,
        accepts={"modalities": ["CT"]},
        operating_points={"lung": dict.fromkeys(nodule, 0.5), "nodule": nodule},
        training=record,
        metrics={},
        export_onnx=False,
        key=key,
        overwrite=overwrite,
        volume=cad_volume_spec(weights, trees=trees),
    )
    card = model_card(revision=3 if trees else 2)
    if points is not None:
        card = (
            card.rstrip("\n")
            + "\n\n"
            + operating_points_section(points, default="balanced", floor=SCORE_FLOOR)
        )
    (path / "MODEL_CARD.md").write_text(card, encoding="utf-8")
    resign_package(path, key=key)
    return path


def model_card(revision: int = 3) -> str:
    """The package's card."""
    if revision >= 3:
        candidates = (
            f"inside the lung closed by a ball of {CANDIDATE_CLOSING_MM:g} mm (a nodule joined "
            f"to the mediastinum by a vessel is not a hole of the threshold lung); at most the "
            f"{MAX_CANDIDATES_V3} strongest blob peaks are scored (a warning says when more)."
        )
        scoring = (
            f"a gradient-boosted tree ensemble (plain numbers in the manifest) over "
            f"{', '.join(FEATURES_V3)}: those of revision 2, the fraction of bright voxels "
            "in shells around the candidate (a sphere is dark all round, a vessel junction is "
            "not) and the HU of the background near it and farther out"
        )
        ratio = RIM_RATIO_V3
        lung_around = "the lower of the lung around it and the median beyond 2.5 radii"
    else:
        candidates = f"at most the {MAX_CANDIDATES} strongest blob peaks are scored (a warning says when more)."
        scoring = f"logistic in {', '.join(FEATURES)}"
        ratio = RIM_RATIO
        lung_around = "the lung"
    return f"""# {NAME} {VERSION}

Two-stage pulmonary nodule CAD for chest CT, fitted on synthetic phantoms only.

## Intended use

{INTENDED_USE}

## How it works

- Lung: HU <= -700 on a 2 mm grid by sliding windows without the trachea and main
  bronchi, 3-D components away from the field of view's sides, holes filled in 3-D
  and slice by slice but for the dome of the diaphragm, brought back to the source
  grid with its edge grown to the voxels at or below -400 HU within 2 mm.
- Candidates: on the source grid inside the lung, the local maxima of the largest
  scale-normalised Laplacian of Gaussian over scales of {", ".join(f"{s:g}" for s in DEFAULT_SCALES_MM)} mm
  (spheres of about 4 to 30 mm across), with the Hessian's blobness and sphericity
  at that scale (a sphere has three negative eigenvalues, a vessel two); the second
  derivative kernels sum to zero (thick slices: no response to the lung's HU), and the
  filters run in slabs of slices (memory bounded whatever the series' length);
  {candidates}
- Score: {scoring}; the {MAX_DETECTIONS} best scoring at least the nodule operating
  point are reported (never under the score floor, {SCORE_FLOOR}).
- Mask: voxels above half way between the candidate's core HU and the lung around it,
  within twice its fitted radius and inside the lung closed by a ball of {CLOSING_RADII:g} radii
  (a nodule on the pleura is in, the chest wall is not), opened by a ball of half
  its radius (vessels cut off), connected to its centre; a dense core inside a
  ground-glass region at least {ratio:g} times its size (a part-solid nodule) takes the level
  half way between ground glass ({RIM_HU:g} HU) and {lung_around}, within three radii.
- Output: a SEG (lung and one segment per nodule) and per-nodule measurements
  (volume, longest diameter, mean HU, density, category) in the SR.

## Limits

Fitted and measured on phantoms (spheres, tubes): real nodules are not spheres, real
vessels branch and curve. A nodule fused with the pleura over a wide contact, or
under about 4 mm, may get no candidate.
"""


__all__ = [
    "FLOOR_POINT",
    "NAME",
    "POINTS_FILE",
    "SCORE_FLOOR",
    "TREES_FILE",
    "VERSION",
    "cad_volume_spec",
    "default_points",
    "default_trees",
    "model_card",
    "operating_points_section",
    "write_cad_package",
]
