"""A per-result trust score for one explanation: is the map focused, and does it matter?

Two cheap checks on one preprocessed image and the map of one label:

``map_concentration``
    The Gini coefficient of the map's values (Chalasani et al., ICML 2020 use it as
    a map's sparsity): 0 for a flat map, ``1 - a`` for a map that is uniform on a
    fraction ``a`` of the image and zero elsewhere, towards 1 for a single point.
``deletion_drop``
    A one-image deletion check: the relative fall of the label's probability when
    the map's top region (pixels at or above half the maximum) is replaced by the
    image's mean value, as in the deletion curve: ``max(0, (p - p_removed) / p)``.
    High means the model did rely on what the map shows.

``trust_score`` is their geometric mean, in [0, 1]: a focused map the model does
not rely on, or a map the model relies on that points everywhere, both score low.
It costs one forward pass (two when the probability is not given).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

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
    gini = float((2.0 * ranks - n - 1.0) @ values) / (n * total)
    return float(np.clip(gini, 0.0, 1.0))


def explanation_trust(
    model: Classifier,
    x: torch.Tensor | np.ndarray,
    heatmap: np.ndarray,
    label_index: int,
    *,
    probability: float | None = None,
    fraction: float = TOP_FRACTION,
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
    """
    tensor = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x
    image = tensor.detach().float().reshape(-1, *tensor.shape[-3:])[0]
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.shape != tuple(image.shape[-2:]):
        raise ValueError(f"map {heat.shape} and input {tuple(image.shape[-2:])} differ in size")
    region = torch.from_numpy(top_region(heat, fraction).astype(np.float32))
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


__all__ = ["ExplanationTrust", "explanation_trust", "map_concentration"]
