"""Class activation maps: exact CAM from the forward pass, Grad-CAM and Grad-CAM++.

CAM needs no gradients: the exported network returns, next to the logits, the
classifier applied at every position of the last feature map (see
:mod:`overread.models.export`), so the ONNX runtime explains with the same pass it
predicts with. Grad-CAM (Selvaraju et al., ICCV 2017) and Grad-CAM++ (Chattopadhay
et al., WACV 2018) work for any torch network with a convolutional layer, from a
forward hook on that layer and the gradient of the score with respect to it.
Score-CAM (Wang et al., CVPR Workshops 2020) needs no gradients at all: it weights
each activation map by the score the network gives the input masked with it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
import torch
from torch import nn

CamMethod = Literal["cam", "gradcam", "gradcam++", "scorecam"]


def normalise_maps(maps: np.ndarray) -> np.ndarray:
    """Clip negative evidence and scale each map (last two axes) to [0, 1]."""
    positive = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    peak = positive.max(axis=(-2, -1), keepdims=True)
    result: np.ndarray = np.divide(positive, peak, out=np.zeros_like(positive), where=peak > 0)
    return result


def upsample_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(..., h, w)`` maps to ``(..., size[0], size[1])``."""
    array = np.asarray(maps, dtype=np.float32)
    lead = array.shape[:-2]
    flat = torch.from_numpy(np.ascontiguousarray(array.reshape(-1, 1, *array.shape[-2:])))
    resized = nn.functional.interpolate(flat, size=size, mode="bilinear", align_corners=False)
    return resized.numpy().reshape(*lead, *size)


