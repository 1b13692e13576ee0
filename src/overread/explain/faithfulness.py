"""Is a map faithful to the model, and does it point at the finding? Measured.

Faithfulness to the model (the label's score is the network's sigmoid probability):

**Deletion** (Petsiuk et al., BMVC 2018): the most salient pixels are replaced, in
``steps`` equal steps from none to all, by the image's mean value (per channel);
the area under the probability curve over the fraction removed is the deletion
AUC: low is good (the map found what the model relies on).
**Insertion**: the reverse, starting from the image blurred by a Gaussian of
σ = 5 px at 224 px (scaled with the image) and putting the original pixels back,
most salient first; high is good. Pixels of equal salience are taken in a seeded
random order, so an all-zero map deletes at random.

**ROAD** (Rong et al., ICML 2022, "remove and debias"): the most salient fraction
of pixels (MoRF order) is removed and *imputed* from its neighbours by noisy linear
imputation (each removed pixel the weighted mean of its 8 neighbours, direct ones
weighted 1/6 and diagonal ones 1/12, solved as one sparse linear system, plus
Gaussian noise of 1% of the image's range), so the removal's shape leaks no class
information. Reported as the probability at each fraction of :data:`ROAD_FRACTIONS`;
low is good.

**Model randomisation** (Adebayo et al., NeurIPS 2018): :func:`randomised_copy`
re-initialises every weight of the same network; :func:`rank_correlation` is the
Spearman correlation of the flattened maps of the two. A map that hardly changes
explains the image, not the model: low is good.

Localisation against ground truth (maps and masks on the model-input grid):

**Pointing game**: a hit when the map's peak (see :mod:`overread.explain.regions`)
lies within :func:`pointing_tolerance` pixels (3 px at 224) of the finding's mask.
**Mask IoU**: intersection over union of the map's top region (pixels at or above
half the maximum) and the mask.
**Lesion size**: the mask's area as a fraction of the image: ``small`` below 2%
(less than one cell of a 7x7 final feature map), ``medium`` 2-8%, ``large`` 8% and
above (see :data:`SIZE_THRESHOLDS`).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import torch
from scipy import ndimage, stats
from torch import nn

from overread.explain.regions import TOP_FRACTION, peak, top_region

#: Removal fractions at which ROAD is reported.
ROAD_FRACTIONS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.5)
#: Upper bounds (exclusive) of mask area as a fraction of the image: small, medium.
SIZE_THRESHOLDS: tuple[float, float] = (0.02, 0.08)
#: Size class names in order.
SIZE_CLASSES: tuple[str, ...] = ("small", "medium", "large")
#: Pointing-game tolerance in pixels at a 224-pixel input (scaled with the input).
POINTING_TOLERANCE_224 = 3
#: Insertion's starting blur in pixels at a 224-pixel input (scaled with the input).
INSERTION_BLUR_224 = 5.0


#: A classifier as the measures see it: inputs ``(B, C, H, W)`` to logits ``(B, L)``.
#: A torch network, or the same model under another runtime (ONNX Runtime scores
#: perturbed images several times faster than eager torch).
Classifier = Callable[[torch.Tensor], torch.Tensor]


# -- scores -----------------------------------------------------------------------
def label_probabilities(
    model: Classifier, images: torch.Tensor, *, batch_size: int = 32
) -> np.ndarray:
    """Sigmoid probabilities ``(B, L)`` of a batch, in chunks of ``batch_size``."""
    network = model if isinstance(model, nn.Module) else None
    was_training = network.training if network is not None else False
    if network is not None:
        network.eval()
    try:
        with torch.no_grad():
            parts = [
                torch.sigmoid(model(images[start : start + batch_size]))
                for start in range(0, images.shape[0], batch_size)
            ]
    finally:
        if network is not None:
            network.train(was_training)
    return torch.cat(parts).numpy() if parts else np.zeros((0, 0), dtype=np.float32)


def area_under_curve(fractions: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Trapezoidal area over ``fractions`` (last axis of ``values``)."""
    widths = np.diff(fractions)
    result: np.ndarray = ((values[..., 1:] + values[..., :-1]) / 2.0 * widths).sum(axis=-1)
    return result


