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
   (revision 2: weights in :data:`DEFAULT_WEIGHTS`, fitted on training phantoms, see
   :func:`fit_weights`) or, in revision 3, a gradient-boosted tree ensemble over them
   and the shell and background features (:func:`tree_scores`) is the candidate's score.
3. **Masks (FWHM).** Inside a box around the candidate, the voxels brighter than half
   way between its core HU and the lung background, inside the lung closed by a ball
   (a nodule on the pleura is in, the chest wall is not), opened by a ball of half the
   fitted radius (a vessel crossing the nodule is cut off), connected to the centre,
   are the nodule (for a dense core with a much larger ground-glass region around it,
   a part-solid nodule, the half-way level of ground glass): size, volume and density
   come from that mask.

The filters run in slabs of slices (each read with the slices its kernels reach), so
the memory is bounded by a slab whatever the series' length, and the second-derivative
kernels sum to zero (sampled under half a voxel they do not, and the Hessian would
respond to the absolute HU on thick slices).
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import numpy.typing as npt
from scipy import ndimage

FloatArray = npt.NDArray[np.float32]

logger = logging.getLogger(__name__)

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
#: seed 0 (``overread.training.ct_cad.fit_cad(DIR, l2=1.0)``; 9124 candidates, 42 on a
#: nodule, every one of the 30 nodules with a candidate).
DEFAULT_WEIGHTS: tuple[float, ...] = (
    -11.241142,
    -1.03755,
    2.403193,
    -0.247584,
    -1.106234,
    3.580833,
    2.437687,
    0.810917,
)


#: Defaults of the candidate search and the part-solid mask rule (the package keeps
#: them in its manifest).
MIN_BLOBNESS = 15.0
#: The ``-LoG`` (HU, scale-normalised) a candidate's peak must reach.
FLOOR = 60.0
MAX_CANDIDATES = 600
RIM_HU = -600.0
RIM_RATIO = 4.0
#: Revision 3: candidates inside the lung closed by a ball of this radius (mm).
CANDIDATE_CLOSING_MM = 10.0
#: Revision 3: the most candidates scored (ground-glass nodules' blobness is low: on
#: design cohorts they ranked up to 440th of the blob peaks).
MAX_CANDIDATES_V3 = 1000
#: Revision 3: the part-solid rule's ratio (with the far background, 4 left cores of
#: 12 mm part-solid nodules alone).
RIM_RATIO_V3 = 3.0

#: The mask's limits (:func:`fwhm_mask`).
#: Radius of the ball closing the lung, in fitted radii (a nodule on the pleura is in).
CLOSING_RADII = 1.5
#: The largest closing radius (mm), whatever the fitted radius.
MAX_CLOSING_MM = 15.0
#: Radius of the ball opening the region, in fitted radii (vessels cut off).
OPENING_RADII = 0.5
#: A core this far (HU) over ``rim_hu`` is dense: it may be a part-solid nodule's.
DENSE_CORE_MARGIN_HU = 100.0

#: Gaussian kernels are truncated at this many sigmas.
_TRUNCATE = 4.0


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


def _radius(sigma: float) -> int:
    """The kernel's radius (samples) at ``sigma`` (samples): truncated at ``_TRUNCATE``."""
    return int(_TRUNCATE * sigma + 0.5)


def _kernel(sigma: float, order: int) -> npt.NDArray[np.float64]:
    """The sampled Gaussian (``order`` 0) or its derivative (1, 2), truncated at 4 sigma.

    The second derivative is made to sum to zero (a multiple of the Gaussian, which
    sums to one, is taken off): sampled at under about half a voxel the plain kernel
    does not, and the Hessian would respond to the absolute HU (flat lung at -850 HU
    read as a curvature of hundreds of HU on thick slices).
    """
    radius = _radius(sigma)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 * x * x / (sigma * sigma))
    phi /= phi.sum()
    if order == 0:
        return phi
    if order == 1:
        return -x / (sigma * sigma) * phi
    k = (x * x / (sigma * sigma) - 1.0) / (sigma * sigma) * phi
    k -= k.sum() * phi
    return k