def cam_to_heatmaps(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Per-label CAM output ``(N, L, h, w)`` -> heatmaps ``(N, L, H, W)`` in [0, 1]."""
    return normalise_maps(upsample_maps(cam, size))


def default_target_layer_name(network: nn.Module) -> str:
    """The name of the layer the gradient methods hook by default, per architecture.

    ``features`` for CxrConvNet and MONAI's DenseNets (the last feature block),
    ``layer4`` for SE-ResNets, ``_bn1`` (the head's batch norm) for EfficientNets,
    the last transformer block's first norm for a ViT (its patch tokens reach the
    class token through that block's attention), else the last convolution.
    """
    if isinstance(getattr(network, "features", None), nn.Module):
        return "features"
    if isinstance(getattr(network, "layer4", None), nn.Module):
        return "layer4"
    if isinstance(getattr(network, "_blocks", None), nn.Module) and isinstance(
        getattr(network, "_bn1", None), nn.Module
    ):
        return "_bn1"
    for prefix, module in network.named_modules():
        blocks = getattr(module, "blocks", None)
        if isinstance(blocks, nn.ModuleList) and len(blocks) and hasattr(blocks[-1], "norm1"):
            return ".".join(p for p in (prefix, "blocks", str(len(blocks) - 1), "norm1") if p)
    convs: list[str] = [n for n, m in network.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(f"{type(network).__name__} has no convolutional layer to explain")
    return convs[-1]


def default_target_layer(network: nn.Module) -> nn.Module:
    """The layer the gradient methods hook by default (see :func:`default_target_layer_name`).

    It must be a module that the network's forward calls, or the hooks never fire.
    """
    return network.get_submodule(default_target_layer_name(network))


def resolve_target_layer(network: nn.Module, target_layer: str | nn.Module | None) -> nn.Module:
    """The module named ``target_layer`` (e.g. ``"features.3"``), or the default.

    Raises
    ------
    ValueError
        If no module of the network has that name.
    """
    if target_layer is None:
        return default_target_layer(network)
    if isinstance(target_layer, nn.Module):
        return target_layer
    try:
        return network.get_submodule(target_layer)
    except AttributeError:
        names = [name for name, _ in network.named_children()]
        raise ValueError(
            f"{type(network).__name__} has no layer {target_layer!r}"
            f" (top-level layers: {', '.join(names)})"
        ) from None


def as_spatial(activation: torch.Tensor) -> torch.Tensor:
    """A layer's output as ``(N, K, h, w)``: conv maps as they are, tokens on their grid.

    A transformer's ``(N, T, D)`` tokens become ``(N, D, s, s)`` when ``T`` (or
    ``T - 1``, dropping a leading class token) is a square number ``s * s``.
    """
    if activation.ndim == 4:
        return activation
    if activation.ndim == 3:
        tokens = activation.shape[1]
        for skip in (1, 0):
            side = math.isqrt(tokens - skip)
            if side * side == tokens - skip and side > 0:
                grid = activation[:, skip:, :]
                return grid.transpose(1, 2).reshape(activation.shape[0], -1, side, side)
    raise ValueError(f"cannot lay a layer output of shape {tuple(activation.shape)} on a grid")


class GradCam:
    """Grad-CAM / Grad-CAM++ for a torch classifier via hooks on one layer.

    Parameters
    ----------
    network
        A module mapping ``(N, C, H, W)`` to ``(N, L)`` logits.
    target_layer
        The layer whose activations are weighted; default :func:`default_target_layer`.
    plus_plus
        Use Grad-CAM++ weights instead of Grad-CAM's mean gradients.
    """

    def __init__(
        self,
        network: nn.Module,
        target_layer: str | nn.Module | None = None,
        *,
        plus_plus: bool = False,
    ) -> None:
        self.network = network
        self.target_layer = resolve_target_layer(network, target_layer)
        self.plus_plus = plus_plus

    def __call__(self, x: torch.Tensor, label_indices: list[int] | None = None) -> np.ndarray:
        """Maps ``(N, len(label_indices), H, W)`` in [0, 1] at the input resolution."""
        activations: list[torch.Tensor] = []

        def keep_activation(_m: nn.Module, _i: object, output: torch.Tensor) -> None:
            activations.append(output)

        handle = self.target_layer.register_forward_hook(keep_activation)
        was_training = self.network.training
        self.network.eval()
        try:
            with torch.enable_grad():
                logits = self.network(x.detach().clone().requires_grad_(True))
                if not activations:
                    raise ValueError("the target layer was not called by the network's forward")
                activation = activations[-1]
                indices = (
                    label_indices if label_indices is not None else list(range(logits.shape[1]))
                )
                maps = []
                for index in indices:
                    # Gradients w.r.t. the activation only: parameters' .grad stay untouched.
                    (gradient,) = torch.autograd.grad(
                        logits[:, index].sum(), activation, retain_graph=True
                    )
                    maps.append(
                        self._weighted(as_spatial(activation.detach()), as_spatial(gradient))
                    )
        finally:
            handle.remove()
            self.network.train(was_training)
        stacked = torch.stack(maps, dim=1).numpy()
        return normalise_maps(upsample_maps(stacked, (x.shape[-2], x.shape[-1])))

    def _weighted(self, activation: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        if self.plus_plus:
            g2, g3 = gradient.pow(2), gradient.pow(3)
            summed = activation.sum(dim=(2, 3), keepdim=True)
            denominator = 2 * g2 + summed * g3
            alpha = torch.where(gradient != 0, g2 / (denominator + 1e-7), torch.zeros_like(g2))
            weights = (alpha * torch.relu(gradient)).sum(dim=(2, 3), keepdim=True)
        else:
            weights = gradient.mean(dim=(2, 3), keepdim=True)
        return torch.relu((weights * activation).sum(dim=1))


class ScoreCam:
    """Score-CAM: activation maps weighted by the score of the input masked with each.

    One extra forward pass per channel of the target layer (in batches of
    ``batch_size``), so it is the slowest method here and the least sensitive to
    noisy gradients. ``forward``, when given, scores those masked inputs instead
    of the network: the same model under a faster runtime (logits out).
    """

    def __init__(
        self,
        network: nn.Module,
        target_layer: str | nn.Module | None = None,
        *,
        batch_size: int = 32,
        forward: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.network = network
        self.target_layer = resolve_target_layer(network, target_layer)
        self.batch_size = batch_size
        self.forward = forward or network

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, label_indices: list[int] | None = None) -> np.ndarray:
        """Maps ``(N, len(label_indices), H, W)`` in [0, 1] at the input resolution."""
        activations: list[torch.Tensor] = []
        handle = self.target_layer.register_forward_hook(
            lambda _m, _i, output: activations.append(output.detach().clone())
        )
        was_training = self.network.training
        self.network.eval()
        try:
            logits = self.network(x)
            if not activations:
                raise ValueError("the target layer was not called by the network's forward")
            # The last call: a module used twice in one forward counts at its last use.
            activation = as_spatial(activations[-1])
            handle.remove()
            indices = label_indices if label_indices is not None else list(range(logits.shape[1]))
            size = (x.shape[-2], x.shape[-1])
            masks = torch.from_numpy(
                normalise_maps(upsample_maps(activation.numpy(), size))
            )  # (N, K, H, W)
            out = np.zeros((x.shape[0], len(indices), *size), dtype=np.float32)
            for n in range(x.shape[0]):
                scores = []
                for start in range(0, masks.shape[1], self.batch_size):
                    chunk = masks[n, start : start + self.batch_size, None]  # (k, 1, H, W)
                    scores.append(self.forward(x[n : n + 1] * chunk)[:, indices])
                weights = torch.softmax(torch.cat(scores), dim=0)  # (K, labels)
                cam = torch.relu(torch.einsum("kl,khw->lhw", weights, activation[n]))
                out[n] = upsample_maps(cam.numpy(), size)
        finally:
            handle.remove()
            self.network.train(was_training)
        return normalise_maps(out)


__all__ = [
    "CamMethod",
    "GradCam",
    "ScoreCam",
    "as_spatial",
    "cam_to_heatmaps",
    "default_target_layer",
    "default_target_layer_name",
    "normalise_maps",
    "resolve_target_layer",
    "upsample_maps",
]