def salience_order(heatmap: np.ndarray, seed: int = 0) -> np.ndarray:
    """Flat pixel indices, most salient first; ties in a seeded random order."""
    values = np.asarray(heatmap, dtype=np.float64).ravel()
    jitter = np.random.default_rng(seed).random(values.size)
    order: np.ndarray = np.lexsort((jitter, -values))
    return order


def _top_masks(heatmap: np.ndarray, fractions: Sequence[float], seed: int) -> np.ndarray:
    """``(F, H, W)`` float masks of the most salient ``fraction`` of pixels."""
    order = salience_order(heatmap, seed)
    ranks = np.empty(order.size, dtype=np.int64)
    ranks[order] = np.arange(order.size)
    counts = np.array([round(f * order.size) for f in fractions])
    masks = ranks[None, :] < counts[:, None]
    return masks.reshape(len(fractions), *heatmap.shape).astype(np.float32)


def deletion_baseline(x: torch.Tensor) -> torch.Tensor:
    """What deleted pixels become: the image's mean value, per channel (``(C, H, W)``)."""
    return x.mean(dim=(-2, -1), keepdim=True).expand_as(x).clone()


def insertion_start(x: torch.Tensor) -> torch.Tensor:
    """Where insertion starts: the image blurred (σ = 5 px at 224, scaled)."""
    sigma = INSERTION_BLUR_224 * max(x.shape[-2:]) / 224.0
    blurred = ndimage.gaussian_filter(x.numpy(), sigma=(0, sigma, sigma), mode="nearest")
    return torch.from_numpy(np.ascontiguousarray(blurred, dtype=np.float32))


