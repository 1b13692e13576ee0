"""Synthetic chest CT with exact ground truth: lungs, airways, vessels, nodules.

Each case is an axial CT series in Hounsfield units built slice by slice from
analytic shapes in patient coordinates (LPS, mm): an elliptical body with a fat
layer, ribs and a vertebra; two lungs (about -850 HU, denser posteriorly) with a
domed base and a tapered apex; the trachea and a branching bronchial tree (air
lumen, soft-tissue wall); branching vessel-like tubes (+40 HU) inside the lungs;
and nodules of known diameter, density and position -- solid (about +30 HU),
ground-glass (about -600 HU) and part-solid (ground-glass with a solid core).
Edges carry partial-volume blending, and every case has its own noise level,
field of view, pixel spacing and slice thickness. Some cases lose one interior
slice (as a PACS transfer sometimes does); the truth says which.

On disk (:func:`write_ct_cohort`)::

    DIR/cases.json                      one summary row per case
    DIR/<case>/series/IM0001.dcm ...    CT Image Storage, one file per slice
    DIR/<case>/lung.nii.gz              uint8, 1 = lung (parenchyma, vessels, nodules)
    DIR/<case>/nodules.nii.gz           uint8, k = nodule with "label" k in nodules.json
    DIR/<case>/airways.nii.gz           uint8, 1 = airway lumen
    DIR/<case>/nodules.json             per nodule: centre (mm and voxel), diameter, density, box
    DIR/<case>/case.json                geometry, UIDs, slice thickness, missing slices

The NIfTI masks cover the full acquisition grid (missing slices included); their
affine is the series affine (voxel ``(col, row, slice)`` -> LPS mm) converted to
NIfTI's RAS. Voxel coordinates in the JSON files are ``(col, row, slice)``
indices on that grid, slice 0 being the most inferior.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

from overread import __version__
from overread.errors import ConfigError

FloatArray = npt.NDArray[np.float32]

DENSITIES = ("solid", "part-solid", "ground-glass")
MIN_SIZE = 64
MAX_SIZE = 1024
MISSING_SLICE_RATE = 0.2  # fraction of cases that lose one interior slice
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass(frozen=True)
class Nodule:
    """One nodule: a sphere (part-solid: with a concentric solid core)."""

    label: int
    centre_mm: tuple[float, float, float]  # LPS
    diameter_mm: float
    density: str
    hu: float
    core_diameter_mm: float = 0.0
    core_hu: float = 0.0


@dataclass(frozen=True)
class Tube:
    """A straight cylinder with round ends (airway or vessel segment)."""

    start: tuple[float, float, float]
    end: tuple[float, float, float]
    radius: float
    generation: int = 0


@dataclass(frozen=True)
class CtAnatomy:
    """Every random choice of one case (the volume is a pure function of this)."""

    body_a: float  # body semi-axis left-right (mm)
    body_b: float  # anterior-posterior
    lung_cx: float  # lung centre |x| (right lung at -cx)
    lung_cy: float
    lung_ax: float
    lung_ay: float
    lung_base: float  # z of the diaphragm dome's lowest point (mm)
    lung_height: float
    lung_hu: float
    lung_gradient: float  # HU added from front to back of the lung
    airways: tuple[Tube, ...]
    vessels: tuple[Tube, ...]
    nodules: tuple[Nodule, ...]
    noise_hu: float


@dataclass(frozen=True)
class CtGeometry:
    """The acquisition grid: axial slices, rows posterior, columns to patient left."""

    size: int  # rows == columns
    pixel_spacing: float
    slice_thickness: float
    n_slices: int
    origin: tuple[float, float, float]  # centre of voxel (0, 0, 0), LPS mm

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """``affine @ (col, row, slice, 1)`` = LPS mm (the convention of ``Volume.affine``)."""
        a = np.eye(4)
        a[0, 0] = self.pixel_spacing
        a[1, 1] = self.pixel_spacing
        a[2, 2] = self.slice_thickness
        a[:3, 3] = self.origin
        return a

    def slice_z(self, k: int) -> float:
        return self.origin[2] + k * self.slice_thickness

    def to_voxel(self, point_mm: Sequence[float]) -> tuple[float, float, float]:
        v = np.linalg.solve(self.affine, np.array([*point_mm, 1.0]))
        return (float(v[0]), float(v[1]), float(v[2]))


@dataclass
class CtCase:
    """One rendered case: HU volume and masks ``(slices, rows, cols)``, truth, header."""

    name: str
    index: int
    seed: int
    geometry: CtGeometry
    anatomy: CtAnatomy
    hu: npt.NDArray[np.int16]
    lung: npt.NDArray[np.uint8]
    nodules: npt.NDArray[np.uint8]
    airways: npt.NDArray[np.uint8]
    missing_slices: list[int] = field(default_factory=list)

    def nodule_truth(self) -> list[dict[str, Any]]:
        """The nodules as JSON-ready dicts (centre, diameter, density, box in mm and voxels)."""
        return [nodule_record(n, self.geometry) for n in self.anatomy.nodules]


def nodule_record(nodule: Nodule, geometry: CtGeometry) -> dict[str, Any]:
    """A nodule as written to ``nodules.json``."""
    r = nodule.diameter_mm / 2
    centre = np.array(nodule.centre_mm)
    lo, hi = centre - r, centre + r
    vox = geometry.to_voxel(nodule.centre_mm)
    vlo, vhi = geometry.to_voxel(lo.tolist()), geometry.to_voxel(hi.tolist())
    return {
        "label": nodule.label,
        "density": nodule.density,
        "diameter_mm": round(nodule.diameter_mm, 3),
        "core_diameter_mm": round(nodule.core_diameter_mm, 3),
        "hu": round(nodule.hu, 1),
        "centre_mm": [round(v, 3) for v in nodule.centre_mm],
        "centre_voxel": [round(v, 3) for v in vox],
        "box_mm": {"min": [round(v, 3) for v in lo], "max": [round(v, 3) for v in hi]},
        "box_voxel": {"min": [round(v, 3) for v in vlo], "max": [round(v, 3) for v in vhi]},
    }


# ---- random anatomy ----------------------------------------------------------------------------


def _lung_sd(
    x: npt.NDArray[np.float64] | float,
    y: npt.NDArray[np.float64] | float,
    z: float,
    side: int,
    an: CtAnatomy,
) -> npt.NDArray[np.float64]:
    """Approximate signed distance (mm, > 0 inside) to one lung (side -1 right, +1 left)."""
    t = (z - an.lung_base) / an.lung_height
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    if t <= 0 or t >= 1:
        return np.full(np.broadcast(xa, ya).shape, -1e3)
    scale = min(1.0, math.sqrt((1.0 - t) / 0.4))  # tapered apex
    ax, ay = an.lung_ax * scale, an.lung_ay * scale
    q = np.sqrt(((xa - side * an.lung_cx) / ax) ** 2 + ((ya - an.lung_cy) / ay) ** 2)
    radial = (1.0 - q) * min(ax, ay)
    # The diaphragm dome: the base rises towards the lung's centre.
    dome = an.lung_base + 0.18 * an.lung_height * np.clip(1.0 - q**2, 0.0, 1.0)
    vertical = (z - dome) * 0.8
    top = (an.lung_base + an.lung_height - z) * 0.8
    return np.minimum(np.minimum(radial, vertical), top)


def _lung_sd_point(
    p: Sequence[float] | npt.NDArray[np.float64], an: CtAnatomy
) -> tuple[float, int]:
    """Signed distance of a point to the nearer lung, and that lung's side."""
    best, side_of = -1e9, 0
    for side in (-1, 1):
        d = float(_lung_sd(p[0], p[1], p[2], side, an))
        if d > best:
            best, side_of = d, side
    return best, side_of


