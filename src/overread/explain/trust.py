"""A per-result trust score for one explanation: is the map focused, and does it matter?

Two cheap checks on one preprocessed image and the map of one label:

``map_concentration``
    The Gini coefficient of the map's values (Chalasani et al., ICML 2020 use it as
    a map's sparsity): 0 for a flat map, ``1 - a`` for a map that is uniform on a
    fraction ``a`` of the image and zero elsewhere, towards 1 for a single point.
``deletion_drop``
    A one-image deletion check: the relative fall of the label's probability when
    the map's top region (pixels at or above half the maximum) is filled from the
    pixels around it (:func:`local_mean_fill`): ``max(0, (p - p_removed) / p)``.
    High means the model did rely on what the map shows.

``trust_score`` is their geometric mean, in [0, 1]: a focused map the model does
not rely on, or a map the model relies on that points everywhere, both score low.
It costs one forward pass (two when the probability is not given).

:func:`explanation_trust` takes a torch network (or any classifier) and one map;
:func:`explanation_trust_batch` applies the same rules to several labels' maps of one
image with any runtime's probabilities (the serving pipeline's calibrated ONNX
Runtime output): all the deleted inputs go through one batched call. Both fill the
deleted region with the **local mean** around it rather than the image's mean (the
deletion curve's baseline): on phantom radiographs a patch of the image's mean grey
still reads as an opacity to the model (removing a ground-truth atelectasis that way
left its probability at 0.66 of 0.69; filled from around, it fell to 0.04;
scripts/compare_deletion_fill.py, docs/outputs.md), so the image-mean fill under-reports how much the model relies on
the region. ``baseline="image-mean"`` selects the deletion curve's fill in both.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import torch
from scipy.ndimage import uniform_filter

from overread.explain.faithfulness import Classifier, deletion_baseline, label_probabilities
from overread.explain.regions import TOP_FRACTION, top_region


@dataclass(frozen=True)
class ExplanationTrust:
    """How far one explanation map can be trusted (all in [0, 1]; high is good)."""

    trust_score: float
    map_concentration: float
    deletion_drop: float

    def to_dict(self) -> dict[str, float]:
        """The three values by name."""
        return asdict(self)


def map_concentration(heatmap: np.ndarray) -> float:
    """Gini coefficient of the map's (non-negative) values; 0 for a flat or empty map."""
    values = np.sort(np.clip(np.asarray(heatmap, dtype=np.float64).ravel(), 0.0, None))
    total = float(values.sum())
    n = values.size
    if n < 2 or total <= 0.0:
        return 0.0
    ranks = np.arange(1, n + 1)
    # Elementwise, not ``@``: a BLAS dot of 50k values took 19 ms on a loaded 2-core node.
    gini = float(np.sum((2.0 * ranks - n - 1.0) * values)) / (n * total)
    return float(np.clip(gini, 0.0, 1.0))


#: What a deleted region becomes (see :func:`local_mean_fill`).
DeletionBaseline = Literal["local-mean", "image-mean"]


def explanation_trust(
    model: Classifier,
    x: torch.Tensor | np.ndarray,
    heatmap: np.ndarray,
    label_index: int,
    *,
    probability: float | None = None,
    fraction: float = TOP_FRACTION,
    baseline: DeletionBaseline = "local-mean",
) -> ExplanationTrust:
    """The trust score of ``heatmap`` as an explanation of label ``label_index`` on ``x``.

    Parameters
    ----------
    model
        The classifier, a torch network or the same model under another runtime
        (logits; their sigmoid is the probability used).
    x
        One preprocessed image ``(C, H, W)`` (or ``(1, C, H, W)``).
    heatmap
        The label's map ``(H, W)`` on the same grid.
    probability
        The network's probability for the label on ``x``, if already known
        (saves a forward pass).
    fraction
        The top-region rule: pixels at or above this fraction of the maximum.
    baseline
        What the region becomes: the mean of the pixels around it (default) or the
        image's mean.
    """
    tensor = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
    image = tensor.detach().float().reshape(-1, *tensor.shape[-3:])[0]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != tuple(image.shape[-2:]):
        raise ValueError(f"map {heat.shape} and input {tuple(image.shape[-2:])} differ in size")
    mask = top_region(heat, fraction)
    if baseline == "local-mean":
        removed = torch.from_numpy(local_mean_fill(image.numpy(), mask))
    else:
        region = torch.from_numpy(mask.astype(np.float32))
        removed = image * (1 - region) + deletion_baseline(image) * region
    batch = removed[None] if probability is not None else torch.stack([image, removed])
    scores = label_probabilities(model, batch)[:, label_index]
    before = float(probability) if probability is not None else float(scores[0])
    after = float(scores[-1])
    drop = max(0.0, (before - after) / before) if before > 0 else 0.0
    concentration = map_concentration(heat)
    return ExplanationTrust(
        trust_score=math.sqrt(concentration * min(drop, 1.0)),
        map_concentration=concentration,
        deletion_drop=min(drop, 1.0),
    )