@dataclass(frozen=True)
class PerturbationCurves:
    """Deletion and insertion curves of ``M`` maps on one image.

    ``fractions`` ``(S + 1,)`` from 0 to 1; ``deletion`` and ``insertion``
    ``(M, S + 1)`` hold the label's probability at each fraction.
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray:
        """Area under each deletion curve (low is good)."""
        return area_under_curve(self.fractions, self.deletion)

    @property
    def insertion_auc(self) -> np.ndarray:
        """Area under each insertion curve (high is good)."""
        return area_under_curve(self.fractions, self.insertion)


def perturbation_curves(
    model: Classifier,
    x: torch.Tensor,
    heatmaps: np.ndarray,
    label_indices: Sequence[int],
    *,
    steps: int = 10,
    batch_size: int = 32,
    seed: int = 0,
) -> PerturbationCurves:
    """Deletion and insertion curves for ``M`` maps of one preprocessed image.

    Parameters
    ----------
    model
        The classifier (logits; probabilities are their sigmoid).
    x
        One preprocessed image ``(C, H, W)``.
    heatmaps
        ``(M, H, W)`` maps, one per entry of ``label_indices`` (the label it
        explains); or one map ``(1, H, W)`` measured for every label given (a
        label-independent map such as a random one costs its images once).
    steps
        Equal steps from no pixel to every pixel perturbed.

    The end points are shared by every map (the original image, the mean image,
    the blurred image), so ``M`` maps cost ``3 + 2 * M * (steps - 1)`` images.
    """
    maps = _maps_for(heatmaps, x, label_indices)
    fractions = np.linspace(0.0, 1.0, steps + 1)
    inner = fractions[1:-1]
    base, start = deletion_baseline(x), insertion_start(x)
    images = [x, base, start]
    for heatmap in maps:
        masks = torch.from_numpy(_top_masks(heatmap, inner.tolist(), seed))[
            :, None
        ]  # (S-1, 1, H, W)
        images.append(x[None] * (1 - masks) + base[None] * masks)
        images.append(start[None] * (1 - masks) + x[None] * masks)
    batch = torch.cat([image if image.ndim == 4 else image[None] for image in images])
    probabilities = label_probabilities(model, batch, batch_size=batch_size)
    original, deleted, blurred = probabilities[0], probabilities[1], probabilities[2]
    deletion = np.zeros((len(label_indices), steps + 1), dtype=np.float64)
    insertion = np.zeros_like(deletion)
    middle = len(inner)
    for m, index in enumerate(label_indices):
        row = 3 + (0 if maps.shape[0] == 1 else m) * 2 * middle
        deletion[m] = [original[index], *probabilities[row : row + middle, index], deleted[index]]
        row += middle
        insertion[m] = [blurred[index], *probabilities[row : row + middle, index], original[index]]
    return PerturbationCurves(fractions=fractions, deletion=deletion, insertion=insertion)


# -- ROAD -----------------------------------------------------------------------------
_NEIGHBOURS: tuple[tuple[int, int, float], ...] = (
    (-1, 0, 1 / 6),
    (1, 0, 1 / 6),
    (0, -1, 1 / 6),
    (0, 1, 1 / 6),
    (-1, -1, 1 / 12),
    (-1, 1, 1 / 12),
    (1, -1, 1 / 12),
    (1, 1, 1 / 12),
)


def noisy_linear_impute(
    image: np.ndarray, removed: np.ndarray, *, noise: float = 0.01, seed: int = 0
) -> np.ndarray:
    """Fill ``removed`` pixels of ``image`` ``(C, H, W)`` from their neighbours (ROAD).

    Each removed pixel equals the weighted mean of its in-image 8 neighbours
    (direct 1/6, diagonal 1/12, renormalised at the border), known or removed: one
    sparse linear system, solved once for all channels. Gaussian noise of
    ``noise`` times the image's value range is then added to the imputed pixels.
    """
    values = np.asarray(image, dtype=np.float64)
    mask = np.asarray(removed, dtype=bool)
    rows, cols = mask.shape
    unknown_r, unknown_c = np.nonzero(mask)
    count = unknown_r.size
    if count == 0:
        return values.astype(np.float32)
    number = -np.ones(mask.shape, dtype=np.int64)
    number[unknown_r, unknown_c] = np.arange(count)
    diagonal = np.zeros(count)
    known = np.zeros((values.shape[0], count))
    entries_i: list[np.ndarray] = []
    entries_j: list[np.ndarray] = []
    entries_w: list[np.ndarray] = []
    for dr, dc, weight in _NEIGHBOURS:
        nr, nc = unknown_r + dr, unknown_c + dc
        inside = (nr >= 0) & (nr < rows) & (nc >= 0) & (nc < cols)
        diagonal[inside] += weight
        rows_in = np.flatnonzero(inside)
        neighbour = number[nr[inside], nc[inside]]
        is_unknown = neighbour >= 0
        entries_i.append(rows_in[is_unknown])
        entries_j.append(neighbour[is_unknown])
        entries_w.append(np.full(int(is_unknown.sum()), -weight))
        fixed = rows_in[~is_unknown]
        known[:, fixed] += weight * values[:, nr[inside][~is_unknown], nc[inside][~is_unknown]]
    matrix = scipy.sparse.csc_matrix(
        (
            np.concatenate([diagonal, *entries_w]),
            (
                np.concatenate([np.arange(count), *entries_i]),
                np.concatenate([np.arange(count), *entries_j]),
            ),
        ),
        shape=(count, count),
    )
    solution = scipy.sparse.linalg.splu(matrix).solve(known.T)  # (count, C)
    spread = float(values.max() - values.min()) or 1.0
    rng = np.random.default_rng(seed)
    out = values.copy()
    out[:, unknown_r, unknown_c] = solution.T + rng.normal(0.0, noise * spread, solution.T.shape)
    return out.astype(np.float32)


def _maps_for(heatmaps: np.ndarray, x: torch.Tensor, label_indices: Sequence[int]) -> np.ndarray:
    maps = np.asarray(heatmaps, dtype=np.float32).reshape(-1, *x.shape[-2:])
    if maps.shape[0] not in (1, len(label_indices)):
        raise ValueError(f"{maps.shape[0]} maps but {len(label_indices)} label indices")
    return maps


def road_scores(
    model: Classifier,
    x: torch.Tensor,
    heatmaps: np.ndarray,
    label_indices: Sequence[int],
    *,
    fractions: Sequence[float] = ROAD_FRACTIONS,
    batch_size: int = 32,
    seed: int = 0,
) -> np.ndarray:
    """ROAD (MoRF): the label's probability ``(M, F)`` with each top fraction imputed.

    ``heatmaps`` as for :func:`perturbation_curves` (one map per label, or one for all).
    """
    maps = _maps_for(heatmaps, x, label_indices)
    image = x.numpy()
    imputed = []
    for heatmap in maps:
        for removed in _top_masks(heatmap, fractions, seed) > 0:
            imputed.append(noisy_linear_impute(image, removed, seed=seed))
    batch = torch.from_numpy(np.stack(imputed))
    probabilities = label_probabilities(model, batch, batch_size=batch_size)
    rows = probabilities.reshape(maps.shape[0], len(fractions), -1)
    shared = maps.shape[0] == 1
    return np.stack([rows[0 if shared else m, :, i] for m, i in enumerate(label_indices)])


# -- model randomisation --------------------------------------------------------------
def randomised_copy(network: nn.Module, *, seed: int = 0) -> nn.Module:
    """A copy of ``network`` with every weight re-initialised (the sanity check's model).

    Each module's own ``reset_parameters`` is used where it has one (convolutions,
    linear layers, norms, whose running statistics are reset too); any parameter
    left untouched by those (a transformer's class token or position embedding)
    is redrawn from N(0, 0.02²).
    """
    randomised = copy.deepcopy(network)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        leftover: list[nn.Parameter] = []
        for module in randomised.modules():
            own = list(module.parameters(recurse=False))
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()
            else:
                leftover.extend(own)
            reset_stats = getattr(module, "reset_running_stats", None)
            if callable(reset_stats):
                reset_stats()
        with torch.no_grad():
            for parameter in leftover:
                parameter.normal_(0.0, 0.02)
    return randomised.train(network.training)


def rank_correlation(maps_a: np.ndarray, maps_b: np.ndarray) -> np.ndarray:
    """Spearman correlation of flattened maps, one per map (``(..., H, W)`` -> ``(...)``).

    A constant map ranks nothing: its correlation with a varying map is taken as
    0, with an identical constant map as 1.
    """
    a = np.asarray(maps_a, dtype=np.float64)
    b = np.asarray(maps_b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} and {b.shape}")
    flat_a = a.reshape(-1, a.shape[-2] * a.shape[-1])
    flat_b = b.reshape(-1, b.shape[-2] * b.shape[-1])
    out = np.zeros(flat_a.shape[0])
    for i, (u, v) in enumerate(zip(flat_a, flat_b, strict=True)):
        if np.ptp(u) == 0 or np.ptp(v) == 0:
            out[i] = 1.0 if np.array_equal(u, v) else 0.0
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            rho = stats.spearmanr(u, v).statistic
        out[i] = float(rho) if np.isfinite(rho) else 0.0
    return out.reshape(a.shape[:-2])


# -- localisation -----------------------------------------------------------------------
def pointing_tolerance(side: int) -> int:
    """The pointing game's tolerance in pixels for an input ``side`` pixels wide."""
    return max(0, round(POINTING_TOLERANCE_224 * side / 224))


def pointing_hit(heatmap: np.ndarray, mask: np.ndarray, tolerance: int) -> bool:
    """Whether the map's peak lies within ``tolerance`` pixels of the mask (an empty map misses)."""
    where = peak(heatmap)
    region = np.asarray(mask, dtype=bool)
    if where is None or not region.any():
        return False
    rows, cols = np.nonzero(region)
    distance = np.min((rows - where[0]) ** 2 + (cols - where[1]) ** 2)
    return bool(math.sqrt(float(distance)) <= tolerance)


def mask_iou(heatmap: np.ndarray, mask: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """IoU of the map's top region (``>= fraction`` of its maximum) and the mask."""
    region = top_region(heatmap, fraction)
    truth = np.asarray(mask, dtype=bool)
    union = int((region | truth).sum())
    return float((region & truth).sum() / union) if union else 0.0


def size_class(area_fraction: float) -> str:
    """``small``, ``medium`` or ``large`` for a mask covering ``area_fraction`` of the image."""
    small, medium = SIZE_THRESHOLDS
    if area_fraction < small:
        return "small"
    return "medium" if area_fraction < medium else "large"


__all__ = [
    "INSERTION_BLUR_224",
    "POINTING_TOLERANCE_224",
    "ROAD_FRACTIONS",
    "SIZE_CLASSES",
    "SIZE_THRESHOLDS",
    "Classifier",
    "PerturbationCurves",
    "area_under_curve",
    "deletion_baseline",
    "insertion_start",
    "label_probabilities",
    "mask_iou",
    "noisy_linear_impute",
    "perturbation_curves",
    "pointing_hit",
    "pointing_tolerance",
    "randomised_copy",
    "rank_correlation",
    "road_scores",
    "salience_order",
    "size_class",
]