def _random_lung_point(
    rng: np.random.Generator, an: CtAnatomy, side: int, margin: float, t_range: tuple[float, float]
) -> tuple[float, float, float] | None:
    for _ in range(200):
        x = side * an.lung_cx + rng.uniform(-1, 1) * an.lung_ax
        y = an.lung_cy + rng.uniform(-1, 1) * an.lung_ay
        z = an.lung_base + rng.uniform(*t_range) * an.lung_height
        if float(_lung_sd(x, y, z, side, an)) >= margin:
            return (float(x), float(y), float(z))
    return None


def _nodule_diameter(rng: np.random.Generator) -> float:
    bucket = rng.uniform()
    if bucket < 0.2:
        return float(rng.uniform(4.0, 6.0))
    if bucket < 0.75:
        return float(rng.uniform(6.0, 15.0))
    return float(rng.uniform(15.0, 28.0))


def sample_anatomy(rng: np.random.Generator, max_nodules: int = 4) -> CtAnatomy:
    """Draw one patient's anatomy (sizes in mm)."""
    body_a = float(rng.uniform(128, 148))
    body_b = float(rng.uniform(92, 112))
    lung_cx = 0.48 * body_a
    lung_ax = float(rng.uniform(0.30, 0.34)) * body_a
    lung_ay = float(rng.uniform(0.60, 0.66)) * body_b
    lung_cy = float(rng.uniform(-4, 4))
    lung_height = float(rng.uniform(170, 210))
    lung_base = 0.0
    partial = CtAnatomy(
        body_a=body_a,
        body_b=body_b,
        lung_cx=lung_cx,
        lung_cy=lung_cy,
        lung_ax=lung_ax,
        lung_ay=lung_ay,
        lung_base=lung_base,
        lung_height=lung_height,
        lung_hu=float(rng.uniform(-880, -830)),
        lung_gradient=float(rng.uniform(20, 70)),
        airways=(),
        vessels=(),
        nodules=(),
        noise_hu=float(rng.uniform(12, 30)),
    )
    # Airways: trachea down to the carina, main bronchi to each hilum, lobar bronchi.
    top = lung_base + lung_height + 40.0
    carina = (0.0, lung_cy - 0.15 * lung_ay, lung_base + 0.62 * lung_height)
    airways: list[Tube] = [Tube((0.0, carina[1], top), carina, float(rng.uniform(7, 9)), 0)]
    vessels: list[Tube] = []
    for side in (-1, 1):
        hilum = (
            side * (lung_cx - 0.45 * lung_ax),
            lung_cy + 0.05 * lung_ay,
            lung_base + 0.52 * lung_height,
        )
        airways.append(Tube(carina, hilum, float(rng.uniform(4.5, 5.5)), 1))
        for t_range in ((0.62, 0.85), (0.25, 0.5), (0.15, 0.4)):
            end = _random_lung_point(rng, partial, side, 12.0, t_range)
            if end is not None:
                airways.append(Tube(hilum, end, float(rng.uniform(2.0, 3.0)), 2))
        # Vessels: three generations branching out of the hilum.
        for _ in range(int(rng.integers(4, 7))):
            mid = _random_lung_point(rng, partial, side, 10.0, (0.15, 0.85))
            if mid is None:
                continue
            vessels.append(Tube(hilum, mid, float(rng.uniform(3.0, 4.2)), 1))
            for _ in range(int(rng.integers(2, 4))):
                end = _random_lung_point(rng, partial, side, 4.0, (0.05, 0.95))
                if end is None:
                    continue
                if np.linalg.norm(np.subtract(end, mid)) > 70:
                    half = np.add(mid, np.subtract(end, mid) * 0.5)
                    end = (float(half[0]), float(half[1]), float(half[2]))
                vessels.append(Tube(mid, end, float(rng.uniform(1.4, 2.4)), 2))
    n_nodules = 0 if rng.uniform() < 0.15 else int(rng.integers(1, max_nodules + 1))
    nodules: list[Nodule] = []
    attempts = 0
    while len(nodules) < n_nodules and attempts < 400:
        attempts += 1
        diameter = _nodule_diameter(rng)
        r = diameter / 2
        side = int(rng.choice([-1, 1]))
        centre = _random_lung_point(rng, partial, side, r + 3.0, (0.1, 0.9))
        if centre is None:
            continue
        if any(
            np.linalg.norm(np.subtract(centre, n.centre_mm)) < r + n.diameter_mm / 2 + 6
            for n in nodules
        ):
            continue
        surface = [np.add(centre, r * np.array(d)) for d in _directions()]
        if min(_lung_sd_point(p, partial)[0] for p in surface) < 1.5:
            continue
        u = rng.uniform()
        density = "solid" if u < 0.6 else ("part-solid" if u < 0.8 else "ground-glass")
        if density == "part-solid" and diameter < 6.0:
            density = "solid"
        if density == "solid":
            hu, core, core_hu = float(rng.uniform(10, 50)), 0.0, 0.0
        else:
            hu = float(rng.uniform(-650, -550))
            core = float(rng.uniform(0.35, 0.6)) * diameter if density == "part-solid" else 0.0
            core_hu = float(rng.uniform(0, 40)) if core else 0.0
        nodules.append(Nodule(len(nodules) + 1, centre, diameter, density, hu, core, core_hu))
    return CtAnatomy(
        **{
            **partial.__dict__,
            "airways": tuple(airways),
            "vessels": tuple(vessels),
            "nodules": tuple(nodules),
        }
    )


