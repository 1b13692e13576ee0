"""Patient anatomy and the chest geometry a radiograph is rendered from.

A chest radiograph is a projection: every pixel records how much the beam was
attenuated along one ray. The phantom therefore builds an *attenuation map*
(line integral of the attenuation coefficient, dimensionless) on a coarse
internal grid: soft tissue whose thickness follows an elliptical body cross
section, air-filled lungs that subtract from it, the heart and mediastinum
that the lungs do not overlap, and bones that add to it. Findings then add
(fluid, masses, devices) or subtract (pleural air) attenuation.

Coordinates are normalised to the image height: ``v`` runs 0 (top) to 1
(bottom) and ``u`` runs left to right with the image centre at 0.5. Images are
displayed in the radiological convention, so the patient's left (heart side)
is on the image right (``side = +1``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image
from scipy import ndimage

Field = npt.NDArray[Any]

#: Soft-tissue attenuation at the thickest part of an average chest.
SOFT_TISSUE = 2.3
#: How much attenuation the air in a full-depth lung removes.
LUNG_AIR = 1.2
#: Extra attenuation of the heart over the surrounding mediastinal soft tissue.
HEART_EXTRA = 0.2
#: Cortical bone of a rib seen edge-on.
RIB_BONE = 0.42


@dataclass(frozen=True)
class PatientAnatomy:
    """The body of one phantom patient; the same in every study of that patient.

    Parameters
    ----------
    seed
        Seeds the patient's lung-marking texture, so it is identical in every study.
    sex
        ``"M"`` or ``"F"`` (breast shadows for ``"F"``).
    lung_half_width
        Half the inner thoracic width at the diaphragm, in image heights.
    apex
        Height of the lung apices.
    diaphragm
        Height of the right hemidiaphragm dome at average inspiration.
    heart_ctr
        Cardiothoracic ratio of the healthy heart (<= 0.46, so that even an AP
        magnified heart stays below 0.5).
    mediastinum_half_width
        Half width of the upper mediastinum.
    body_thickness
        Soft-tissue thickness factor (habitus).
    rib_spacing
        Vertical distance between consecutive posterior ribs.
    breast
        Breast-shadow strength (0 for men).
    """

    seed: int
    sex: str
    lung_half_width: float
    apex: float
    diaphragm: float
    heart_ctr: float
    mediastinum_half_width: float
    body_thickness: float
    rib_spacing: float
    breast: float


@dataclass(frozen=True)
class Positioning:
    """How the patient stood for one study: varies between studies of a patient."""

    view: str = "PA"
    rotation_deg: float = 0.0
    shift_u: float = 0.0
    shift_v: float = 0.0
    inspiration: float = 0.0  # -1 poor ... +1 deep; moves the diaphragm


def sample_anatomy(rng: np.random.Generator, sex: str, age: int) -> PatientAnatomy:
    """Draw a plausible adult chest for a patient of the given sex and age."""
    male = sex == "M"
    size = rng.normal(1.0, 0.04) * (1.03 if male else 0.97)
    return PatientAnatomy(
        seed=int(rng.integers(0, 2**31 - 1)),
        sex=sex,
        lung_half_width=float(np.clip(0.355 * size, 0.32, 0.395)),
        apex=float(rng.uniform(0.095, 0.13)),
        diaphragm=float(rng.uniform(0.68, 0.73) + (0.01 if age > 70 else 0.0)),
        heart_ctr=float(rng.uniform(0.38, 0.46)),
        mediastinum_half_width=float(rng.uniform(0.055, 0.068)),
        body_thickness=float(np.clip(rng.normal(1.0, 0.1), 0.8, 1.3)),
        rib_spacing=float(rng.uniform(0.052, 0.06)),
        breast=0.0 if male else float(rng.uniform(0.3, 1.0)),
    )


def sample_positioning(rng: np.random.Generator, view: str) -> Positioning:
    """Draw the positioning of one study (small rotation, shift and inspiration)."""
    return Positioning(
        view=view,
        rotation_deg=float(rng.normal(0.0, 1.6)),
        shift_u=float(rng.normal(0.0, 0.012)),
        shift_v=float(rng.normal(0.0, 0.01)),
        inspiration=float(np.clip(rng.normal(0.0, 0.45) - (0.3 if view == "AP" else 0.0), -1, 1)),
    )


@dataclass(frozen=True)
class ChestShape:
    """The scalar geometry of one rendering, after findings that reshape anatomy."""

    lung_half_width: float
    apex: float
    dome_right: float
    dome_left: float
    heart_half_width: float
    heart_half_height: float
    heart_centre_v: float
    mediastinum_half_width: float
    mediastinum_widening: float = 0.0  # extra half width of the upper mediastinum

    @property
    def ctr(self) -> float:
        """Cardiothoracic ratio: widest heart over widest inner thorax."""
        return self.heart_half_width / self.lung_half_width


def chest_shape(anatomy: PatientAnatomy, positioning: Positioning) -> ChestShape:
    """The healthy geometry of ``anatomy`` as positioned in one study."""
    magnify = 1.05 if positioning.view == "AP" else 1.0
    dome = anatomy.diaphragm - 0.03 * positioning.inspiration
    hw = anatomy.heart_ctr * anatomy.lung_half_width * magnify
    return ChestShape(
        lung_half_width=anatomy.lung_half_width,
        apex=anatomy.apex + (0.015 if positioning.view == "AP" else 0.0),
        dome_right=dome,
        dome_left=dome + 0.02,
        heart_half_width=hw,
        heart_half_height=0.17 * (1 + 0.3 * (hw / anatomy.lung_half_width - 0.43)),
        heart_centre_v=dome - 0.055,
        mediastinum_half_width=anatomy.mediastinum_half_width * magnify,
    )


def with_ctr(shape: ChestShape, ctr: float) -> ChestShape:
    """``shape`` with the heart resized to the given cardiothoracic ratio."""
    hw = ctr * shape.lung_half_width
    return replace(shape, heart_half_width=hw, heart_half_height=0.17 * (1 + 0.6 * (ctr - 0.43)))


class Grid:
    """Normalised patient-frame coordinates of every internal pixel.

    Parameters
    ----------
    rows, cols
        Internal grid size.
    positioning
        Rotation and shift applied to the patient (the grid rotates, not the body).
    """

    def __init__(self, rows: int, cols: int, positioning: Positioning) -> None:
        self.rows = rows
        self.cols = cols
        y = (np.arange(rows, dtype=np.float32) + 0.5) / rows
        x = (np.arange(cols, dtype=np.float32) + 0.5 - cols / 2) / rows + 0.5
        xx, yy = np.meshgrid(x, y)
        theta = np.deg2rad(positioning.rotation_deg)
        self._cos, self._sin = float(np.cos(theta)), float(np.sin(theta))
        self._shift = (positioning.shift_u, positioning.shift_v)
        c, s = np.float32(self._cos), np.float32(self._sin)
        self.u: Field = 0.5 + (xx - 0.5) * c + (yy - 0.5) * s - positioning.shift_u
        self.v: Field = 0.5 - (xx - 0.5) * s + (yy - 0.5) * c - positioning.shift_v
        self.dx: Field = self.u - 0.5
        self.adx: Field = np.abs(self.dx)
        self.side: Field = np.where(self.dx >= 0, 1.0, -1.0).astype(np.float32)
        #: Pixels per image height: converts normalised lengths to pixels.
        self.scale = float(rows)

    def to_pixel(self, u: float, v: float) -> tuple[float, float]:
        """Internal pixel (col, row), continuous, of a patient-frame point (u, v)."""
        big_u = u + self._shift[0] - 0.5
        big_v = v + self._shift[1] - 0.5
        x = big_u * self._cos - big_v * self._sin
        y = big_u * self._sin + big_v * self._cos + 0.5
        return x * self.rows + self.cols / 2, y * self.rows


def lung_lateral(shape: ChestShape, v: Field) -> Field:
    """Half width of the lung's lateral (chest wall) border at height ``v``."""
    t = np.clip((v - shape.apex) / 0.4, 0.0, 1.0)
    return shape.lung_half_width * (0.86 + 0.14 * np.sqrt(t))


