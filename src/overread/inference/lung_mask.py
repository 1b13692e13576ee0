"""The ``classical`` lung mask of the volumetric pipeline (``volume.lung_refine``).

A lung segmentation as clinical CAD pipelines make it from Hounsfield units, in two
steps that keep memory bounded by the network's grid and one source slice:

* on the network's grid (``spacing_mm``, from the resampled HU): the **large
  airways** (:func:`large_airways`: air darker than ``airway_hu``, opened by a ball of
  ``airway_min_radius_mm`` so that only the trachea and the main bronchi are left,
  the components reaching the first or last slice) are taken out of the lung before
  its components are kept; the kept lung's **holes are filled**
  (:func:`fill_lung_holes`): in 3-D (vessels and nodules inside the lung), and slice
  by slice (vessels at the hilum, which touch the mediastinum through the bronchial
  wall in 3-D) but for the wide part (opened by a ball of ``lung_hole_open_mm``) of
  slice-wise holes wider than ``lung_hole_max_mm2`` in a slice: the dome of the
  diaphragm, soft tissue ringed by lung in the lowest slices but open below;
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


def _ball(radius_mm: float, spacing: Sequence[float]) -> BoolArray:
    """An ellipsoid of ``radius_mm`` in voxels of ``spacing`` (at least one voxel a side)."""
    radius = [max(1, round(radius_mm / float(step))) for step in spacing]
    zz, yy, xx = np.ogrid[
        -radius[0] : radius[0] + 1, -radius[1] : radius[1] + 1, -radius[2] : radius[2] + 1
    ]
    ball = (zz / radius[0]) ** 2 + (yy / radius[1]) ** 2 + (xx / radius[2]) ** 2 <= 1.0
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
    the lung holds, go), its components reaching the first or the last slice (the
    trachea leaves the scan at the top) and those within :data:`BRIDGE_VOXELS` of
    them (the main bronchi past the carina), grown by one voxel (the lumen's edge, which
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
    labels, _ = ndimage.label(core)
    ends = np.unique(np.concatenate([labels[0].ravel(), labels[-1].ravel()]))
    ends = ends[ends > 0]
    if ends.size == 0:
        return np.zeros_like(core)
    trunk = np.isin(labels, ends)
    # The main bronchi leave the trachea at the carina, where partial volume can break
    # the lumen for a slice or two: components within BRIDGE_VOXELS of it join it.
    near = np.unique(labels[ndimage.binary_dilation(trunk, iterations=BRIDGE_VOXELS)])
    trunk = np.isin(labels, near[near > 0])
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
    ``open_mm``) whose 3-D component is wider than ``max_hole_mm2`` in some slice:
    the dome of the diaphragm, soft tissue ringed by lung in the lowest slices but
    open below; the vessels touching it are thin, so they are still filled.
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
    wide = ndimage.binary_opening(holes, structure=_ball(open_mm, spacing))
    labels, count = ndimage.label(wide)
    del wide
    widest = np.zeros(count + 1, dtype=np.int64)
    for plane in labels:
        np.maximum(widest, np.bincount(plane.ravel(), minlength=count + 1), out=widest)
    pixel_mm2 = float(spacing[1]) * float(spacing[2])
    reject = np.flatnonzero(widest * pixel_mm2 > max_hole_mm2)
    reject = reject[reject > 0]
    if reject.size:
        holes &= ~np.isin(labels, reject)
    return filled | holes


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


__all__ = ["fill_lung_holes", "large_airways", "source_lung_plane"]