#: Maps ``(N, C, H, W)`` model inputs to probabilities ``(N, L)``.
ProbabilityFunction = Callable[[np.ndarray], np.ndarray]


#: Side of :func:`local_mean_fill`'s window, as a share of the image side.
LOCAL_WINDOW = 0.25


def local_mean_fill(x: np.ndarray, region: np.ndarray, window: float = LOCAL_WINDOW) -> np.ndarray:
    """``x`` ``(C, H, W)`` with ``region`` ``(H, W)`` filled by the local mean around it.

    Each deleted pixel gets the mean of the pixels outside the region within a box of
    ``window`` times the image side centred on it (a normalised box filter); where no
    such pixel lies that close, the mean of all pixels outside the region.
    """
    image = np.asarray(x, dtype=np.float32)
    mask = np.asarray(region, dtype=bool)
    if image.ndim != 3 or mask.shape != image.shape[-2:]:
        raise ValueError(f"region {mask.shape} does not match the input {image.shape}")
    if not mask.any():
        return image.copy()
    keep = (~mask).astype(np.float64)
    size = max(3, round(window * max(mask.shape)) | 1)
    weight = uniform_filter(keep, size=size, mode="nearest")
    result = image.copy()
    for channel in range(image.shape[0]):
        plane = image[channel].astype(np.float64)
        outside = float(plane[~mask].mean()) if keep.any() else float(plane.mean())
        local = uniform_filter(plane * keep, size=size, mode="nearest")
        filled = np.divide(local, weight, out=np.full_like(local, outside), where=weight > 1e-6)
        result[channel][mask] = filled[mask].astype(np.float32)
    return result


def explanation_trust_batch(
    x: np.ndarray,
    heatmaps: np.ndarray,
    probabilities: np.ndarray,
    label_indices: Sequence[int],
    predict: ProbabilityFunction,
    *,
    fraction: float = TOP_FRACTION,
    baseline: DeletionBaseline = "local-mean",
) -> dict[int, ExplanationTrust]:
    """:func:`explanation_trust` of several labels of one image, in one call of ``predict``.

    Parameters
    ----------
    x
        The model input ``(C, H, W)`` the maps and probabilities come from.
    heatmaps
        Per-label maps ``(L, H, W)`` on the input grid (only ``label_indices`` are read).
    probabilities
        The probabilities ``(L,)`` of ``x``, as ``predict`` gives them.
    label_indices
        The labels to score.
    predict
        Probabilities ``(N, L)`` for a batch of inputs ``(N, C, H, W)``.
    fraction
        The top-region rule (:data:`~overread.explain.regions.TOP_FRACTION`).
    baseline
        What the top region becomes: ``local-mean`` (:func:`local_mean_fill`, the
        default) or ``image-mean`` (:func:`explanation_trust`'s rule).

    Returns
    -------
    dict
        Label index -> :class:`ExplanationTrust`.
    """
    indices = list(dict.fromkeys(int(i) for i in label_indices))
    if not indices:
        return {}
    image = np.asarray(x, dtype=np.float32)
    maps = np.asarray(heatmaps, dtype=np.float32)
    image_mean = image.mean(axis=(-2, -1), keepdims=True)  # deletion_baseline, in numpy
    removed = []
    for index in indices:
        if maps[index].shape != image.shape[-2:]:
            raise ValueError(f"map {maps[index].shape} and input {image.shape[-2:]} differ in size")
        region = top_region(maps[index], fraction)
        if baseline == "image-mean":
            removed.append(np.where(region, image_mean, image))
        else:
            removed.append(local_mean_fill(image, region))
    after = np.asarray(predict(np.stack(removed)))
    if after.shape[0] != len(indices):
        raise ValueError(f"predict returned {after.shape[0]} rows for {len(indices)} inputs")
    trusted: dict[int, ExplanationTrust] = {}
    for row, index in enumerate(indices):
        before = float(probabilities[index])
        drop = (
            min(1.0, max(0.0, (before - float(after[row, index])) / before)) if before > 0 else 0.0
        )
        concentration = map_concentration(maps[index])
        trusted[index] = ExplanationTrust(
            trust_score=math.sqrt(concentration * drop),
            map_concentration=concentration,
            deletion_drop=drop,
        )
    return trusted


__all__ = [
    "LOCAL_WINDOW",
    "DeletionBaseline",
    "ExplanationTrust",
    "ProbabilityFunction",
    "explanation_trust",
    "explanation_trust_batch",
    "local_mean_fill",
    "map_concentration",
]
