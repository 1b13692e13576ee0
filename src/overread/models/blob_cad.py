"""Two-stage nodule CAD on CT: multi-scale blob candidates, a scored shortlist, FWHM masks.

The classic computer-aided detection scheme of lung-nodule systems, on the source grid
(no network):

1. **Candidates.** Over a range of scales ``s`` (mm), the Hessian of the HU volume
   smoothed by a Gaussian of ``s`` (per axis in voxels, so anisotropic voxels are
   handled) is scale-normalised (``s**2 * H``) and its eigenvalues ``l1 <= l2 <= l3``
   give the *blobness* ``-l3`` where all three are negative (a bright blob: the
   intensity falls off in every direction) and 0 elsewhere. A tube (a vessel) has one
   eigenvalue near 0 along its axis, so it scores low; a sphere of radius ``r`` peaks
   at ``s = r / sqrt(3)``, whether solid (+30 HU) or ground-glass (-600 HU): the
   contrast against -850 HU lung is a blob either way. Per voxel the scale of the
   largest ``-LoG`` (the trace) is kept with the blobness there; the local maxima
   of that blobness inside the lung are the candidates, each with its scale.
2. **Scoring (false-positive reduction).** Each candidate gets features measured on
   the source HU: blobness, the contrast of its core over the lung around it, its
   core HU, its sphericity ``l3 / l1`` and its scale; a logistic model of those
   (weights in :data:`DEFAULT_WEIGHTS`, fitted on training phantoms, see
   :func:`fit_weights`) is the candidate's score.
3. **Masks (FWHM).** Inside a box around the candidate, the voxels brighter than half
   way between its core HU and the lung background, connected to the centre, are the
   nodule (for a dense core with a much larger ground-glass region around it, a
   part-solid nodule, the half-way level of ground glass): size, volume and density
   come from that mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatArray = npt.NDArray[np.float32]

#: Blob scales (mm): spheres of about 4 to 30 mm across (``d = 2 * sqrt(3) * s``).
DEFAULT_SCALES_MM: tuple[float, ...] = (1.2, 1.7, 2.4, 3.4, 4.8, 6.8, 8.5)

#: Feature names, in the order of :func:`candidate_features` and of the weights.
FEATURES: tuple[str, ...] = (
    "log_log",
    "log_blobness",
    "log_contrast",
    "core_hu",
    "sphericity",
    "log_scale",
    "shape",
)

#: Logistic weights: intercept then one per feature, fitted on 16 training phantoms of
#: seed 0 (``overread.training.ct_cad.fit_cad(DIR, l2=1.0)``; 6329 candidates, 31 on a
#: nodule, every one of the 30 nodules with a candidate).
DEFAULT_WEIGHTS: tuple[float, ...] = (
    -16.164537,
    -0.992337,
    3.162326,
    -0.032195,
    -1.791148,
    4.102886,
    2.147168,
    0.982035,
)


@dataclass(frozen=True)
class Candidate:
    """One blob candidate on the source grid (voxel indices ``slice, row, column``)."""

    centre: tuple[int, int, int]
    scale_mm: float
    log: float
    blobness: float
    sphericity: float
    core_hu: float
    background_hu: float

    @property
    def radius_mm(self) -> float:
        """The radius of the sphere this scale fits best (``sqrt(3) * s``)."""
        return math.sqrt(3.0) * self.scale_mm

    @property
    def contrast(self) -> float:
        return self.core_hu - self.background_hu


def _hessian(hu: FloatArray, spacing: Sequence[float], scale_mm: float) -> FloatArray:
    """The scale-normalised Hessian ``(..., 3, 3)`` in HU of ``hu`` smoothed at ``scale_mm``."""
    sigma = [scale_mm / s for s in spacing]
    orders = {
        (0, 0): (2, 0, 0),
        (1, 1): (0, 2, 0),
        (2, 2): (0, 0, 2),
        (0, 1): (1, 1, 0),
        (0, 2): (1, 0, 1),
        (1, 2): (0, 1, 1),
    }
    h = np.empty((*hu.shape, 3, 3), dtype=np.float32)
    for (i, j), order in orders.items():
        d = ndimage.gaussian_filter(hu, sigma, order=order, mode="nearest")
        d *= scale_mm * scale_mm / (spacing[i] * spacing[j])
        h[..., i, j] = d
        h[..., j, i] = d
    return h


def blobness(
    hu: FloatArray,
    spacing: Sequence[float],
    scales_mm: Sequence[float] = DEFAULT_SCALES_MM,
    *,
    region: npt.NDArray[np.bool_] | None = None,
    min_log: float = 0.0,
) -> tuple[FloatArray, FloatArray, FloatArray, FloatArray]:
    """Per voxel: the largest scale-normalised ``-LoG`` over ``scales_mm``, the scale
    giving it, and the blobness ``-l3`` and sphericity ``l3 / l1`` at that scale.

    ``region`` limits the work to its bounding box (values outside are 0); blobness
    and sphericity are left at 0 where ``-LoG`` stays under ``min_log``.
    """
    shape = hu.shape
    log = np.zeros(shape, dtype=np.float32)
    blob = np.zeros(shape, dtype=np.float32)
    scale = np.zeros(shape, dtype=np.float32)
    spher = np.zeros(shape, dtype=np.float32)
    box: tuple[slice, ...] = tuple(slice(0, n) for n in shape)
    if region is not None:
        if not region.any():
            return log, scale, blob, spher
        found = ndimage.find_objects(region.astype(np.uint8))[0]
        assert found is not None
        pad = [math.ceil(3 * max(scales_mm) / s) for s in spacing]
        box = tuple(
            slice(max(0, sl.start - p), min(n, sl.stop + p))
            for sl, p, n in zip(found, pad, shape, strict=True)
        )
    sub = np.asarray(hu[box], dtype=np.float32)
    for s in scales_mm:
        h = _hessian(sub, spacing, s)
        value = np.maximum(-(h[..., 0, 0] + h[..., 1, 1] + h[..., 2, 2]), 0.0)
        better = value > log[box]
        log[box][better] = value[better]
        scale[box][better] = s
        # Eigenvalues only where this scale wins and counts (the slow part).
        strong = better & (value >= min_log)
        ev = np.linalg.eigvalsh(h[strong])
        l1, l3 = ev[:, 0], ev[:, 2]
        blob[box][strong] = np.maximum(-l3, 0.0)
        spher[box][strong] = np.where(l1 < 0, l3 / np.minimum(l1, -1e-6), 0.0)
    return log, scale, blob, spher


def _ring_means(
    hu: FloatArray, spacing: Sequence[float], centre: Sequence[int], radius_mm: float
) -> tuple[float, float]:
    """Mean HU in the sphere of half ``radius_mm`` and median in the shell 1.5-2.5 r."""
    reach = [math.ceil(2.5 * radius_mm / s) + 1 for s in spacing]
    lo = [max(0, c - r) for c, r in zip(centre, reach, strict=True)]
    hi = [min(n, c + r + 1) for c, n, r in zip(centre, hu.shape, reach, strict=True)]
    sub = hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    grid = np.meshgrid(
        *[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, centre, spacing, strict=True)],
        indexing="ij",
    )
    dist = np.sqrt(sum(g * g for g in grid))
    core = sub[dist <= max(0.5 * radius_mm, 0.5 * min(spacing))]
    shell = sub[(dist >= 1.5 * radius_mm) & (dist <= 2.5 * radius_mm)]
    core_hu = float(core.mean()) if core.size else float(hu[tuple(centre)])
    background = float(np.median(shell)) if shell.size else -850.0
    return core_hu, background


def find_candidates(
    hu: FloatArray,
    spacing: Sequence[float],
    lung: npt.NDArray[np.bool_],
    *,
    scales_mm: Sequence[float] = DEFAULT_SCALES_MM,
    floor: float = 60.0,
    min_blobness: float = 15.0,
    max_candidates: int = 600,
) -> list[Candidate]:
    """Blob candidates whose centre lies in ``lung``, highest blobness first.

    A candidate is a local maximum (3 x 3 x 3) of the blobness reaching
    ``min_blobness`` where the ``-LoG`` reaches ``floor`` (both HU, scale-normalised);
    one per blob (a weaker peak within the fitted radius of a kept one is dropped).
    """
    best, scale, blob, spher = blobness(hu, spacing, scales_mm, region=lung, min_log=floor)
    # Peaks of the blobness (near 0 along a vessel), not of the LoG: a vessel crossing
    # a faint ground-glass nodule outshines it in LoG but not in blobness.
    peaks = (blob == ndimage.maximum_filter(blob, size=3)) & (blob >= min_blobness) & lung
    idx = np.argwhere(peaks)
    order = np.argsort(-blob[peaks], kind="stable")
    kept: list[Candidate] = []
    points: list[npt.NDArray[np.float64]] = []
    radii: list[float] = []
    sp = np.asarray(spacing, dtype=np.float64)
    for i in order:
        z, y, x = (int(v) for v in idx[i])
        s = float(scale[z, y, x])
        r = math.sqrt(3.0) * s
        p = np.array([z, y, x], dtype=np.float64) * sp
        # Non-maximum suppression: one candidate per blob.
        if points and bool(
            np.any(np.linalg.norm(np.asarray(points) - p, axis=1) < np.asarray(radii))
        ):
            continue
        core_hu, background = _ring_means(hu, spacing, (z, y, x), r)
        kept.append(
            Candidate(
                (z, y, x),
                s,
                float(best[z, y, x]),
                float(blob[z, y, x]),
                float(spher[z, y, x]),
                core_hu,
                background,
            )
        )
        points.append(p)
        radii.append(r)
        if len(kept) >= max_candidates:
            break
    return kept


def candidate_features(candidate: Candidate) -> npt.NDArray[np.float64]:
    """The candidate's features, in the order of :data:`FEATURES`."""
    return np.array(
        [
            math.log(max(candidate.log, 1.0)),
            math.log(max(candidate.blobness, 1.0)),
            math.log(max(candidate.contrast, 1.0)),
            candidate.core_hu / 1000.0,
            candidate.sphericity,
            math.log(candidate.scale_mm),
            candidate.blobness / max(candidate.log, 1.0),
        ],
        dtype=np.float64,
    )


