"""Parenchymal and pleural findings: how each changes the attenuation map.

Each renderer returns a :class:`FindingLayer`:

* ``fill`` (0..1) replaces lung air with fluid or tissue, so an opacity can be
  no denser than soft tissue of the same depth (a consolidated lung looks like
  the heart, as it should);
* ``add`` adds attenuation directly (pleural fluid, calcified plaques, air);
* ``markings`` multiplies the lung markings (0 where there is no lung, as
  lateral to a pneumothorax's pleural line);
* ``mask`` is the exact ground-truth region on the internal grid.

Severity (0..1) sets size and density; geometry comes from the finding's own
seed, so a finding is in the same place whether or not others are rendered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from overread.findings import Finding
from overread.phantom.anatomy import ChestFields, Field, smooth_noise
from overread.phantom.spec import FindingSpec


@dataclass
class FindingLayer:
    """What one finding does to the image, on the internal grid."""

    mask: Field
    fill: Field | None = None
    add: Field | None = None
    markings: Field | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


def _side(spec: FindingSpec, rng: np.random.Generator) -> int:
    return spec.side if spec.side in (-1, 1) else int(rng.choice([-1, 1]))


def lung_point(
    fields: ChestFields,
    rng: np.random.Generator,
    side: int,
    v_range: tuple[float, float],
    lateral_range: tuple[float, float] = (0.15, 0.85),
    margin: float = 0.02,
) -> tuple[float, float]:
    """A random patient-frame point well inside the visible lung on ``side``."""
    grid = fields.grid
    eroded = ndimage.binary_erosion(fields.lungs, iterations=max(1, int(margin * grid.scale)))
    shape = fields.shape
    u, v = 0.5 + side * 0.2, 0.5
    for _ in range(40):
        v = rng.uniform(*v_range)
        frac = rng.uniform(*lateral_range)
        adx = 0.06 + frac * (shape.lung_half_width - 0.06)
        u = 0.5 + side * adx
        col, row = grid.to_pixel(u, v)
        r, c = int(row), int(col)
        if 0 <= r < grid.rows and 0 <= c < grid.cols and eroded[r, c]:
            return u, v
    return u, v


def _blob(
    fields: ChestFields, u: float, v: float, radius: float, rough: Field, edge: float
) -> Field:
    """Soft-edged irregular blob: 1 inside, falling to 0 over ``edge`` radii."""
    grid = fields.grid
    d = np.sqrt((grid.u - u) ** 2 + (grid.v - v) ** 2) / radius
    out: Field = np.clip((1.0 + 0.35 * rough - d) / edge, 0.0, 1.0)
    return out


def render_lesion(spec: FindingSpec, fields: ChestFields) -> FindingLayer:
    """Lung nodule(s) or a mass: round, well-defined, lobulated opacities."""
    rng = np.random.default_rng(spec.seed)
    s = spec.severity
    mass = "mass" in spec.kinds or s > 0.7
    count = 1 if mass or rng.random() < 0.7 else int(rng.integers(2, 4))
    grid = fields.grid
    fill = np.zeros_like(grid.u)
    radii = []
    for _ in range(count):
        side = _side(spec, rng) if count == 1 else int(rng.choice([-1, 1]))
        u, v = lung_point(fields, rng, side, (0.22, fields.shape.dome_right - 0.08), margin=0.03)
        radius = (0.034 + 0.045 * s) if mass else (0.016 + 0.022 * s)
        radii.append(radius)
        theta = np.arctan2(grid.v - v, grid.u - u)
        lobes = int(rng.integers(3, 7))
        rough = 0.25 * np.sin(lobes * theta + rng.uniform(0, 6.3))
        fill = np.maximum(fill, _blob(fields, u, v, radius, rough * 0.5, 0.18))
    density = 0.8 + 0.25 * s
    fill *= fields.hemithorax
    return FindingLayer(
        mask=fill > 0.3,
        fill=fill * density,
        attributes={"kind": "mass" if mass else "nodule", "count": count, "radius": max(radii)},
    )


def render_consolidation(spec: FindingSpec, fields: ChestFields) -> FindingLayer:
    """A dense, homogeneous, ill-marginated patch with air bronchograms."""
    rng = np.random.default_rng(spec.seed)
    s = spec.severity
    side = _side(spec, rng)
    grid = fields.grid
    u, v = lung_point(fields, rng, side, (0.35, fields.shape.dome_right - 0.06), (0.2, 0.75))
    radius = 0.045 + 0.07 * s
    rough = smooth_noise(rng, grid.rows, grid.cols, 16)
    aspect = rng.uniform(0.75, 1.3)
    d = np.sqrt(((grid.u - u) / (radius * aspect)) ** 2 + ((grid.v - v) * aspect / radius) ** 2)
    blob = np.clip((1.0 + 0.55 * rough - d) / 0.45, 0.0, 1.0) ** 0.8
    # Air bronchograms: dark branching tubes inside the opacity.
    du, dv = grid.u - (0.5 + side * 0.08), grid.v - 0.42
    r = np.sqrt(du * du + dv * dv)
    theta = np.arctan2(dv, du * side)
    bronch = np.zeros_like(r)
    base = float(np.arctan2(v - 0.42, abs(u - 0.5 - side * 0.08)))
    for k in range(4):
        a = base + rng.uniform(-0.35, 0.35) + 0.05 * k
        bronch = np.maximum(bronch, np.exp(-(((theta - a) * r / 0.0045) ** 2)))
    fill = blob * (0.72 + 0.26 * s) * (1.0 - 0.3 * bronch * (blob > 0.8))
    return FindingLayer(mask=(blob > 0.35) & fields.lungs, fill=fill, attributes={"side": side})


LOBES = ("upper", "lower")


def render_pneumonia(spec: FindingSpec, fields: ChestFields) -> FindingLayer:
    """Lobar pneumonia: mottled airspace opacity bounded by a fissure."""
    rng = np.random.default_rng(spec.seed)
    s = spec.severity
    side = _side(spec, rng)
    lobe = spec.kinds[0] if spec.kinds and spec.kinds[0] in LOBES else str(rng.choice(LOBES))
    grid = fields.grid
    fissure = 0.43 + rng.uniform(-0.02, 0.02) + 0.05 * (grid.adx - 0.2)
    on_side = grid.side == side
    if lobe == "upper":
        region = on_side & (grid.v < fissure)
        extent = np.clip((fissure - grid.v) / (0.1 + 0.25 * s), 0.0, 1.0)
    else:
        region = on_side & (grid.v > fissure + 0.06)
        extent = np.clip((grid.v - fissure - 0.06) / 0.05, 0.0, 1.0) * np.clip(
            (grid.adx - 0.05) / (0.08 + 0.1 * (1 - s)), 0.0, 1.0
        )
    mottle = smooth_noise(rng, grid.rows, grid.cols, 30)
    coverage = 0.35 + 0.6 * s
    patch = np.clip((mottle * 0.5 + 0.5) - (1.0 - coverage), 0.0, 0.5) * 2.0
    patch = ndimage.gaussian_filter(patch, 0.006 * grid.scale)
    fill = region * extent * np.clip(0.35 + patch, 0.0, 1.0) * (0.5 + 0.4 * s)
    fill = ndimage.gaussian_filter(fill, 0.004 * grid.scale)
    return FindingLayer(
        mask=(fill > 0.2) & fields.lungs,
        fill=fill,
        attributes={"side": side, "lobe": lobe},
    )


def render_edema(spec: FindingSpec, fields: ChestFields) -> FindingLayer:
    """Bilateral perihilar ("bat wing") haze with Kerley B lines at the bases."""
    rng = np.random.default_rng(spec.seed)
    s = spec.severity
    grid = fields.grid
    lw = fields.shape.lung_half_width
    rho = 0.13 + 0.09 * s
    r2 = np.minimum(
        (grid.u - (0.5 - 0.1)) ** 2 + ((grid.v - 0.43) * 0.8) ** 2,
        (grid.u - (0.5 + 0.1)) ** 2 + ((grid.v - 0.43) * 0.8) ** 2,
    )
    haze = (0.38 + 0.47 * s) * np.exp(-r2 / (rho * rho))
    haze *= 0.85 + 0.15 * smooth_noise(rng, grid.rows, grid.cols, 20)
    kerley = np.zeros_like(grid.u)
    n_lines = int(5 + 10 * s)
    for side in (-1, 1):
        for _ in range(n_lines):
            v = rng.uniform(0.52, fields.shape.dome_right - 0.01)
            length = rng.uniform(0.015, 0.03)
            adx_end = float(np.interp(v, [0.0, 1.0], [lw, lw])) - rng.uniform(0.0, 0.01)
            on = (grid.side == side) & (grid.adx > adx_end - length) & (grid.adx < adx_end)
            kerley = np.maximum(kerley, on * np.exp(-(((grid.v - v) / 0.0035) ** 2)))
    fill = np.clip(haze + 0.6 * kerley, 0.0, 1.0)
    return FindingLayer(
        mask=((haze > 0.15) | (kerley > 0.3)) & fields.lungs,
        fill=fill,
        markings=1.0 + 0.8 * s * (grid.v < 0.4),
        attributes={"kerley_lines": 2 * n_lines},
    )


def render_atelectasis(spec: FindingSpec, fields: ChestFields) -> FindingLayer:
    """Plate-like (discoid) atelectasis at a base; lobar collapse when severe.

    Volume loss (a raised hemidiaphragm) is applied to the geometry by the
    renderer before this is called.
    """
    rng = np.random.default_rng(spec.seed)
    s = spec.severity
    side = _side(spec, rng)
    grid = fields.grid
    dome = fields.shape.dome_right if side < 0 else fields.shape.dome_left
    u, v = lung_point(fields, rng, side, (0.5, dome - 0.05), (0.25, 0.7), margin=0.02)
    angle = np.deg2rad(rng.uniform(-18, 18))
    along = (grid.u - u) * np.cos(angle) + (grid.v - v) * np.sin(angle)
    across = -(grid.u - u) * np.sin(angle) + (grid.v - v) * np.cos(angle)
    half_len = 0.06 + 0.07 * s
    thick = 0.006 + 0.01 * s
    band = np.exp(-((across / thick) ** 2)) * np.clip((half_len - np.abs(along)) / 0.02, 0.0, 1.0)
    fill = band * 0.95
    if s > 0.55:
        # Lobar collapse: a triangular density against the mediastinum ("sail").
        apex_v = v - 0.12
        t = np.clip((grid.v - apex_v) / (dome - apex_v), 0.0, 1.0)
        width = 0.02 + (0.05 + 0.06 * s) * t
        tri = (grid.side == side) & (grid.adx < 0.07 + width) & (grid.v > apex_v) & (grid.v < dome)
        fill = np.maximum(fill, tri * (0.5 + 0.3 * s) * np.clip((grid.adx - 0.04) / 0.03, 0, 1))
    return FindingLayer(
        mask=(fill > 0.25) & fields.lungs,
        fill=fill,
        attributes={"side": side, "lobar": bool(s > 0.55)},
    )


def render_opacity(spec: FindingSpec, fields: ChestFields) -> FindingLayer:
    """A generic ill-defined (ground-glass) opacity not otherwise specified."""
    rng = np.random.default_rng(spec.seed)
    s = spec.severity
    side = _side(spec, rng)
    grid = fields.grid
    u, v = lung_point(fields, rng, side, (0.25, 0.65), (0.2, 0.8))
    rough = smooth_noise(rng, grid.rows, grid.cols, 10)
    blob = _blob(fields, u, v, 0.06 + 0.06 * s, rough, 0.6)
    fill = blob * (0.35 + 0.35 * s)
    return FindingLayer(mask=(blob > 0.3) & fields.lungs, fill=fill, attributes={"side": side})


def render_pneumothorax(spec: FindingSpec, fields: ChestFields) -> FindingLayer:
    """Air in the pleural space: a visible pleural line, no markings beyond it."""
    rng = np.random.default_rng(spec.seed)
    s = spec.severity
    side = _side(spec, rng)
    grid = fields.grid
    shape = fields.shape
    on_side = (grid.side == side) & fields.hemithorax
    depth = 0.04 + 0.13 * s
    dome = shape.dome_right if side < 0 else shape.dome_left
    taper = np.clip(1.0 - 0.7 * (grid.v - shape.apex) / (dome - shape.apex), 0.25, 1.0)
    inner_lateral = fields.lateral - depth * taper
    inner_top = shape.apex + depth * 0.9 + 2.6 * (grid.adx - 0.16) ** 2
    collapsed = on_side & (grid.adx < inner_lateral) & (grid.v > inner_top)
    space = on_side & ~collapsed & ~fields.heart & ~fields.mediastinum
    edge = collapsed & ~ndimage.binary_erosion(collapsed)
    edge &= ~fields.heart & ~fields.mediastinum
    edge &= ndimage.binary_dilation(space, iterations=2)
    line = ndimage.gaussian_filter(edge.astype(np.float32), 0.6)
    add = -0.2 * space + 0.7 * line
    fill = collapsed * (0.1 + 0.15 * s) * fields.lungs
    markings = np.where(space, 0.0, 1.0)
    return FindingLayer(
        mask=space,
        fill=fill,
        add=add,
        markings=markings,
        attributes={"side": side, "depth": round(depth, 4)},
    )


def render_effusion(spec: FindingSpec, fields: ChestFields) -> FindingLayer:
    """Dependent pleural fluid: blunted costophrenic angle and a meniscus."""
    rng = np.random.default_rng(spec.seed)
    s = spec.severity
    sides = (-1, 1) if spec.side == 0 and rng.random() < 0.45 else (_side(spec, rng),)
    grid = fields.grid
    shape = fields.shape
    fill = np.zeros_like(grid.u)
    mask = np.zeros(grid.u.shape, dtype=bool)
    heights = []
    for side in sides:
        dome = shape.dome_right if side < 0 else shape.dome_left
        cpa = dome + 0.26 * 0.55**2  # costophrenic angle height
        height = (0.05 + 0.3 * s) * rng.uniform(0.85, 1.1)
        heights.append(height)
        lateral = fields.lateral
        # Meniscus: highest against the chest wall, curving down medially.
        meniscus = 0.09 * (1.0 - np.exp(-np.clip(lateral - grid.adx, 0.0, None) / 0.045))
        level = cpa - height + meniscus
        region = (
            (grid.side == side)
            & (grid.adx < lateral)
            & (grid.adx > 0.04)
            & (grid.v > level)
            & (grid.v < fields.dome + 0.004)
        )
        f = np.clip((grid.v - level) / 0.05, 0.0, 1.0) ** 1.5 * region
        fill = np.maximum(fill, f * (0.88 + 0.12 * s))
        mask |= region & (f > 0.2) & ~fields.heart & ~fields.mediastinum
    return FindingLayer(
        mask=mask,
        fill=fill,
        add=0.15 * ndimage.gaussian_filter(fill, 0.004 * grid.scale),
        attributes={"sides": list(sides), "height": round(max(heights), 4)},
    )


def render_pleural_other(spec: FindingSpec, fields: ChestFields) -> FindingLayer:
    """Pleural thickening along the chest wall and calcified plaques."""
    rng = np.random.default_rng(spec.seed)
    s = spec.severity
    side = _side(spec, rng)
    grid = fields.grid
    lateral = fields.lateral
    v0 = rng.uniform(0.28, 0.4)
    v1 = v0 + 0.15 + 0.2 * s
    thick = 0.014 + 0.02 * s
    inside = lateral - grid.adx
    band = (
        (grid.side == side)
        & (inside > -0.004)
        & (inside < thick)
        & (grid.v > v0)
        & (grid.v < v1)
        & fields.hemithorax
    )
    bandf = ndimage.gaussian_filter(band.astype(np.float32), 0.8)
    plaques = np.zeros_like(grid.u)
    for _ in range(int(2 + 3 * s)):
        pv = rng.uniform(v0, v1)
        pu = 0.5 + side * (float(np.interp(pv, grid.v[:, 0], lateral[:, 0])) - 0.02)
        rough = 0.3 * np.sin(5 * np.arctan2(grid.v - pv, grid.u - pu) + rng.uniform(0, 6))
        plaques = np.maximum(
            plaques,
            np.clip(
                1.0 + rough - np.sqrt(((grid.u - pu) / 0.014) ** 2 + ((grid.v - pv) / 0.028) ** 2),
                0,
                1,
            ),
        )
    add = 0.7 * bandf + 0.95 * plaques
    return FindingLayer(
        mask=(bandf > 0.3) | (plaques > 0.2),
        add=add,
        attributes={"side": side},
    )


RENDERERS: dict[str, Callable[[FindingSpec, ChestFields], FindingLayer]] = {
    Finding.LUNG_LESION.value: render_lesion,
    Finding.CONSOLIDATION.value: render_consolidation,
    Finding.PNEUMONIA.value: render_pneumonia,
    Finding.EDEMA.value: render_edema,
    Finding.ATELECTASIS.value: render_atelectasis,
    Finding.LUNG_OPACITY.value: render_opacity,
    Finding.PNEUMOTHORAX.value: render_pneumothorax,
    Finding.PLEURAL_EFFUSION.value: render_effusion,
    Finding.PLEURAL_OTHER.value: render_pleural_other,
}
