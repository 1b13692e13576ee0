"""Fitting the candidate score of the two-stage nodule CAD on training phantoms.

For each case of a cohort ``overread phantom ct`` wrote, the blob candidates of
:func:`overread.models.blob_cad.find_candidates` inside the lung are labelled by the
truth (a candidate is a nodule when its centre lies in a nodule's sphere, as the
FROC counts a hit) and a ridge-penalised logistic regression of their features gives
the weights the ``blob-cad`` postprocess scores with
(:func:`overread.models.ct_cad.write_cad_package`).

The lung here is the package's rule on the source grid: HU <= -700, the components
not touching the in-plane sides holding at least 10% of the largest, holes filled
slice by slice (the package computes it on a 2 mm grid, so the candidate sets differ
slightly at the lung's edge).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from overread.errors import ConfigError
from overread.models.blob_cad import candidate_features, find_candidates, fit_weights


def source_lung(
    hu: npt.NDArray[np.float32], *, lung_max_hu: float = -700.0
) -> npt.NDArray[np.bool_]:
    """The package's lung rule on the source grid (see the module)."""
    air = hu <= lung_max_hu
    labels, count = ndimage.label(air, structure=np.ones((3, 3, 3), dtype=bool))
    if count == 0:
        return air
    sides = np.concatenate(
        [
            labels[:, 0, :].ravel(),
            labels[:, -1, :].ravel(),
            labels[:, :, 0].ravel(),
            labels[:, :, -1].ravel(),
        ]
    )
    border = {int(v) for v in np.unique(sides) if v}
    sizes = ndimage.sum_labels(air, labels, index=np.arange(1, count + 1))
    keep = [i + 1 for i in range(count) if i + 1 not in border]
    if not keep:
        return np.zeros(hu.shape, dtype=bool)
    largest = max(sizes[k - 1] for k in keep)
    lung = np.isin(labels, [k for k in keep if sizes[k - 1] >= 0.1 * largest])
    return np.stack([ndimage.binary_fill_holes(plane) for plane in lung])


@dataclass
class CandidateSet:
    """Features (one row per candidate), labels (1 = hits a nodule) and the nodules found."""

    features: npt.NDArray[np.float64]
    labels: npt.NDArray[np.int_]
    nodules: int
    nodules_with_candidate: int


def cohort_candidates(
    root: str | Path,
    *,
    echo: Callable[[str], None] | None = None,
) -> CandidateSet:
    """Every case's candidates in ``root``, labelled by its truth."""
    from overread.imaging.series import load_series

    root = Path(root)
    cases_file = root / "cases.json"
    if not cases_file.is_file():
        raise ConfigError(f"{root}: not a phantom CT cohort (no cases.json)")
    rows: list[npt.NDArray[np.float64]] = []
    labels: list[int] = []
    total = found = 0
    for row in json.loads(cases_file.read_text()):
        folder = root / row["case"]
        volume = load_series([folder / "series"]).volumes[0]
        info = json.loads((folder / "case.json").read_text())
        nodules = json.loads((folder / "nodules.json").read_text())
        affine = np.array(info["affine_lps"])
        z0, step = affine[2, 3], affine[2, 2]
        index = [round((p - z0) / step) for p in volume.positions]
        spacing = (float(step), float(volume.spacing[1]), float(volume.spacing[2]))
        hu = np.asarray(volume.pixels, dtype=np.float32)
        candidates = find_candidates(hu, spacing, source_lung(hu))
        centres = []
        for nod in nodules:
            col, r, k = nod["centre_voxel"]
            z = float(np.interp(k, index, np.arange(len(index))))
            centres.append((np.array([z, r, col]), nod["diameter_mm"] / 2))
        hit_nodules: set[int] = set()
        for c in candidates:
            point = np.asarray(c.centre, dtype=np.float64)
            hit = [
                i
                for i, (centre, radius) in enumerate(centres)
                if np.linalg.norm((point - centre) * spacing) <= radius
            ]
            rows.append(candidate_features(c))
            labels.append(1 if hit else 0)
            hit_nodules.update(hit)
        total += len(nodules)
        found += len(hit_nodules)
        if echo is not None:
            echo(
                f"  {row['case']}: {len(candidates)} candidates, {len(hit_nodules)}/{len(nodules)} nodules"
            )
    return CandidateSet(np.array(rows), np.array(labels, dtype=int), total, found)


def fit_cad(
    root: str | Path, *, l2: float = 1.0, echo: Callable[[str], None] | None = None
) -> tuple[tuple[float, ...], CandidateSet]:
    """Logistic candidate weights fitted on the cohort ``root`` (see the module)."""
    data = cohort_candidates(root, echo=echo)
    if data.labels.sum() == 0 or data.labels.sum() == len(data.labels):
        raise ConfigError(f"{root}: the candidates need both nodules and non-nodules to fit")
    return fit_weights(data.features, data.labels, l2=l2), data


__all__ = ["CandidateSet", "cohort_candidates", "fit_cad", "source_lung"]