#: The Hessian's six unique components: ``(i, j)`` and the derivative order per axis
#: (those sharing the order along the slices together: one first pass alive at a time).
_COMPONENTS: tuple[tuple[int, int, tuple[int, int, int]], ...] = (
    (0, 0, (2, 0, 0)),
    (0, 1, (1, 1, 0)),
    (0, 2, (1, 0, 1)),
    (1, 1, (0, 2, 0)),
    (2, 2, (0, 0, 2)),
    (1, 2, (0, 1, 1)),
)


def _sigmas(spacing: Sequence[float], scale_mm: float) -> list[float]:
    return [scale_mm / s for s in spacing]


def _halo(spacing: Sequence[float], scale_mm: float) -> int:
    """Slices the scale's kernels reach across (their radius along the slices)."""
    return _radius(_sigmas(spacing, scale_mm)[0])


def _hessian6(
    sub: FloatArray, spacing: Sequence[float], scale_mm: float, keep: slice
) -> list[FloatArray]:
    """The six unique components (order of ``_COMPONENTS``) of the scale-normalised
    Hessian of ``sub`` (edges: nearest) smoothed at ``scale_mm``, on the slices ``keep``."""
    sigma = _sigmas(spacing, scale_mm)
    out: list[FloatArray] = []
    first: FloatArray | None = None
    first_order = -1
    for i, j, order in _COMPONENTS:
        if order[0] != first_order:
            along = ndimage.convolve1d(sub, _kernel(sigma[0], order[0]), axis=0, mode="nearest")
            first = np.ascontiguousarray(along[keep])
            del along
            first_order = order[0]
        assert first is not None
        d = ndimage.convolve1d(first, _kernel(sigma[1], order[1]), axis=1, mode="nearest")
        d = ndimage.convolve1d(d, _kernel(sigma[2], order[2]), axis=2, mode="nearest")
        d *= scale_mm * scale_mm / (spacing[i] * spacing[j])
        out.append(d)
    return out


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


#: The shells (in fitted radii) of :func:`shell_features`.
SHELLS: tuple[tuple[float, float], ...] = ((0.0, 0.7), (0.8, 1.3), (1.3, 1.8), (1.8, 2.6))
#: The shell (fitted radii) whose median HU is the far background.
FAR_SHELL: tuple[float, float] = (3.0, 4.0)


@functools.lru_cache(maxsize=32)
def _shell_flags(spacing: tuple[float, ...], r: float) -> npt.NDArray[np.uint8]:
    """Per voxel of the box of :data:`FAR_SHELL` radii around a centre: bit ``j`` set
    when the voxel is in shell ``j`` of :data:`SHELLS`, bit 4 for the far shell (computed
    once per scale and spacing; the distances are those a candidate's box gives)."""
    reach = [math.ceil(FAR_SHELL[1] * r / s) + 1 for s in spacing]
    axes = [np.arange(-q, q + 1) * s for q, s in zip(reach, spacing, strict=True)]
    grid = np.meshgrid(*axes, indexing="ij")
    dist = np.sqrt(sum(g * g for g in grid)) / r
    del grid
    flags = np.zeros(dist.shape, dtype=np.uint8)
    for bit, (a, b) in enumerate((*SHELLS, FAR_SHELL)):
        inside = (dist >= a) & (dist <= b) if a > 0 else dist <= b
        flags[inside] |= np.uint8(1 << bit)
    flags.flags.writeable = False
    return flags


