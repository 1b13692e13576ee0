"""One entry point for every explanation method: :func:`explain_maps`.

Methods (``method`` argument):

``cam``
    Class activation map (Zhou et al., CVPR 2016): the classifier applied at every
    position of the last feature map. Exact for networks whose features reach the
    classifier through a global average pool only (CxrConvNet, MONAI DenseNets), and
    for ``CxrConvNet(pool="lse")``, whose logit is a log-sum-exp pool of that same
    map; under ONNX Runtime it is the model's second output, so it costs nothing extra.
``gradcam``, ``gradcam++``
    Gradient-weighted maps on a target layer (:class:`~overread.explain.cam.GradCam`).
``scorecam``
    Activation maps weighted by masked-input scores (:class:`~overread.explain.cam.ScoreCam`).
``occlusion``
    Logit drop under a sliding mean-valued patch (:class:`~overread.explain.attribution.Occlusion`).
``integrated-gradients``
    Path-integrated gradients from a black image
    (:class:`~overread.explain.attribution.IntegratedGradients`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from overread.explain.attribution import IntegratedGradients, Occlusion
from overread.explain.cam import GradCam, ScoreCam, cam_to_heatmaps, resolve_target_layer
from overread.models.export import CamClassifier, cam_parts

ExplainMethod = Literal[
    "cam", "gradcam", "gradcam++", "scorecam", "occlusion", "integrated-gradients"
]

#: Every method name :func:`explain_maps` accepts, cheapest first.
EXPLAIN_METHODS: tuple[str, ...] = get_args(ExplainMethod)

#: Methods that hook a target layer (the others ignore ``target_layer``).
LAYER_METHODS: frozenset[str] = frozenset({"gradcam", "gradcam++", "scorecam"})


def parse_method(name: str) -> ExplainMethod:
    """``name`` as an :data:`ExplainMethod`, case-insensitive (``grad-cam`` works too).

    Raises
    ------
    ValueError
        For an unknown method, naming the known ones.
    """
    key = name.strip().lower().replace("_", "-")
    aliases = {
        "grad-cam": "gradcam",
        "grad-cam++": "gradcam++",
        "score-cam": "scorecam",
        "ig": "integrated-gradients",
    }
    key = aliases.get(key, key)
    for method in EXPLAIN_METHODS:
        if key == method:
            return method  # type: ignore[return-value]
    raise ValueError(f"unknown explanation method {name!r}; known: {', '.join(EXPLAIN_METHODS)}")


def explain_maps(
    network: nn.Module,
    x: torch.Tensor | np.ndarray,
    method: ExplainMethod | str,
    label_indices: list[int] | None = None,
    target_layer: str | nn.Module | None = None,
    *,
    forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> np.ndarray:
    """Explanation maps ``(N, L, H, W)`` in [0, 1] for a batch of preprocessed inputs.

    Parameters
    ----------
    network
        A torch classifier mapping ``(N, C, H, W)`` to ``(N, labels)`` logits.
    x
        Preprocessed inputs ``(N, C, H, W)``.
    method
        One of :data:`EXPLAIN_METHODS`.
    label_indices
        Which labels to explain (default: all), in the order of the output's axis 1.
    target_layer
        For the layer methods: a module name such as ``"features.3"`` or a module;
        default the architecture's (see
        :func:`~overread.explain.cam.default_target_layer_name`).
    forward
        For the methods that only score perturbed inputs (``scorecam``'s masked
        inputs, ``occlusion``): the same model under a faster runtime, logits out.

    Raises
    ------
    ValueError
        For an unknown method or layer name, or ``cam`` on a network whose features
        do not reach the classifier through a global average pool.
    """
    chosen = parse_method(method)
    tensor = (
        torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32))
        if isinstance(x, np.ndarray)
        else x
    )
    tensor = tensor.detach().float()
    if tensor.ndim != 4:
        raise ValueError(f"inputs must be (N, C, H, W); got shape {tuple(tensor.shape)}")
    if chosen == "cam":
        if target_layer is not None:
            raise ValueError("cam uses the network's own last feature map; give no target layer")
        if cam_parts(network) is None:
            raise ValueError(
                f"{type(network).__name__} has no global-average-pool classifier; CAM needs one"
            )
        wrapper = CamClassifier(network)
        was_training = network.training
        network.eval()
        try:
            with torch.no_grad():
                logits, cam = wrapper(tensor)
        finally:
            network.train(was_training)
        indices = label_indices if label_indices is not None else list(range(logits.shape[1]))
        return cam_to_heatmaps(cam[:, indices].numpy(), (tensor.shape[-2], tensor.shape[-1]))
    if chosen in LAYER_METHODS:
        layer = resolve_target_layer(network, target_layer)
        if chosen == "scorecam":
            return ScoreCam(network, layer, forward=forward)(tensor, label_indices)
        return GradCam(network, layer, plus_plus=chosen == "gradcam++")(tensor, label_indices)
    if target_layer is not None:
        raise ValueError(f"{chosen} explains the input, not a layer; give no target layer")
    if chosen == "occlusion":
        return Occlusion(network, forward=forward)(tensor, label_indices)
    return IntegratedGradients(network)(tensor, label_indices)


__all__ = ["EXPLAIN_METHODS", "LAYER_METHODS", "ExplainMethod", "explain_maps", "parse_method"]