def _directions() -> list[tuple[float, float, float]]:
    out = []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            for dz in (-1, 0, 1):
                if dx or dy or dz:
                    n = math.sqrt(dx * dx + dy * dy + dz * dz)
                    out.append((dx / n, dy / n, dz / n))
    return out


def sample_geometry(
    rng: np.random.Generator,
    an: CtAnatomy,
    size: int,
    thickness: float | None = None,
) -> CtGeometry:
    """Field of view, spacing and slice thickness covering the lungs with a margin."""
    fov = float(rng.uniform(2 * an.body_a + 24, 2 * an.body_a + 50))
    spacing = round(fov / size, 4)
    if thickness is None:
        # About the pixel spacing, varied per case (2.1-3.4 mm at 128, 0.5-0.8 mm at 512).
        factor = float(rng.choice([0.8, 1.0, 1.2]))
        thickness = max(0.5, min(round(factor * fov / size, 1), 5.0))
    z0 = an.lung_base - float(rng.uniform(8, 14))
    z1 = an.lung_base + an.lung_height + float(rng.uniform(10, 18))
    n_slices = math.ceil((z1 - z0) / thickness) + 1
    offset = (float(rng.uniform(-6, 6)), float(rng.uniform(-6, 6)))
    origin = (
        -fov / 2 + spacing / 2 + offset[0],
        -fov / 2 + spacing / 2 + offset[1],
        z0,
    )
    return CtGeometry(size, spacing, float(thickness), n_slices, origin)