def shell_features(
    hu: FloatArray, spacing: Sequence[float], candidate: Candidate
) -> npt.NDArray[np.float64]:
    """Around the candidate, per shell of :data:`SHELLS` (fitted radii): the fraction of
    voxels at or above half way between its core HU and the lung background, then the
    largest such fraction over the six half-spaces (+-slice, +-row, +-column) of the
    outer two shells, then the background HU (1.5-2.5 radii) and the median HU of the
    shell at :data:`FAR_SHELL` radii, both over 1000 (the solid core of a part-solid
    nodule has ground glass around it and lung beyond).

    A sphere is bright inside and dark all round; a vessel crossing or a branch point
    stays bright along the vessels (in some directions of the shells), a blob of
    noise is bright only in part of its core.
    """
    r = max(candidate.radius_mm, 0.75 * max(spacing))
    outer = FAR_SHELL[1] * r
    reach = [math.ceil(outer / s) + 1 for s in spacing]
    c = candidate.centre
    lo = [max(0, ci - q) for ci, q in zip(c, reach, strict=True)]
    hi = [min(n, ci + q + 1) for ci, n, q in zip(c, hu.shape, reach, strict=True)]
    sub = hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    flags = _shell_flags(tuple(float(s) for s in spacing), float(r))[
        tuple(slice(a - ci + q, b - ci + q) for a, b, ci, q in zip(lo, hi, c, reach, strict=True))
    ]
    level = 0.5 * (candidate.core_hu + candidate.background_hu)
    bright = sub >= level
    out: list[float] = []
    shells = [(flags & np.uint8(1 << bit)) != 0 for bit in range(len(SHELLS))]
    for shell in shells:
        n = int(shell.sum())
        out.append(int(np.count_nonzero(bright & shell)) / n if n else 1.0)
    # The half-spaces, from each axis alone (broadcast, no grid).
    sides = []
    for axis, (a, b, ci, s) in enumerate(zip(lo, hi, c, spacing, strict=True)):
        g = (np.arange(a, b) - ci) * s
        view = [1, 1, 1]
        view[axis] = len(g)
        sides += [(g > 0.3 * r).reshape(view), (g < -0.3 * r).reshape(view)]
    for shell in shells[-2:]:
        best = 0.0
        for side in sides:
            part = shell & side
            n = int(part.sum())
            if n:
                best = max(best, int(np.count_nonzero(bright & part)) / n)
        out.append(best)
    far = sub[(flags & np.uint8(1 << len(SHELLS))) != 0]
    out.append(candidate.background_hu / 1000.0)
    out.append((float(np.median(far)) if far.size else candidate.background_hu) / 1000.0)
    return np.asarray(out, dtype=np.float64)


@dataclass(frozen=True)
class CandidateSearch:
    """The candidates kept, the blob peaks found and whether ``max_candidates`` cut them."""

    candidates: list[Candidate]
    peaks: int
    examined: int

    @property
    def truncated(self) -> bool:
        """True when peaks were left unexamined (``max_candidates`` kept before)."""
        return self.examined < self.peaks


@dataclass
class _Peaks:
    """Blob peaks of one slab: voxel indices and the values there."""

    idx: npt.NDArray[np.intp]
    blob: FloatArray
    log: FloatArray
    scale: FloatArray
    spher: FloatArray


#: The grid (mm) the candidates' lung is closed on (:func:`coarse_closed_lung`).
CLOSING_GRID_MM = 2.0


