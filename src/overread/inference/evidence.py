"""Per-finding evidence the pipeline attaches to a prediction: explanation trust.

Every finding a reader acts on (decided positive or indeterminate) gets the
explanation trust of :mod:`overread.explain.trust`: how concentrated its class
activation map is (Gini coefficient), how much its calibrated probability falls when
the map's top region is filled from the pixels around it (the local mean), and the
two combined. Negative findings are left as they are (``None``): nobody is asked to
look at them.
"""

from __future__ import annotations

import numpy as np

from overread.explain.cam import cam_to_heatmaps
from overread.explain.trust import ProbabilityFunction, explanation_trust_batch
from overread.results import Decision, FindingResult, Prediction


def acted_on(findings: list[FindingResult]) -> list[int]:
    """Indices of the findings decided positive or indeterminate."""
    return [i for i, f in enumerate(findings) if f.decision is not Decision.NEGATIVE]


def attach_trust(
    prediction: Prediction, x: np.ndarray, maps: np.ndarray, predict: ProbabilityFunction
) -> None:
    """Set trust score, map concentration and deletion drop on the acted-on findings.

    Parameters
    ----------
    prediction
        A successful prediction whose findings follow the model's label order.
    x
        Its model input ``(C, H, W)``.
    maps
        Its per-label heatmaps ``(L, H, W)`` at the input resolution.
    predict
        Calibrated probabilities ``(N, L)`` for a batch of inputs (one call per image).
    """
    findings = prediction.findings
    probabilities = np.array([f.probability for f in findings], dtype=np.float64)
    evidence = explanation_trust_batch(x, maps, probabilities, acted_on(findings), predict)
    prediction.findings = [
        f
        if i not in evidence
        else f.with_values(
            trust_score=evidence[i].trust_score,
            map_concentration=evidence[i].map_concentration,
            deletion_drop=evidence[i].deletion_drop,
        )
        for i, f in enumerate(findings)
    ]


def attach_trust_from_cam(
    prediction: Prediction, x: np.ndarray, cam: np.ndarray, predict: ProbabilityFunction
) -> None:
    """:func:`attach_trust` from the runtime's raw CAM ``(L, h, w)`` of one image: only
    the acted-on labels' maps are upsampled to the input (when no heatmaps are kept)."""
    indices = acted_on(prediction.findings)
    maps = np.zeros((len(prediction.findings), *x.shape[-2:]), dtype=np.float32)
    if indices:
        maps[indices] = cam_to_heatmaps(np.asarray(cam)[None, indices], maps.shape[-2:])[0]
    attach_trust(prediction, x, maps, predict)


__all__ = ["acted_on", "attach_trust", "attach_trust_from_cam"]