# ---- rendering ----------------------------------------------------------------------------------


def _frac(sd: npt.NDArray[np.float64], h: float) -> npt.NDArray[np.float64]:
    """Partial-volume fraction of a voxel of width ``h`` whose centre is ``sd`` mm inside."""
    return np.clip(sd / h + 0.5, 0.0, 1.0)


def _tube_sd_slice(
    tube: Tube,
    z: float,
    xs: npt.NDArray[np.float64],
    ys: npt.NDArray[np.float64],
    pad: float,
) -> tuple[slice, slice, npt.NDArray[np.float64]] | None:
    """Signed distance to a tube on one slice, in its bounding window (None: not on the slice)."""
    a, b = np.array(tube.start), np.array(tube.end)
    reach = tube.radius + pad
    if z < min(a[2], b[2]) - reach or z > max(a[2], b[2]) + reach:
        return None
    x_lo, x_hi = min(a[0], b[0]) - reach, max(a[0], b[0]) + reach
    y_lo, y_hi = min(a[1], b[1]) - reach, max(a[1], b[1]) + reach
    ci = np.nonzero((xs >= x_lo) & (xs <= x_hi))[0]
    ri = np.nonzero((ys >= y_lo) & (ys <= y_hi))[0]
    if ci.size == 0 or ri.size == 0:
        return None
    cs, rs = slice(int(ci[0]), int(ci[-1]) + 1), slice(int(ri[0]), int(ri[-1]) + 1)
    px = xs[cs][None, :]
    py = ys[rs][:, None]
    ab = b - a
    denom = float(ab @ ab) or 1e-9
    t = ((px - a[0]) * ab[0] + (py - a[1]) * ab[1] + (z - a[2]) * ab[2]) / denom
    t = np.clip(t, 0.0, 1.0)
    dx = px - (a[0] + t * ab[0])
    dy = py - (a[1] + t * ab[1])
    dz = z - (a[2] + t * ab[2])
    return rs, cs, tube.radius - np.sqrt(dx * dx + dy * dy + dz * dz)


