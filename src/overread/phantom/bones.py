"""Ribs, clavicles and spine, with optional rib fractures.

Bones are drawn as bands around analytic centre lines. A rib seen in a
radiograph is a tube: the beam crosses more bone at its edges (the cortex)
than through its middle, so each band gets a brighter rim. Each rib's centre
line is a function ``v = f(adx)``, so the vertical distance to it is a good
enough distance, and a fracture is simply a gap and a vertical step in that
function past the fracture point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from overread.phantom.anatomy import RIB_BONE, ChestFields, Field


@dataclass(frozen=True)
class RibFracture:
    """A fracture of one posterior rib.

    Parameters
    ----------
    side
        -1 patient right (image left), +1 patient left.
    rib
        Index of the posterior rib, 0 = first visible rib below the clavicle.
    position
        Where along the rib, as a fraction of the lung half width from the spine.
    step
        Vertical displacement of the lateral fragment, in rib thicknesses.
    gap
        Width of the cortical break, in image heights.
    callus
        Strength of a healing callus around the fracture (0 = acute fracture).
    """

    side: int
    rib: int
    position: float
    step: float
    gap: float
    callus: float


def _rows_for(fields: ChestFields, v_min: float, v_max: float) -> slice:
    """Rows of the internal grid that can hold heights ``v_min..v_max`` (any rotation)."""
    rows = fields.grid.rows
    lo = max(0, int((v_min - 0.06) * rows))
    hi = min(rows, int((v_max + 0.06) * rows) + 1)
    return slice(lo, hi)


def _tube(dist: Field, half: float) -> Field:
    """Projected attenuation of a bone tube at distance ``dist`` from its axis."""
    x = np.clip(np.abs(dist) / half, 0.0, 1.0)
    solid = np.sqrt(1.0 - x * x)
    rim = np.exp(-(((x - 0.82) / 0.16) ** 2))
    out: Field = (0.45 * solid + 0.75 * rim) * (x < 1.0)
    return out


def posterior_rib_base(fields: ChestFields, index: int) -> float:
    """Height of posterior rib ``index`` where it leaves the spine."""
    return fields.shape.apex + 0.005 + index * rib_spacing_of(fields)


def rib_spacing_of(fields: ChestFields) -> float:
    """Rib spacing: ribs spread with the distance from apex to diaphragm."""
    return (fields.shape.dome_right - fields.shape.apex) * 0.112


def rib_point(fields: ChestFields, index: int, side: int, position: float) -> tuple[float, float]:
    """Patient-frame (u, v) of a point on posterior rib ``index`` (for fractures)."""
    lw = fields.shape.lung_half_width
    adx = 0.03 + position * lw
    t = position
    v = posterior_rib_base(fields, index) + 0.1 * t * t - 0.025 * np.sin(np.pi * min(t, 1.0))
    return 0.5 + side * adx, float(v)


def render_bones(
    fields: ChestFields, fractures: tuple[RibFracture, ...] = (), anterior: bool = True
) -> Field:
    """Attenuation added by ribs, clavicles and spine."""
    grid = fields.grid
    out = np.zeros_like(grid.u)
    lw = fields.shape.lung_half_width
    # Image processing equalises the dense mediastinum: ribs show less through it.
    behind = (fields.heart | fields.mediastinum).astype(np.float32)
    see_through = 1.0 - 0.55 * ndimage.gaussian_filter(behind, 0.01 * grid.scale)
    half = 0.0105
    n_ribs = 10
    for index in range(n_ribs):
        base = posterior_rib_base(fields, index)
        rows = _rows_for(fields, base - 0.03, base + 0.09)
        v = grid.v[rows]
        adx = grid.adx[rows]
        side = grid.side[rows]
        t = (adx - 0.03) / lw
        centre = base + 0.1 * t * t - 0.025 * np.sin(np.pi * np.clip(t, 0.0, 1.0))
        within = np.clip((t + 0.02) / 0.04, 0.0, 1.0) * np.clip((1.12 - t) / 0.05, 0.0, 1.0)
        gap_keep = np.ones_like(v)
        callus = np.zeros_like(v)
        for fx in fractures:
            if fx.rib != index:
                continue
            on_side = side == fx.side
            beyond = on_side & (t > fx.position)
            centre = centre + np.where(beyond, fx.step * 2 * half, 0.0)
            gap = np.abs(t - fx.position) * lw < fx.gap
            gap_keep = np.where(on_side & gap, 0.0, gap_keep)
            if fx.callus > 0:
                cu, cv = rib_point(fields, index, fx.side, fx.position)
                d2 = ((grid.u[rows] - cu) / (4.5 * half)) ** 2 + ((v - cv) / (2.8 * half)) ** 2
                callus += fx.callus * 1.0 * np.exp(-d2) * on_side
        medial = 0.35 + 0.65 * np.clip((t - 0.12) / 0.2, 0.0, 1.0)
        profile = _tube(v - centre, half) * within * gap_keep * medial
        out[rows] += RIB_BONE * (profile * see_through[rows] + callus)
        if anterior and index < 7:
            # Anterior rib: from the lateral end of the posterior rib, down and medially;
            # fainter, and invisible medially where it becomes cartilage.
            lateral_v = base + 0.1 * 1.1**2
            arow = _rows_for(fields, lateral_v - 0.02, lateral_v + 0.2)
            va = grid.v[arow]
            ta = (grid.adx[arow] - 0.03) / lw
            a_centre = lateral_v + 0.17 * np.clip(1.08 - ta, 0.0, None) ** 1.3
            fade = np.clip((ta - 0.3) / 0.35, 0.0, 1.0) * np.clip((1.1 - ta) / 0.05, 0.0, 1.0)
            out[arow] += (
                0.55 * RIB_BONE * _tube(va - a_centre, 0.85 * half) * fade * see_through[arow]
            )
    # Clavicles: from the sternal notch out and slightly up to the shoulder.
    crow = _rows_for(fields, 0.05, 0.2)
    v = grid.v[crow]
    adx = grid.adx[crow]
    t = (adx - 0.04) / 0.27
    c_centre = fields.shape.apex + 0.06 - 0.055 * t + 0.012 * np.sin(2 * np.pi * t)
    out[crow] += 1.2 * RIB_BONE * _tube(v - c_centre, 0.013) * ((t > 0) & (t < 1.05))
    # Spine: vertebral bodies with end plates, seen faintly through the mediastinum.
    dx = grid.dx
    body = _tube(dx, 0.032)
    period = rib_spacing_of(fields)
    phase = (grid.v - fields.shape.apex) / period
    plates = 0.6 + 0.4 * np.cos(2 * np.pi * phase) ** 8
    pedicles = np.exp(-(((np.abs(dx) - 0.022) / 0.006) ** 2)) * np.exp(
        -(((phase - np.round(phase)) / 0.18) ** 2)
    )
    out += (
        0.45 * RIB_BONE * (body * plates + 0.6 * pedicles) * np.clip((grid.v - 0.1) / 0.1, 0.0, 1.0)
    )
    out *= np.clip(fields.body / 0.25, 0.0, 1.0)  # no bone outside the body
    return out.astype(np.float32)