def score(candidate: Candidate, weights: Sequence[float] = DEFAULT_WEIGHTS) -> float:
    """The candidate's probability of being a nodule under the logistic ``weights``."""
    w = np.asarray(weights, dtype=np.float64)
    z = float(w[0] + candidate_features(candidate) @ w[1:])
    return 1.0 / (1.0 + math.exp(-max(min(z, 50.0), -50.0)))


def fit_weights(
    features: npt.NDArray[np.float64], labels: npt.NDArray[np.int_], *, l2: float = 1e-2
) -> tuple[float, ...]:
    """Logistic regression (Newton steps, ridge ``l2``): intercept then feature weights."""
    x = np.c_[np.ones(len(features)), features]
    y = labels.astype(np.float64)
    w = np.zeros(x.shape[1])
    penalty = l2 * np.eye(x.shape[1])
    penalty[0, 0] = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-np.clip(x @ w, -50, 50)))
        grad = x.T @ (p - y) + penalty @ w
        hess = (x * (p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hess + 1e-9 * np.eye(len(w)), grad)
        w -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    return tuple(round(float(v), 6) for v in w)


def _region(
    sub: FloatArray,
    dist: FloatArray,
    radius_mm: float,
    near_mm: float,
    level: float,
    local: tuple[int, ...],
) -> npt.NDArray[np.bool_]:
    """Voxels at or above ``level`` within ``radius_mm``, face-connected to ``local``
    (else to the largest such part within ``near_mm``), holes filled."""
    inside = dist <= radius_mm
    dense = inside & (sub >= level)
    labels, _ = ndimage.label(dense)
    pick = int(labels[local])
    if pick == 0:
        values = labels[(dist <= near_mm) & dense]
        pick = int(np.bincount(values).argmax()) if values.size else 0
    if pick == 0:
        return np.zeros(sub.shape, dtype=bool)
    return np.asarray(ndimage.binary_fill_holes(labels == pick), dtype=bool)


def fwhm_mask(
    hu: FloatArray,
    spacing: Sequence[float],
    candidate: Candidate,
    *,
    max_radius_mm: float = 20.0,
    rim_hu: float = -600.0,
    rim_ratio: float = 4.0,
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]]:
    """The nodule's mask in a box around the candidate: the half-maximum region.

    Voxels at or above half way between the core HU and the lung background, face-
    connected to the centre (or to the brightest core voxel), inside a sphere of twice
    the fitted radius (at most ``max_radius_mm``): vessels leaving the nodule are cut
    there. A dense core (over ``rim_hu + 100``) may be the solid part of a part-solid
    nodule: when the region at half way between ``rim_hu`` (ground glass) and the
    background, within three fitted radii, holds at least ``rim_ratio`` times the
    half-maximum region, that wider region is the mask (a solid nodule's partial-volume
    shell adds less than that).
    """
    near = max(candidate.radius_mm, max(spacing))
    r = min(2.0 * candidate.radius_mm + max(spacing), max_radius_mm)
    wide = candidate.core_hu > rim_hu + 100.0
    r_outer = min(3.0 * candidate.radius_mm + max(spacing), max_radius_mm) if wide else r
    reach = [math.ceil(r_outer / s) for s in spacing]
    c = candidate.centre
    lo = [max(0, ci - q) for ci, q in zip(c, reach, strict=True)]
    hi = [min(n, ci + q + 1) for ci, n, q in zip(c, hu.shape, reach, strict=True)]
    box = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    sub = hu[box]
    grid = np.meshgrid(
        *[(np.arange(a, b) - ci) * s for a, b, ci, s in zip(lo, hi, c, spacing, strict=True)],
        indexing="ij",
    )
    dist = np.sqrt(sum(g * g for g in grid)).astype(np.float32)
    local = tuple(ci - a for ci, a in zip(c, lo, strict=True))
    level = 0.5 * (candidate.core_hu + candidate.background_hu)
    mask = _region(sub, dist, r, near, level, local)
    if wide and mask.any():
        rim_level = 0.5 * (rim_hu + candidate.background_hu)
        rim = _region(sub, dist, r_outer, near, rim_level, local)
        if int(rim.sum()) >= rim_ratio * int(mask.sum()):
            mask = rim
    return box, mask


__all__ = [
    "DEFAULT_SCALES_MM",
    "DEFAULT_WEIGHTS",
    "FEATURES",
    "Candidate",
    "blobness",
    "candidate_features",
    "find_candidates",
    "fit_weights",
    "fwhm_mask",
    "score",
]