@dataclass(frozen=True)
class _CoarseLung:
    """A mask on a grid of blocks of ``factors`` source voxels."""

    mask: npt.NDArray[np.bool_]
    factors: tuple[int, int, int]

    def on(self, box: tuple[slice, slice, slice]) -> npt.NDArray[np.bool_]:
        """The mask brought to the source voxels of ``box`` (each takes its block's)."""
        index = [np.arange(b.start, b.stop) // f for b, f in zip(box, self.factors, strict=True)]
        return np.asarray(self.mask[np.ix_(*index)], dtype=bool)


def coarse_closed_lung(
    lung: npt.NDArray[np.bool_],
    spacing: Sequence[float],
    radius_mm: float,
    grid_mm: float = CLOSING_GRID_MM,
) -> _CoarseLung:
    """``lung`` closed by a ball of ``radius_mm`` once for the whole series, on blocks
    of about ``grid_mm`` (a block is lung when at least half its voxels are): the
    distance transforms run on a grid some 27 times smaller than the source at 0.7 mm,
    in tens of megabytes whatever the slab. The candidates' region is the source lung
    or'ed with it (:func:`search_candidates`)."""
    factors = cast(tuple[int, int, int], tuple(max(1, round(grid_mm / float(s))) for s in spacing))
    shape = tuple(-(-n // f) for n, f in zip(lung.shape, factors, strict=True))
    counts = np.zeros(shape, dtype=np.int32)
    sizes = np.zeros(shape, dtype=np.int32)
    for dz in range(factors[0]):
        for dy in range(factors[1]):
            for dx in range(factors[2]):
                part = lung[dz :: factors[0], dy :: factors[1], dx :: factors[2]]
                a, b, c = part.shape
                counts[:a, :b, :c] += part
                sizes[:a, :b, :c] += 1
    coarse = 2 * counts >= sizes
    del counts, sizes
    step = [float(s) * f for s, f in zip(spacing, factors, strict=True)]
    whole = cast(tuple[slice, slice, slice], tuple(slice(0, n) for n in shape))
    return _CoarseLung(closed_lung(coarse, step, whole, radius_mm), factors)


def _slab_peaks(
    hu: FloatArray,
    spacing: Sequence[float],
    lung: npt.NDArray[np.bool_],
    box: tuple[slice, slice, slice],
    core: tuple[int, int],
    scales_mm: Sequence[float],
    floor: float,
    min_blobness: float,
    closed: _CoarseLung | None = None,
) -> _Peaks:
    """The blob peaks on the slices ``core`` (in ``box``), computed on them plus one
    slice each side (for the 3 x 3 x 3 maximum) and each scale's kernel radius of
    slices more (clipped to ``box``, where the edge is repeated): exactly what the
    whole box gives on those slices."""
    zb = box[0]
    e0, e1 = max(zb.start, core[0] - 1), min(zb.stop, core[1] + 1)
    shape = (e1 - e0, box[1].stop - box[1].start, box[2].stop - box[2].start)
    log = np.zeros(shape, dtype=np.float32)
    blob = np.zeros(shape, dtype=np.float32)
    scale = np.zeros(shape, dtype=np.float32)
    spher = np.zeros(shape, dtype=np.float32)
    for s in scales_mm:
        halo = _halo(spacing, s)
        i0, i1 = max(zb.start, e0 - halo), min(zb.stop, e1 + halo)
        sub = np.asarray(hu[i0:i1, box[1], box[2]], dtype=np.float32)
        h = _hessian6(sub, spacing, s, slice(e0 - i0, e1 - i0))
        del sub
        value = np.maximum(-(h[0] + h[3] + h[4]), 0.0)  # the trace: -LoG
        better = value > log
        log[better] = value[better]
        scale[better] = s
        # Eigenvalues only where this scale wins and counts (the slow part).
        strong = better & (value >= floor)
        n = int(strong.sum())
        if n:
            m = np.empty((n, 3, 3), dtype=np.float32)
            for (i, j, _), comp in zip(_COMPONENTS, h, strict=True):
                m[:, i, j] = m[:, j, i] = comp[strong]
            ev = np.linalg.eigvalsh(m)
            l1, l3 = ev[:, 0], ev[:, 2]
            blob[strong] = np.maximum(-l3, 0.0)
            spher[strong] = np.where(l1 < 0, l3 / np.minimum(l1, -1e-6), 0.0)
        del h, value, better, strong
    # Blobness >= 0 everywhere (and 0 outside the box): a constant 0 edge is the
    # whole volume's maximum filter.
    top = ndimage.maximum_filter(blob, size=3, mode="constant", cval=0.0)
    region = lung[e0:e1, box[1], box[2]]
    if closed is not None:
        region = region | closed.on((slice(e0, e1), box[1], box[2]))
    peaks = (blob == top) & (blob >= min_blobness) & region
    peaks[: core[0] - e0] = False
    peaks[core[1] - e0 :] = False
    idx = np.argwhere(peaks)
    idx += np.array([e0, box[1].start, box[2].start], dtype=np.intp)
    return _Peaks(idx, blob[peaks], log[peaks], scale[peaks], spher[peaks])


def search_candidates(
    hu: FloatArray,
    spacing: Sequence[float],
    lung: npt.NDArray[np.bool_],
    *,
    scales_mm: Sequence[float] = DEFAULT_SCALES_MM,
    floor: float = FLOOR,
    min_blobness: float = MIN_BLOBNESS,
    max_candidates: int = MAX_CANDIDATES,
    slab_slices: int = 8,
    closing_mm: float = 0.0,
) -> CandidateSearch:
    """Blob candidates whose centre lies in ``lung``, highest blobness first.

    A candidate is a local maximum (3 x 3 x 3) of the blobness reaching
    ``min_blobness`` where the ``-LoG`` reaches ``floor`` (both HU, scale-normalised),
    inside ``lung`` closed by a ball of ``closing_mm`` (0: the lung as it is; a solid
    nodule joined to the mediastinum by a vessel is not a hole of a lung threshold,
    the closed lung holds it; closed once for the series on a grid of about
    :data:`CLOSING_GRID_MM`, see :func:`coarse_closed_lung`);
    one per blob (a weaker peak within the fitted radius of a kept one is dropped);
    at most ``max_candidates`` are kept (the strongest).

    The filters run over the lung's bounding box (padded by three of the largest
    scale) in slabs of ``slab_slices`` slices, each read with the slices its kernels
    reach: the peaks are those of the whole box, and the memory is bounded by the slab
    (a few float arrays of it) whatever the number of slices.
    """
    # The lung's bounding box from its projections (no volume-sized copy).
    extent = []
    for axis in range(3):
        others = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(lung.any(axis=others))
        if not hit.size:
            return CandidateSearch([], 0, 0)
        extent.append(slice(int(hit[0]), int(hit[-1]) + 1))
    pad = [math.ceil(3 * max(scales_mm) / s) for s in spacing]
    box = cast(
        tuple[slice, slice, slice],
        tuple(
            slice(max(0, sl.start - p), min(n, sl.stop + p))
            for sl, p, n in zip(extent, pad, hu.shape, strict=True)
        ),
    )
    step = max(1, int(slab_slices))
    # The closed lung once for the series, on a coarse grid (not per slab).
    closed = coarse_closed_lung(lung, spacing, closing_mm) if closing_mm > 0 else None
    parts = [
        _slab_peaks(
            hu,
            spacing,
            lung,
            box,
            (z, min(z + step, box[0].stop)),
            scales_mm,
            floor,
            min_blobness,
            closed,
        )
        for z in range(box[0].start, box[0].stop, step)
    ]
    idx = np.concatenate([p.idx for p in parts])
    blob = np.concatenate([p.blob for p in parts])
    log = np.concatenate([p.log for p in parts])
    scale = np.concatenate([p.scale for p in parts])
    spher = np.concatenate([p.spher for p in parts])
    # Slabs in slice order, C order inside: the whole volume's order of peaks.
    order = np.argsort(-blob, kind="stable")
    kept: list[Candidate] = []
    points: list[npt.NDArray[np.float64]] = []
    radii: list[float] = []
    sp = np.asarray(spacing, dtype=np.float64)
    examined = 0
    for i in order:
        if len(kept) >= max_candidates:
            break
        examined += 1
        z, y, x = (int(v) for v in idx[i])
        s = float(scale[i])
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
                float(log[i]),
                float(blob[i]),
                float(spher[i]),
                core_hu,
                background,
            )
        )
        points.append(p)
        radii.append(r)
    return CandidateSearch(kept, len(order), examined)


def find_candidates(
    hu: FloatArray,
    spacing: Sequence[float],
    lung: npt.NDArray[np.bool_],
    *,
    scales_mm: Sequence[float] = DEFAULT_SCALES_MM,
    floor: float = FLOOR,
    min_blobness: float = MIN_BLOBNESS,
    max_candidates: int = MAX_CANDIDATES,
    slab_slices: int = 8,
    closing_mm: float = 0.0,
) -> list[Candidate]:
    """The candidates of :func:`search_candidates` (a warning is logged when
    ``max_candidates`` left blob peaks unexamined)."""
    found = search_candidates(
        hu,
        spacing,
        lung,
        scales_mm=scales_mm,
        floor=floor,
        min_blobness=min_blobness,
        max_candidates=max_candidates,
        slab_slices=slab_slices,
        closing_mm=closing_mm,
    )
    if found.truncated:
        logger.warning(truncation_warning(found, max_candidates))
    return found.candidates


def truncation_warning(found: CandidateSearch, max_candidates: int) -> str:
    """The one line saying how many blob peaks ``max_candidates`` left unscored."""
    return (
        f"{max_candidates} nodule candidates kept from the strongest {found.examined} of "
        f"{found.peaks} blob peaks: the {found.peaks - found.examined} weaker were not scored"
    )


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


#: The features of revision 3 (:func:`candidate_features_v3`): those of revision 2,
#: then :func:`shell_features`.
SHELL_FEATURES: tuple[str, ...] = (
    "core_fill",
    "shell_1",
    "shell_1_5",
    "shell_2",
    "shell_1_5_max_side",
    "shell_2_max_side",
    "background_hu",
    "far_hu",
)
FEATURES_V3: tuple[str, ...] = FEATURES + SHELL_FEATURES


def candidate_features_v3(
    hu: FloatArray, spacing: Sequence[float], candidate: Candidate
) -> npt.NDArray[np.float64]:
    """The candidate's features of revision 3, in the order of :data:`FEATURES_V3`."""
    return np.concatenate([candidate_features(candidate), shell_features(hu, spacing, candidate)])


def check_trees(trees: Sequence[Sequence[float]], n_features: int) -> None:
    """Raise ``ValueError`` unless ``trees`` is a tree ensemble :func:`tree_scores` reads
    as written: every number finite; per node ``feature, threshold, left, right`` with
    ``feature`` exactly -1 (a leaf: ``-1, value, -1, -1``) or a whole number from 0 to
    ``n_features - 1``, and a split's children whole node numbers after it."""
    if not trees:
        raise ValueError("cad_trees: no trees")
    for number, tree in enumerate(trees):
        if not tree or len(tree) % 4:
            raise ValueError("each of cad_trees is a run of 4 numbers per node")
        values = [float(v) for v in tree]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"cad_trees: tree {number} holds a number that is not finite")
        nodes = len(values) // 4
        for k in range(nodes):
            f, _, left, right = values[4 * k : 4 * k + 4]
            if f == -1:
                if left != -1 or right != -1:
                    raise ValueError(
                        f"cad_trees: tree {number} node {k}: a leaf is -1, value, -1, -1"
                    )
                continue
            if f != int(f) or not 0 <= f < n_features:
                raise ValueError(
                    f"cad_trees: tree {number} node {k}: feature {f:g} is not -1 "
                    f"or one of 0..{n_features - 1}"
                )
            for child in (left, right):
                if child != int(child) or not k < child < nodes:
                    raise ValueError(
                        f"cad_trees: tree {number} node {k}: child {child:g} is not a node after it"
                    )