def render_slice(
    an: CtAnatomy, geo: CtGeometry, k: int, rng: np.random.Generator
) -> tuple[FloatArray, npt.NDArray[np.uint8], npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """HU, lung mask, nodule label mask and airway mask of slice ``k``."""
    n = geo.size
    h = geo.pixel_spacing
    z = geo.slice_z(k)
    xs = geo.origin[0] + h * np.arange(n, dtype=np.float64)
    ys = geo.origin[1] + h * np.arange(n, dtype=np.float64)
    x, y = xs[None, :], ys[:, None]
    hu = np.full((n, n), -1000.0)
    # Body: soft tissue with a subcutaneous fat layer; ribs; a vertebra.
    rho = np.sqrt((x / an.body_a) ** 2 + (y / an.body_b) ** 2)
    body_sd = (1.0 - rho) * an.body_b
    body = _frac(body_sd, h)
    hu = hu * (1 - body) + 40.0 * body
    fat = _frac((rho - 0.93) * an.body_b, h) * body
    hu = hu * (1 - fat) + (-100.0) * fat
    rib_on = math.sin(2 * math.pi * z / 26.0) > 0.2
    if rib_on:
        ring = np.minimum((rho - 0.885) * an.body_b, (0.915 - rho) * an.body_b)
        angle = np.arctan2(y, x)
        lateral = np.abs(np.cos(angle)) > 0.25
        rib = _frac(ring, h) * lateral
        hu = hu * (1 - rib) + 600.0 * rib
    vert_c = (0.0, an.body_b * 0.62)
    vert_sd = 17.0 - np.sqrt((x - vert_c[0]) ** 2 + (y - vert_c[1]) ** 2)
    cortex = _frac(vert_sd, h)
    hu = hu * (1 - cortex) + 700.0 * cortex
    marrow = _frac(vert_sd - 2.5, h)
    hu = hu * (1 - marrow) + 250.0 * marrow
    # Lungs.
    lung_sd = np.maximum(_lung_sd(x, y, z, -1, an), _lung_sd(x, y, z, 1, an))
    lung_f = _frac(lung_sd, h)
    lung_hu = an.lung_hu + an.lung_gradient * np.clip((y - an.lung_cy) / an.lung_ay + 0.5, 0, 1)
    hu = hu * (1 - lung_f) + lung_hu * lung_f
    lung_mask = lung_sd >= 0
    # Vessels, only inside the lungs (the hilum itself is mediastinal soft tissue).
    for tube in an.vessels:
        got = _tube_sd_slice(tube, z, xs, ys, h)
        if got is None:
            continue
        rs, cs, sd = got
        f = _frac(sd, h) * lung_f[rs, cs]
        hu[rs, cs] = hu[rs, cs] * (1 - f) + 40.0 * f
    # Airways: soft-tissue wall, air lumen.
    airway_mask = np.zeros((n, n), dtype=bool)
    central = np.zeros((n, n), dtype=bool)
    for tube in an.airways:
        wall = Tube(tube.start, tube.end, tube.radius + 1.2, tube.generation)
        got = _tube_sd_slice(wall, z, xs, ys, h)
        if got is None:
            continue
        rs, cs, sd_wall = got
        sd_lumen = sd_wall - 1.2
        fw = _frac(sd_wall, h) * (lung_f[rs, cs] if tube.generation >= 2 else 1.0)
        hu[rs, cs] = hu[rs, cs] * (1 - fw) + 30.0 * fw
        fl = _frac(sd_lumen, h)
        hu[rs, cs] = hu[rs, cs] * (1 - fl) + (-1000.0) * fl
        airway_mask[rs, cs] |= sd_lumen >= 0
        if tube.generation <= 1:
            central[rs, cs] |= sd_lumen >= 0
    lung_mask &= ~central
    # Nodules.
    nodule_mask = np.zeros((n, n), dtype=np.uint8)
    for nod in an.nodules:
        cx, cy, cz = nod.centre_mm
        r = nod.diameter_mm / 2
        if abs(z - cz) > r + h:
            continue
        d = np.sqrt((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2)
        f = _frac(r - d, h)
        hu = hu * (1 - f) + nod.hu * f
        if nod.core_diameter_mm:
            fc = _frac(nod.core_diameter_mm / 2 - d, h)
            hu = hu * (1 - fc) + nod.core_hu * fc
        inside = (r - d) >= 0
        nodule_mask[inside] = nod.label
    lung_mask |= nodule_mask > 0
    airway_mask &= ~(nodule_mask > 0)
    hu = hu + rng.normal(0.0, an.noise_hu, size=hu.shape) * (hu > -990)
    hu = hu + rng.normal(0.0, 4.0, size=hu.shape)
    return (
        np.clip(hu, -1024, 3071).astype(np.float32),
        lung_mask.astype(np.uint8),
        nodule_mask,
        airway_mask.astype(np.uint8),
    )


def make_case(
    seed: int,
    index: int,
    *,
    size: int = 128,
    thickness: float | None = None,
    max_nodules: int = 4,
    missing_rate: float = MISSING_SLICE_RATE,
) -> CtCase:
    """Render case ``index`` of the cohort made with ``seed`` (deterministic)."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"CT phantom size must be {MIN_SIZE}..{MAX_SIZE}, got {size}")
    if thickness is not None and not 0.5 <= thickness <= 10.0:
        raise ConfigError(f"slice thickness must be 0.5..10 mm, got {thickness}")
    rng = np.random.default_rng([seed, index, 22])
    an = sample_anatomy(rng, max_nodules=max_nodules)
    geo = sample_geometry(rng, an, size, thickness)
    shape = (geo.n_slices, size, size)
    hu = np.empty(shape, dtype=np.int16)
    lung = np.empty(shape, dtype=np.uint8)
    nodules = np.empty(shape, dtype=np.uint8)
    airways = np.empty(shape, dtype=np.uint8)
    noise = np.random.default_rng([seed, index, 23])
    for k in range(geo.n_slices):
        s_hu, s_lung, s_nod, s_air = render_slice(an, geo, k, noise)
        hu[k] = np.round(s_hu).astype(np.int16)
        lung[k], nodules[k], airways[k] = s_lung, s_nod, s_air
    missing: list[int] = []
    if rng.uniform() < missing_rate and geo.n_slices > 10:
        missing.append(int(rng.integers(3, geo.n_slices - 3)))
    return CtCase(
        name=f"ct{index:04d}",
        index=index,
        seed=seed,
        geometry=geo,
        anatomy=an,
        hu=hu,
        lung=lung,
        nodules=nodules,
        airways=airways,
        missing_slices=missing,
    )


# ---- DICOM and truth files ----------------------------------------------------------------------


@dataclass(frozen=True)
class CtUids:
    patient_id: str
    study: str
    series: str
    frame_of_reference: str

    def sop(self, seed: int, index: int, k: int) -> str:
        return generate_uid(
            entropy_srcs=["overread-phantom-ct", str(seed), str(index), "sop", str(k)]
        )


def case_uids(seed: int, index: int) -> CtUids:
    base = ["overread-phantom-ct", str(seed), str(index)]
    patient = generate_uid(entropy_srcs=[*base, "patient"])
    return CtUids(
        patient_id=f"CT{int(patient.split('.')[-1]) % 10**10:010d}",
        study=generate_uid(entropy_srcs=[*base, "study"]),
        series=generate_uid(entropy_srcs=[*base, "series"]),
        frame_of_reference=generate_uid(entropy_srcs=[*base, "for"]),
    )


def slice_dataset(case: CtCase, k: int, uids: CtUids, instance: int, signed: bool) -> Dataset:
    """One CT Image Storage instance for slice ``k`` of ``case``."""
    geo = case.geometry
    rng = np.random.default_rng([case.seed, case.index, 24])
    date = dt.date(2025, 1, 1) + dt.timedelta(days=int(rng.integers(0, 365)))
    birth = dt.date(date.year - int(rng.integers(45, 85)), int(rng.integers(1, 13)), 15)
    sop = uids.sop(case.seed, case.index, k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"OVERREAD_{__version__}"[:16]
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    d = date.strftime("%Y%m%d")
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = d
    ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = "093000"
    ds.AccessionNumber = f"CTA{case.seed % 1000:03d}{case.index:05d}"
    ds.Modality = "CT"
    ds.Manufacturer = "overread phantom"
    ds.ManufacturerModelName = "CT phantom"
    ds.InstitutionName = "Phantom General Hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CT CHEST WITHOUT CONTRAST"
    ds.SeriesDescription = f"CHEST {geo.slice_thickness:g}mm"
    ds.PatientName = f"PHANTOM^CT{case.index:04d}"
    ds.PatientID = uids.patient_id
    ds.PatientBirthDate = birth.strftime("%Y%m%d")
    ds.PatientSex = "F" if rng.uniform() < 0.5 else "M"
    ds.BodyPartExamined = "CHEST"
    ds.SliceThickness = f"{geo.slice_thickness:g}"
    ds.SpacingBetweenSlices = f"{geo.slice_thickness:g}"
    ds.KVP = "120"
    ds.PatientPosition = "FFS"
    ds.StudyInstanceUID = uids.study
    ds.SeriesInstanceUID = uids.series
    ds.StudyID = f"{case.index + 1}"
    ds.SeriesNumber = 2
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = instance
    ds.FrameOfReferenceUID = uids.frame_of_reference
    ds.PositionReferenceIndicator = ""
    z = geo.slice_z(k)
    ds.ImagePositionPatient = [f"{geo.origin[0]:.4f}", f"{geo.origin[1]:.4f}", f"{z:.4f}"]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = f"{z:.4f}"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = geo.size
    ds.PixelSpacing = [f"{geo.pixel_spacing:.4f}", f"{geo.pixel_spacing:.4f}"]
    ds.BitsAllocated = 16
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    hu = case.hu[k]
    if signed:
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "0"
        stored = hu.astype("<i2")
    else:
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = "-1024"
        stored = np.clip(hu.astype(np.int32) + 1024, 0, 4095).astype("<u2")
    ds.WindowCenter = "-600"
    ds.WindowWidth = "1500"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds


def _nifti(mask: npt.NDArray[np.uint8], geo: CtGeometry, path: Path) -> None:
    import nibabel as nib

    data = np.ascontiguousarray(mask.transpose(2, 1, 0))  # (col, row, slice)
    nifti: Any = nib.Nifti1Image
    img: Any = nifti(data, LPS_TO_RAS @ geo.affine)
    img.header.set_xyzt_units("mm")
    img.set_qform(LPS_TO_RAS @ geo.affine, code=1)
    img.set_sform(LPS_TO_RAS @ geo.affine, code=1)
    nib.save(img, str(path))


def read_mask(path: str | Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """A truth mask as ``(slices, rows, cols)`` and its LPS affine (``Volume.affine`` convention)."""
    import nibabel as nib

    img: Any = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.uint8).transpose(2, 1, 0)
    return np.ascontiguousarray(data), LPS_TO_RAS @ np.asarray(img.affine, dtype=np.float64)


def write_case(case: CtCase, out: Path) -> dict[str, Any]:
    """Write one case under ``out/<case>/``; returns its summary row."""
    folder = out / case.name
    series = folder / "series"
    series.mkdir(parents=True, exist_ok=True)
    uids = case_uids(case.seed, case.index)
    signed = bool(case.index % 2)
    geo = case.geometry
    written = 0
    # Instance numbers run head to feet, as most scanners number an axial chest series.
    for instance, k in enumerate(range(geo.n_slices - 1, -1, -1), start=1):
        if k in case.missing_slices:
            continue
        ds = slice_dataset(case, k, uids, instance, signed)
        ds.save_as(series / f"IM{instance:04d}.dcm", enforce_file_format=True)
        written += 1
    _nifti(case.lung, geo, folder / "lung.nii.gz")
    _nifti(case.nodules, geo, folder / "nodules.nii.gz")
    _nifti(case.airways, geo, folder / "airways.nii.gz")
    nodules = case.nodule_truth()
    (folder / "nodules.json").write_text(json.dumps(nodules, indent=1) + "\n")
    info = {
        "case": case.name,
        "seed": case.seed,
        "index": case.index,
        "patient_id": uids.patient_id,
        "study_instance_uid": uids.study,
        "series_instance_uid": uids.series,
        "frame_of_reference_uid": uids.frame_of_reference,
        "shape": [geo.n_slices, geo.size, geo.size],
        "pixel_spacing_mm": geo.pixel_spacing,
        "slice_thickness_mm": geo.slice_thickness,
        "affine_lps": [[round(v, 6) for v in row] for row in geo.affine.tolist()],
        "slices_written": written,
        "missing_slices": list(case.missing_slices),
        "missing_slice_z_mm": [round(geo.slice_z(k), 4) for k in case.missing_slices],
        "pixel_representation": int(signed),
        "noise_hu": round(case.anatomy.noise_hu, 2),
        "nodules": len(nodules),
    }
    (folder / "case.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


@dataclass
class CtCohortSummary:
    out_dir: Path
    cases: int
    nodules: int
    missing: int
    seconds: float


def write_ct_cohort(
    out: str | Path,
    n: int,
    seed: int,
    *,
    size: int = 128,
    thickness: float | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CtCohortSummary:
    """Render and write ``n`` cases (see the module docstring for the layout)."""
    if n < 1:
        raise ConfigError(f"--n must be >= 1, got {n}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"--size must be {MIN_SIZE}..{MAX_SIZE}, got {size}")
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = []
    for i in range(n):
        case = make_case(seed, i, size=size, thickness=thickness)
        rows.append(write_case(case, root))
        if progress is not None:
            progress(i + 1, n)
    (root / "cases.json").write_text(json.dumps(rows, indent=1) + "\n")
    return CtCohortSummary(
        out_dir=root,
        cases=n,
        nodules=sum(r["nodules"] for r in rows),
        missing=sum(1 for r in rows if r["missing_slices"]),
        seconds=time.perf_counter() - start,
    )


__all__ = [
    "DENSITIES",
    "CtCase",
    "CtGeometry",
    "Nodule",
    "make_case",
    "read_mask",
    "write_case",
    "write_ct_cohort",
]
