"""The ``classical`` lung mask of the volumetric pipeline (``volume.lung_refine``).

A lung segmentation as clinical CAD pipelines make it from Hounsfield units, in two
steps that keep memory bounded by the network's grid and one source slice:

* on the network's grid (``spacing_mm``, from the resampled HU): the **large
  airways** (:func:`large_airways`: air darker than ``airway_hu``, opened by a ball of
  ``airway_min_radius_mm`` so that only the trachea and the main bronchi are left,
  the components reaching the top slice or tubes reaching the bottom one, and the
  main bronchi past a break at the carina) are taken out of the lung before its components are kept
  (:func:`airway_warning` when they are an implausible share of it); the kept lung's
  **holes are filled** (:func:`fill_lung_holes`): in 3-D (vessels and nodules inside
  the lung), and slice by slice (vessels at the hilum, which touch the mediastinum
  through the bronchial wall in 3-D) but for the wide part (opened by a ball of
  ``lung_hole_open_mm``) of the dome of the diaphragm, soft tissue ringed by lung in
  the lowest slices but open below, decided per 2-D hole (:func:`_dome`) and kept
  to where a ball of :data:`DOME_BALL_MM` rolling inside the holes from below
  reaches (:func:`_rolled`), so that a nodule resting on the dome (its apex, side or
  shoulder; thick enough to hold a ball of :data:`NODULE_BALL_MM`) stays lung;
* on the source grid, one slice at a time (:func:`source_lung_plane`): the lung
  brought back is grown, within one voxel of the network's grid around it, by the
  voxels of the source slice at or below ``lung_source_hu`` (about half way between
  aerated lung and soft tissue: the partial-volume boundary of the source grid, not
  of the 2 mm grid), except inside the large airways.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage

BoolArray = npt.NDArray[np.bool_]

#: Gap (voxels of the network's grid) across which a large airway's lumen joins the trachea.
BRIDGE_VOXELS = 3

#: A bridged piece may be this many times as wide in a slice as the trunk piece it
#: touches (an oblique main bronchus, cut along its length, is wider than the trachea).
BRIDGE_WIDTH_TOLERANCE = 2.0

#: A piece of air leaving the scan at its bottom slice is the trachea only when no
#: slice of it is wider (mm²) than this: a 30 mm tube (gas of the stomach or colon is wider).
TRUNK_MAX_MM2 = 710.0

#: Radius (mm) of the ball that rolls inside the dome of the diaphragm from below: the
#: dome is the part of the wide slice-wise holes it reaches, so a nodule resting on the
#: dome (narrower than the ball) stays lung.
DOME_BALL_MM = 12.0

#: Radius (mm) of a ball that the part of the dome the rolling ball misses must hold to
#: stay lung (a nodule on the dome), not the dome's thin rim or tip.
NODULE_BALL_MM = 2.5

#: Large airways holding more than this fraction of lung plus airways are implausible
#: (the trachea and main bronchi are a few per cent of it): the series is warned about.
AIRWAY_MAX_FRACTION = 0.1


#: The slice direction is axial when its z component (LPS, head-wards) is at least this
#: share of its length (45 degrees from the body's long axis).
AXIAL_MIN_COSINE = 0.5**0.5


def head_last(affine: npt.NDArray[np.float64]) -> bool | None:
    """Whether the slices of a volume with ``affine`` (``affine @ (col, row, slice, 1)``
    in LPS mm) run from the feet to the head (True: the order :func:`large_airways` and
    :func:`fill_lung_holes` assume), from the head to the feet (False: flip the slices
    before them and the results back), or None when the series is not axial (its slice
    direction is not mostly along the body's long axis: the rules do not apply)."""
    direction = np.asarray(affine, dtype=np.float64)[:3, 2]
    length = float(np.linalg.norm(direction))
    if not np.isfinite(length) or length == 0.0:
        return None
    cosine = float(direction[2]) / length
    if abs(cosine) < AXIAL_MIN_COSINE:
        return None
    return cosine > 0.0


def _ball(radius_mm: float, spacing: Sequence[float]) -> BoolArray:
    """The voxels of ``spacing`` whose centres lie within ``radius_mm`` mm of the
    centre (a metric ellipsoid: ``(z sz)^2 + (y sy)^2 + (x sx)^2 <= r^2``); the centre
    voxel alone when ``radius_mm`` is below every step."""
    extent = [int(np.floor(radius_mm / float(step) + 1e-9)) for step in spacing]
    zz, yy, xx = np.ogrid[
        -extent[0] : extent[0] + 1, -extent[1] : extent[1] + 1, -extent[2] : extent[2] + 1
    ]
    sz, sy, sx = (float(step) for step in spacing)
    ball = (zz * sz) ** 2 + (yy * sy) ** 2 + (xx * sx) ** 2 <= radius_mm**2 + 1e-9
    return np.asarray(ball, dtype=bool)


def large_airways(
    hu: npt.NDArray[np.float32],
    spacing: Sequence[float],
    *,
    airway_hu: float,
    min_radius_mm: float,
) -> BoolArray:
    """The trachea and main bronchi on a grid of ``spacing`` mm: see the module.

    Air at or below ``airway_hu`` not connected to the in-plane sides (the air around
    the patient), opened by an ellipsoid of ``min_radius_mm`` (smaller bronchi, which
    the lung holds, go), its components reaching the top (last) slice (the trachea
    enters from the neck) or reaching the bottom slice no wider than
    :data:`TRUNK_MAX_MM2` in any slice, and those within :data:`BRIDGE_VOXELS`
    slices of them along z (one voxel in-plane) and no wider in a slice than
    :data:`BRIDGE_WIDTH_TOLERANCE` times the piece they touch (the main bronchi past a
    break at the carina), grown by one voxel (the lumen's edge, which
    the opening rounds off and partial volume greys, and the wall).
    """
    air = hu <= airway_hu
    if not air.any():
        return air
    labels, _ = ndimage.label(air)
    sides = np.unique(
        np.concatenate(
            [
                labels[:, 0, :].ravel(),
                labels[:, -1, :].ravel(),
                labels[:, :, 0].ravel(),
                labels[:, :, -1].ravel(),
            ]
        )
    )
    air &= ~np.isin(labels, sides[sides > 0])
    del labels
    core = np.asarray(ndimage.binary_opening(air, structure=_ball(min_radius_mm, spacing)), bool)
    if not core.any():
        return core
    labels, count = ndimage.label(core)
    index = np.arange(1, count + 1)
    # Per component, its widest slice (pixels) and whether it reaches an end slice.
    widest = np.zeros(count + 1, dtype=np.int64)
    for plane in labels:
        np.maximum(widest, np.bincount(plane.ravel(), minlength=count + 1), out=widest)
    widest[0] = 0
    # The trachea enters from the neck at the top (last) slice; a piece leaving the
    # scan at the bottom (first) slice is the trachea only when it is a tube, no wider
    # than TRUNK_MAX_MM2 in any slice (gas of the stomach or colon is wider).
    pixel_mm2 = float(spacing[1]) * float(spacing[2])
    ends = np.zeros(count + 1, dtype=bool)
    ends[np.unique(labels[0])] = True
    ends &= widest * pixel_mm2 <= TRUNK_MAX_MM2
    ends[np.unique(labels[-1])] = True
    ends[0] = False
    if not ends.any():
        return np.zeros_like(core)
    trunk = ends[labels]
    # The main bronchi leave the trachea at the carina, where partial volume can break
    # the lumen for a slice or two: a component within BRIDGE_VOXELS slices of a trunk
    # piece along z and one voxel in-plane (below or above it, not beside it) joins it
    # when it is a tube no wider in any slice than BRIDGE_WIDTH_TOLERANCE times the
    # widest slice of the trunk piece it touches (an oblique bronchus is cut longer
    # than the trachea): air a few millimetres beside a bronchus (emphysema, a bulla)
    # stays lung.
    along_z = np.zeros((3, 1, 1), dtype=bool)
    along_z[:, 0, 0] = True
    width = np.where(trunk, widest[labels], 0)
    reach = ndimage.grey_dilation(width, footprint=np.ones((3, 3, 3), dtype=bool))
    for _ in range(BRIDGE_VOXELS - 1):
        reach = ndimage.grey_dilation(reach, footprint=along_z)
    reach[trunk] = 0
    allowed = np.zeros(count + 1, dtype=np.int64)
    allowed[index] = np.asarray(ndimage.maximum(reach, labels, index), dtype=np.int64)
    join = ~ends & (allowed > 0) & (widest <= BRIDGE_WIDTH_TOLERANCE * allowed)
    join[0] = False
    if join.any():
        trunk |= join[labels]
    return np.asarray(ndimage.binary_dilation(trunk), dtype=bool)


def fill_lung_holes(
    lung: BoolArray,
    spacing: Sequence[float],
    *,
    max_hole_mm2: float,
    open_mm: float,
    airway: BoolArray | None = None,
) -> BoolArray:
    """``lung`` with its holes filled in 3-D, and slice by slice but for wide holes.

    A voxel in a hole of its slice that is not in a hole in 3-D (a vessel at the
    hilum, which reaches the mediastinum through the bronchial wall) is filled unless
    it lies in the wide part of such holes (their opening by an ellipsoid of
    ``open_mm``) that :func:`_dome` calls the dome (per 2-D hole: wider than
    ``max_hole_mm2``, or narrowing away from such a hole) and a ball of
    :data:`DOME_BALL_MM` rolling inside them from below reaches (:func:`_rolled`):
    soft tissue ringed by lung in the lowest slices but open below; the vessels
    touching it are thin, and a nodule resting on it is narrower than the ball, so
    they are still filled.
    ``airway`` (the large airways) is never filled.
    """
    if not lung.any():
        return lung
    filled = np.asarray(ndimage.binary_fill_holes(lung), dtype=bool)
    holes = np.zeros_like(lung)
    for z, plane in enumerate(lung):
        if plane.any():
            holes[z] = ndimage.binary_fill_holes(plane)
    holes &= ~filled
    if airway is not None:
        filled &= ~airway
        holes &= ~airway
    if not holes.any():
        return filled
    wide = np.asarray(ndimage.binary_opening(holes, structure=_ball(open_mm, spacing)), bool)
    pixel_mm2 = float(spacing[1]) * float(spacing[2])
    dome = _dome(wide, max_hole_mm2 / pixel_mm2)
    del wide
    if dome.any():
        # What the ball does not reach is lung only where it is thick (a nodule on the
        # dome), not the thin rim or tip of the dome the ball cannot fit into.
        off = dome & ~_rolled(holes, lung, spacing)
        dome &= ~_opened(off, NODULE_BALL_MM, spacing)
    holes &= ~dome
    return filled | holes


def _box(mask: BoolArray, margin: Sequence[int]) -> tuple[slice, ...]:
    """The bounding box of ``mask`` grown by ``margin`` voxels per axis, within the array."""
    box = []
    for axis, (size, extra) in enumerate(zip(mask.shape, margin, strict=True)):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        where = np.flatnonzero(mask.any(axis=other))
        box.append(slice(max(0, int(where[0]) - extra), min(size, int(where[-1]) + 1 + extra)))
    return tuple(box)


def _margin(radius_mm: float, spacing: Sequence[float]) -> list[int]:
    """A ball of ``radius_mm`` in voxels of ``spacing`` per axis, plus one."""
    return [int(np.ceil(radius_mm / float(step))) + 1 for step in spacing]


def _opened(mask: BoolArray, radius_mm: float, spacing: Sequence[float]) -> BoolArray:
    """``mask`` opened by a ball of ``radius_mm`` (metric, through Euclidean distance
    transforms; the volume's sides do not erode it), computed in the bounding box of
    ``mask`` grown by the ball (within the array: the same result, at a fraction of
    the memory and time of the whole grid)."""
    out = np.zeros_like(mask)
    if not mask.any():
        return out
    box = _box(mask, _margin(radius_mm, spacing))
    part = mask[box]
    sampling = [float(step) for step in spacing]
    core = np.asarray(ndimage.distance_transform_edt(part, sampling=sampling)) > radius_mm
    if not core.any():
        return out
    near = np.asarray(ndimage.distance_transform_edt(~core, sampling=sampling)) <= radius_mm
    out[box] = near & part
    return out


def _rolled(holes: BoolArray, lung: BoolArray, spacing: Sequence[float]) -> BoolArray:
    """The voxels of ``holes`` that a ball of :data:`DOME_BALL_MM` reaches rolling
    inside them from below (the opening of the holes, extended down through the soft
    tissue under them, by the ball): the dome's broad curve, not a nodule on its
    apex, side or shoulder, which is narrower than the ball (metric, through
    Euclidean distance transforms; in the holes' in-plane bounding box grown by the
    ball, which holds the extended holes)."""
    out = np.zeros_like(holes)
    if not holes.any():
        return out
    margin = _margin(DOME_BALL_MM, spacing)
    rows, cols = _box(holes, [0, margin[1], margin[2]])[1:]
    top = min(len(holes), int(np.flatnonzero(holes.any(axis=(1, 2)))[-1]) + 1 + margin[0])
    box = (slice(0, top), rows, cols)
    part = holes[box]
    solid = part.copy()
    wall = lung[box]
    for z in range(len(solid) - 2, -1, -1):
        solid[z] |= solid[z + 1] & ~wall[z]
    pad = margin[0]
    solid = np.concatenate([np.repeat(solid[:1], pad, axis=0), solid])
    out[box] = _opened(solid, DOME_BALL_MM, spacing)[pad:] & part
    return out


def _dome(wide: BoolArray, max_pixels: float) -> BoolArray:
    """The dome in ``wide`` (the opened slice-wise holes), decided per 2-D hole.

    A hole of a slice wider than ``max_pixels`` is the dome; so is a hole overlapping
    a dome hole of the next slice up or down that is no wider than it (the dome
    narrows away from its base). A nodule resting on the dome widens away from it, so
    its slices stay holes (and lung) though the opening joins it to the dome in 3-D.
    """
    planes = [ndimage.label(plane) for plane in wide]
    areas = [np.bincount(labels.ravel(), minlength=n + 1) for labels, n in planes]
    # Per slice, the area of the dome hole each pixel lies in (0: not the dome).
    dome = [
        np.where(labels > 0, area[labels], 0) * (area[labels] > max_pixels)
        for (labels, _), area in zip(planes, areas, strict=True)
    ]
    for order in (range(1, len(planes)), range(len(planes) - 2, -1, -1)):
        for z in order:
            labels, n = planes[z]
            if n == 0:
                continue
            prev = z - 1 if order.step == 1 else z + 1
            below = dome[prev]
            if not below.any():
                continue
            reach = np.zeros(n + 1, dtype=np.int64)
            np.maximum.at(reach, labels.ravel(), below.ravel())
            grow = (reach > 0) & (areas[z] <= reach) & (np.arange(n + 1) > 0)
            if grow.any():
                dome[z] = np.maximum(dome[z], np.where(grow[labels], areas[z][labels], 0))
    return np.stack([plane > 0 for plane in dome])


def airway_warning(airway: BoolArray | None, lung: BoolArray) -> str | None:
    """A warning when ``airway`` (the large airways) is an implausible share of
    ``lung`` plus it (over :data:`AIRWAY_MAX_FRACTION`: air the opening joined to the
    trachea, e.g. emphysema or a wide bulla); None otherwise. Only the airway within
    the lung's in-plane bounding box of each slice counts (not gas below the lung)."""
    if airway is None:
        return None
    inside = np.zeros_like(airway)
    for z, plane in enumerate(lung):
        rows, cols = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
        if rows.size:
            box = (z, slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
            inside[box] = airway[box]
    volume = int(inside.sum())
    total = volume + int((lung & ~airway).sum())
    if volume == 0 or volume <= AIRWAY_MAX_FRACTION * total:
        return None
    return (
        f"the large airways found are {100.0 * volume / total:.1f}% of the lung and airways "
        f"(expected under {100.0 * AIRWAY_MAX_FRACTION:.1f}%): emphysema or a bulla joined to "
        "the trachea may have been left out of the lung"
    )


def source_lung_plane(
    lung: npt.NDArray[np.float32],
    level: float,
    airway: npt.NDArray[np.float32] | None,
    hu: npt.NDArray[np.float32],
    source_hu: float,
) -> BoolArray:
    """One source slice of the lung: see the module.

    ``lung`` is the lung channel brought back to this slice (lung from ``level``),
    ``airway`` the large airways brought back (0 to 1), ``hu`` the slice's HU.
    """
    out = lung >= level
    grow = (lung > 0.0) & (hu <= source_hu)
    if airway is not None:
        grow &= airway <= 0.0
        out &= airway < 0.5
    return np.asarray(out | grow, dtype=bool)


__all__ = [
    "AIRWAY_MAX_FRACTION",
    "AXIAL_MIN_COSINE",
    "BRIDGE_VOXELS",
    "BRIDGE_WIDTH_TOLERANCE",
    "DOME_BALL_MM",
    "NODULE_BALL_MM",
    "TRUNK_MAX_MM2",
    "airway_warning",
    "fill_lung_holes",
    "head_last",
    "large_airways",
    "source_lung_plane",
]