def tree_scores(
    trees: Sequence[Sequence[float]], features: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """The probabilities of an additive tree ensemble on ``features`` (one row each).

    Each tree is a flat run of nodes, four numbers each: ``feature, threshold, left,
    right`` (node indices) for a split (``feature <= threshold`` goes left, the feature
    taken as float32 as scikit-learn does) and ``-1, value, -1, -1`` for a leaf; the
    probability is the logistic of the sum of the leaves reached (a one-leaf tree
    carries the intercept). The trees are checked first (:func:`check_trees`,
    ``ValueError``).
    """
    x = np.atleast_2d(np.asarray(features, dtype=np.float32)).astype(np.float64)
    check_trees(trees, x.shape[1])
    total = np.zeros(len(x), dtype=np.float64)
    rows = np.arange(len(x))
    for tree in trees:
        t = np.asarray(tree, dtype=np.float64).reshape(-1, 4)
        feature = t[:, 0].astype(np.intp)
        node = np.zeros(len(x), dtype=np.intp)
        for _ in range(len(t)):
            inner = feature[node] >= 0
            if not inner.any():
                break
            f = np.where(inner, feature[node], 0)
            left = x[rows, f] <= t[node, 1]
            step = np.where(left, t[node, 2], t[node, 3]).astype(np.intp)
            node = np.where(inner, step, node)
        total += t[node, 1]
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(total, -50.0, 50.0))), dtype=np.float64)


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


