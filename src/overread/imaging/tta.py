"""Test-time augmentation: seeded views of a preprocessed model-input batch.

A model that is unsure of an image often changes its answer when the image is
moved a little: test-time augmentation (TTA) runs it on several slightly altered
copies and keeps every answer, so their mean is the prediction and their spread
is one measure of uncertainty (:mod:`overread.explain.uncertainty`).

The views are small: a rotation, a zoom and a shift (patient positioning), a
gamma and a contrast change (exposure and processing), all on the preprocessed
``(N, C, H, W)`` batch in ``[0, 1]``. A left-right flip is **off by default**: on a
chest film it moves the heart to the right, an image no one acquires (situs
inversus aside), so it is allowed only where a package's anatomy is symmetric and
says so (``horizontal_flip``).

Every view's parameters come from ``numpy.random.default_rng((seed, view))``
alone: view ``k`` of an image is the same whatever the batch, the batch position or
the process, and view 0 is always the unaltered image.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from overread.errors import ConfigError


@dataclass(frozen=True)
class ViewParameters:
    """One view's transform: angle (radians), scale, shifts (fraction of the half
    side, as ``affine_grid`` counts), gamma, contrast, and whether it is flipped."""

    angle: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    gamma: float = 1.0
    contrast: float = 1.0
    flip: bool = False

    @property
    def is_identity(self) -> bool:
        """True when the view leaves the image unchanged."""
        return self == ViewParameters()


@dataclass(frozen=True)
class TestTimeAugmentation:
    """How many views to make and how far each may move from the original.

    Parameters
    ----------
    views
        Views per image, the original included (1: the original only).
    seed
        Seed of every view's parameters.
    max_rotate_deg
        Largest rotation either way, in degrees.
    max_scale
        Largest zoom either way, as a fraction (0.05: 0.95-1.05).
    max_shift
        Largest shift either way, as a fraction of the image side.
    max_gamma
        Largest |log gamma| (0.15: gamma 0.86-1.16).
    max_contrast
        Largest contrast change either way, as a fraction, about each image's mean.
    horizontal_flip
        Whether half the views (drawn) are flipped left-right. Off for chest films.
    """

    __test__ = False  # not a pytest test class, despite the name

    views: int = 8
    seed: int = 0
    max_rotate_deg: float = 5.0
    max_scale: float = 0.05
    max_shift: float = 0.03
    max_gamma: float = 0.15
    max_contrast: float = 0.1
    horizontal_flip: bool = False

    def __post_init__(self) -> None:
        if self.views < 1:
            raise ConfigError(f"test-time augmentation needs at least 1 view, not {self.views}")
        for name in ("max_rotate_deg", "max_scale", "max_shift", "max_gamma", "max_contrast"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigError(f"test-time augmentation {name} must be >= 0, not {value}")
        if self.max_scale >= 1 or self.max_contrast >= 1:
            raise ConfigError("test-time augmentation max_scale and max_contrast must be < 1")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TestTimeAugmentation:
        """Build from a mapping (a package's ``uncertainty.tta``); unknown keys refused."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown test-time augmentation setting(s): {', '.join(unknown)}")
        return cls(**dict(data))

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain data (recorded with results and conformal calibrations)."""
        return asdict(self)

    def parameters(self, view: int) -> ViewParameters:
        """The transform of view ``view`` (0 is the identity)."""
        if view == 0:
            return ViewParameters()
        draws = np.random.default_rng((self.seed, view)).uniform(-1.0, 1.0, size=6)
        flip = bool(
            self.horizontal_flip and np.random.default_rng((self.seed, view, 1)).random() < 0.5
        )
        return ViewParameters(
            angle=float(draws[0] * math.radians(self.max_rotate_deg)),
            scale=float(1.0 + draws[1] * self.max_scale),
            shift_x=float(draws[2] * self.max_shift * 2.0),
            shift_y=float(draws[3] * self.max_shift * 2.0),
            gamma=float(math.exp(draws[4] * self.max_gamma)),
            contrast=float(1.0 + draws[5] * self.max_contrast),
            flip=flip,
        )

    def views_of(self, batch: np.ndarray) -> np.ndarray:
        """Every view of a ``(N, C, H, W)`` batch: ``(views, N, C, H, W)`` float32."""
        x = np.asarray(batch, dtype=np.float32)
        if x.ndim != 4:
            raise ConfigError(f"test-time augmentation needs an (N, C, H, W) batch, not {x.shape}")
        return np.stack([apply_view(x, self.parameters(k)) for k in range(self.views)])


#: Body parts (DICOM Body Part Examined) whose findings depend on the side: the
#: heart, aorta, liver and stomach are not mirrored in anyone acquired.
LATERALISED_BODY_PARTS = frozenset(
    {"CHEST", "THORAX", "HEART", "ABDOMEN", "CHESTABDOMEN", "ABDOMENPELVIS", "LIVER", "STOMACH"}
)


def flip_refusal(body_parts: Collection[str]) -> str | None:
    """Why a left-right flip is not allowed for a package accepting ``body_parts``, or None.

    A package that names no body part may be shown anything, a chest film
    included, so it may not flip either.
    """
    parts = {p.strip().upper() for p in body_parts}
    if not parts:
        return "a left-right flip needs the package to name its body parts (accepts.body_parts)"
    sided = sorted(parts & LATERALISED_BODY_PARTS)
    if sided:
        return f"a left-right flip mirrors {', '.join(sided)} anatomy, which no one acquires"
    return None


def _warp(batch: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """``torch``'s ``affine_grid`` + ``grid_sample`` (bilinear, zero padding,
    ``align_corners=False``) of every plane, computed with scipy on one thread.

    The same sampling as torch's (to float rounding), but without torch's intra-op
    thread pool: on a loaded two-core node that pool made one 224 x 224 warp take
    ~160 ms of wall time instead of ~1 ms (``overread bench tta``).
    """
    from scipy.ndimage import map_coordinates

    rows, cols = batch.shape[-2:]
    yn = (2.0 * np.arange(rows) + 1.0) / rows - 1.0
    xn = (2.0 * np.arange(cols) + 1.0) / cols - 1.0
    gx, gy = np.meshgrid(xn, yn)
    sx = theta[0, 0] * gx + theta[0, 1] * gy + theta[0, 2]
    sy = theta[1, 0] * gx + theta[1, 1] * gy + theta[1, 2]
    coords = np.stack([((sy + 1.0) * rows - 1.0) / 2.0, ((sx + 1.0) * cols - 1.0) / 2.0])
    planes = batch.reshape(-1, rows, cols)
    out = np.empty_like(planes)
    for i, plane in enumerate(planes):
        out[i] = map_coordinates(plane, coords, order=1, mode="grid-constant", cval=0.0)
    return out.reshape(batch.shape)


def apply_view(batch: np.ndarray, view: ViewParameters) -> np.ndarray:
    """One view of a ``(N, C, H, W)`` batch in ``[0, 1]`` (zero padding where moved in)."""
    x = np.asarray(batch, dtype=np.float32)
    if view.is_identity:
        return x.copy()
    out = x
    if view.angle or view.scale != 1.0 or view.shift_x or view.shift_y:
        cos = math.cos(view.angle) / view.scale
        sin = math.sin(view.angle) / view.scale
        out = _warp(x, np.array([[cos, -sin, view.shift_x], [sin, cos, view.shift_y]]))
    if view.flip:
        out = out[..., ::-1]
    if view.contrast != 1.0:
        mean = out.mean(axis=(-2, -1), keepdims=True)
        out = (out - mean) * view.contrast + mean
    out = np.clip(out, 0.0, 1.0)
    if view.gamma != 1.0:
        out = np.power(out, view.gamma)
    return np.ascontiguousarray(out, dtype=np.float32)


__all__ = [
    "LATERALISED_BODY_PARTS",
    "TestTimeAugmentation",
    "ViewParameters",
    "apply_view",
    "flip_refusal",
]