def lung_top(shape: ChestShape, adx: Field) -> Field:
    """Height of the apical lung border at distance ``adx`` from the midline."""
    return shape.apex + 2.6 * (adx - 0.16) ** 2


def dome_height(shape: ChestShape, grid: Grid) -> Field:
    """Height of the diaphragm surface under each pixel (right dome higher)."""
    lw = shape.lung_half_width
    base = np.where(grid.side < 0, shape.dome_right, shape.dome_left)
    return base + 0.26 * ((grid.adx - 0.45 * lw) / lw) ** 2


def mediastinum_half(shape: ChestShape, v: Field, side: Field) -> Field:
    """Half width of the mediastinum at height ``v`` (aortic knob on the left)."""
    knob = 0.018 * np.exp(-(((v - 0.27) / 0.035) ** 2)) * (side > 0)
    widen = shape.mediastinum_widening * np.exp(-(((v - 0.3) / 0.11) ** 2))
    return shape.mediastinum_half_width + knob + widen


def heart_field(shape: ChestShape, grid: Grid) -> Field:
    """Normalised radius inside the heart ellipse (< 1 inside)."""
    hw = shape.heart_half_width
    cu = 0.5 + 0.3 * hw
    return np.sqrt(
        ((grid.u - cu) / hw) ** 2 + ((grid.v - shape.heart_centre_v) / shape.heart_half_height) ** 2
    )