def _opened(
    region: npt.NDArray[np.bool_], spacing: Sequence[float], rho: float
) -> npt.NDArray[np.bool_]:
    """``region`` opened by a ball of ``rho`` mm (distance transforms, voxel sizes as
    they are), then grown back by one voxel in-plane inside ``region``: tubes thinner
    than the ball go, balls wider than it stay. A region the ball does not fit in is
    kept as it is."""
    if rho <= 0 or not region.any():
        return region
    eroded = np.asarray(ndimage.distance_transform_edt(region, sampling=spacing)) > rho
    if not eroded.any():
        return region
    grown = np.asarray(ndimage.distance_transform_edt(~eroded, sampling=spacing)) <= rho
    opened = grown & region
    # The surface the ball's voxels shave off, back in-plane (one voxel: a vessel
    # keeps a stub under a millimetre wide).
    plane = np.zeros((3, 3, 3), dtype=bool)
    plane[1] = ndimage.generate_binary_structure(2, 1)
    return np.asarray(
        opened | (ndimage.binary_dilation(opened, structure=plane) & region), dtype=bool
    )


def _region(
    sub: FloatArray,
    dist: FloatArray,
    radius_mm: float,
    near_mm: float,
    level: float,
    local: tuple[int, ...],
    allowed: npt.NDArray[np.bool_],
    spacing: Sequence[float],
    rho: float,
) -> npt.NDArray[np.bool_]:
    """Voxels at or above ``level`` within ``radius_mm`` and ``allowed``, opened by a
    ball of ``rho`` mm (vessels cut off), face-connected to ``local`` (else to the
    largest such part within ``near_mm``), holes filled."""
    dense = (dist <= radius_mm) & (sub >= level) & allowed
    dense = _opened(dense, spacing, rho)
    labels, _ = ndimage.label(dense)
    pick = int(labels[local])
    if pick == 0:
        values = labels[(dist <= near_mm) & dense]
        pick = int(np.bincount(values).argmax()) if values.size else 0
    if pick == 0:
        return np.zeros(sub.shape, dtype=bool)
    return np.asarray(ndimage.binary_fill_holes(labels == pick), dtype=bool)


def closed_lung(
    lung: npt.NDArray[np.bool_],
    spacing: Sequence[float],
    box: tuple[slice, slice, slice],
    radius_mm: float,
) -> npt.NDArray[np.bool_]:
    """``lung`` in ``box`` closed by a ball of ``radius_mm`` (distance transforms on the
    box grown by twice the radius): bays of the lung up to that size (a nodule on the
    pleura) are in it, the chest wall is not."""
    grow = [math.ceil(2 * radius_mm / s) + 1 for s in spacing]
    lo = [max(0, b.start - g) for b, g in zip(box, grow, strict=True)]
    hi = [min(n, b.stop + g) for b, g, n in zip(box, grow, lung.shape, strict=True)]
    big = lung[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    inner = tuple(slice(b.start - a, b.stop - a) for b, a in zip(box, lo, strict=True))
    if big.all() or not big.any():
        return np.array(big[inner], dtype=bool)
    dilated = np.asarray(ndimage.distance_transform_edt(~big, sampling=spacing)) <= radius_mm
    if dilated.all():
        return np.ones(big[inner].shape, dtype=bool)
    closed = np.asarray(ndimage.distance_transform_edt(dilated, sampling=spacing)) > radius_mm
    return np.asarray(closed[inner] | big[inner], dtype=bool)


def fwhm_mask(
    hu: FloatArray,
    spacing: Sequence[float],
    candidate: Candidate,
    *,
    lung: npt.NDArray[np.bool_] | None = None,
    max_radius_mm: float = 20.0,
    rim_hu: float = RIM_HU,
    rim_ratio: float = RIM_RATIO,
    far_background: bool = False,
) -> tuple[tuple[slice, slice, slice], npt.NDArray[np.bool_]]:
    """The nodule's mask in a box around the candidate: the half-maximum region.

    Voxels at or above half way between the core HU and the lung background inside a
    sphere of twice the fitted radius (at most ``max_radius_mm``) and inside the
    ``lung`` closed by a ball of 1.5 fitted radii (a nodule on the pleura is in it,
    the chest wall is not; no limit when ``lung`` is None), opened by a ball of half
    the fitted radius (a vessel crossing or leaving the nodule is cut off), face-
    connected to the centre (or to the largest part near it). A dense core (over
    ``rim_hu + 100``) may be the solid part of a part-solid nodule: when the region at
    half way between ``rim_hu`` (ground glass) and the background, within three fitted
    radii, under the same limits, holds at least ``rim_ratio`` times the half-maximum
    region, that wider region is the mask (a solid nodule's partial-volume shell adds
    less than that). With ``far_background`` (revision 3) the rim's level takes the
    lower of the background and the median HU beyond 2.5 fitted radii in the box: a
    core whose near background is ground glass gets the lung beyond as its own.
    """
    near = max(candidate.radius_mm, max(spacing))
    r = min(2.0 * candidate.radius_mm + max(spacing), max_radius_mm)
    wide = candidate.core_hu > rim_hu + DENSE_CORE_MARGIN_HU
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
    if lung is None:
        allowed = np.ones(sub.shape, dtype=bool)
    else:
        closing = CLOSING_RADII * candidate.radius_mm + max(spacing)
        allowed = closed_lung(lung, spacing, box, min(closing, MAX_CLOSING_MM))
    rho = OPENING_RADII * candidate.radius_mm
    level = 0.5 * (candidate.core_hu + candidate.background_hu)
    mask = _region(sub, dist, r, near, level, local, allowed, spacing, rho)
    if wide and mask.any():
        lung_hu = candidate.background_hu
        if far_background:
            far = sub[(dist >= 2.5 * candidate.radius_mm) & allowed]
            if far.size:
                lung_hu = min(lung_hu, float(np.median(far)))
        rim_level = 0.5 * (rim_hu + lung_hu)
        rim = _region(sub, dist, r_outer, near, rim_level, local, allowed, spacing, rho)
        if int(rim.sum()) >= rim_ratio * int(mask.sum()):
            mask = rim
    return box, mask


__all__ = [
    "CANDIDATE_CLOSING_MM",
    "CLOSING_GRID_MM",
    "CLOSING_RADII",
    "DEFAULT_SCALES_MM",
    "DEFAULT_WEIGHTS",
    "DENSE_CORE_MARGIN_HU",
    "FAR_SHELL",
    "FEATURES",
    "FEATURES_V3",
    "FLOOR",
    "MAX_CANDIDATES",
    "MAX_CANDIDATES_V3",
    "MAX_CLOSING_MM",
    "MIN_BLOBNESS",
    "OPENING_RADII",
    "RIM_HU",
    "RIM_RATIO",
    "RIM_RATIO_V3",
    "SHELLS",
    "SHELL_FEATURES",
    "Candidate",
    "CandidateSearch",
    "candidate_features",
    "candidate_features_v3",
    "check_trees",
    "closed_lung",
    "coarse_closed_lung",
    "find_candidates",
    "fit_weights",
    "fwhm_mask",
    "score",
    "search_candidates",
    "shell_features",
    "tree_scores",
    "truncation_warning",
]