@dataclass
class ChestFields:
    """Per-pixel anatomy on the internal grid, shared by the finding renderers."""

    grid: Grid
    shape: ChestShape
    hemithorax: Field  # bool: inside the thoracic cage above the diaphragm (ignores heart)
    lungs: Field  # bool: visible lung field
    lung_depth: Field  # float 0..1: relative air thickness
    heart: Field  # bool
    mediastinum: Field  # bool
    dome: Field  # float: diaphragm height under each pixel
    body: Field  # float: soft-tissue thickness 0..1
    lateral: Field  # float: lateral lung border half width at each row


def chest_fields(grid: Grid, shape: ChestShape) -> ChestFields:
    """Masks and depth maps of the thorax for ``shape`` on ``grid``."""
    v, adx = grid.v, grid.adx
    lateral = lung_lateral(shape, v)
    dome = dome_height(shape, grid)
    hemithorax = (adx < lateral) & (v > lung_top(shape, adx)) & (v < dome)
    hr = heart_field(shape, grid)
    heart = (hr < 1.0) & (v < dome)
    medi = (adx < mediastinum_half(shape, v, grid.side)) & (v < shape.heart_centre_v)
    lungs = hemithorax & ~heart & ~medi
    sigma = 0.022 * grid.scale
    depth = ndimage.gaussian_filter(lungs.astype(np.float32), sigma, mode="constant", truncate=2.5)
    depth *= 0.72 + 0.4 * np.clip((v - shape.apex) / 0.5, 0.0, 1.0)
    depth *= lungs | (depth > 0.05)
    bw = np.interp(
        v,
        [0.0, 0.05, 0.17, 0.32, 1.0],
        [0.085, 0.1, 0.47, shape.lung_half_width + 0.075, shape.lung_half_width + 0.095],
    )
    body = np.sqrt(np.clip(1.0 - (adx / bw) ** 2, 0.0, 1.0))
    return ChestFields(
        grid=grid,
        shape=shape,
        hemithorax=hemithorax,
        lungs=lungs,
        lung_depth=depth.astype(np.float32),
        heart=heart,
        mediastinum=medi,
        dome=dome,
        body=body.astype(np.float32),
        lateral=lateral,
    )


def smooth_noise(rng: np.random.Generator, rows: int, cols: int, cells: int) -> Field:
    """Smooth random field in about [-1, 1] with about ``cells`` blobs across the image."""
    coarse = rng.uniform(-1.0, 1.0, size=(cells + 1, cells + 1)).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((cols, rows), Image.Resampling.BICUBIC)
    out: Field = np.asarray(img, dtype=np.float32)
    return out


def lung_markings(fields: ChestFields, seed: int) -> Field:
    """Bronchovascular markings: branching streaks radiating from each hilum.

    Built in polar coordinates around the hila: a random 1-D profile over angle,
    wiggled with distance, gives radial streaks that fade towards the periphery
    (the outer third of a normal lung shows almost no markings).
    """
    rng = np.random.default_rng(seed)
    grid = fields.grid
    out = np.zeros_like(grid.u)
    for side in (-1.0, 1.0):
        hu = 0.5 + side * (0.075 + 0.1 * fields.shape.lung_half_width)
        hv = 0.41
        du = grid.u - hu
        dv = grid.v - hv
        r = np.sqrt(du * du + dv * dv)
        theta = np.arctan2(dv, du * side)
        streak = np.zeros_like(r)
        for n_lines, width, amp in ((28, 2.2, 1.0), (60, 1.6, 0.55)):
            angles = np.sort(rng.uniform(-np.pi, np.pi, n_lines))
            profile_x = np.linspace(-np.pi, np.pi, 720, dtype=np.float32)
            profile = np.zeros_like(profile_x)
            for a in angles:
                d = np.angle(np.exp(1j * (profile_x - a)))
                profile += np.exp(-((d * 40.0 / width) ** 2)).astype(np.float32)
            wig = 0.12 * np.sin(r * rng.uniform(25, 40) + rng.uniform(0, 6.28))
            streak += amp * np.interp(theta + wig, profile_x, profile)
        fade = np.exp(-r / 0.16) * np.clip((r - 0.015) / 0.03, 0.0, 1.0)
        out += np.where(grid.side == side, streak * fade, 0.0)
    return (out * fields.lung_depth).astype(np.float32)
