"""Probability samples for uncertainty: Monte Carlo dropout, and the sampling settings.

A pipeline turns one image into ``S`` calibrated probability samples: one per
test-time augmentation view (:mod:`overread.imaging.tta`), per Monte Carlo dropout
pass, and per ensemble member, all combined. Their mean is the probability the
decision uses; their spread gives the mutual information
(:mod:`overread.explain.uncertainty`).

Monte Carlo dropout (Gal & Ghahramani 2016) needs a network trained with dropout:
only the ``Dropout`` layers are switched to training mode (batch norm keeps its
running statistics) and the network is run ``T`` times under a seeded generator.
It runs on the torch network whatever runtime serves the package, since an exported
ONNX graph has dropout removed.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from overread.errors import InferenceError
from overread.imaging.tta import TestTimeAugmentation, flip_refusal
from overread.models.manifest import Manifest

_DROPOUT_TYPES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def dropout_layers(network: nn.Module) -> list[nn.Module]:
    """The network's dropout layers whose probability is above 0."""
    return [m for m in network.modules() if isinstance(m, _DROPOUT_TYPES) and float(m.p) > 0.0]


def mc_dropout_refusal(network: nn.Module, what: str) -> str | None:
    """Why Monte Carlo dropout cannot run on ``network`` (one line), or None."""
    if dropout_layers(network):
        return None
    zero = [m for m in network.modules() if isinstance(m, _DROPOUT_TYPES)]
    detail = f"its {len(zero)} dropout layer(s) have p = 0" if zero else "it has no dropout layers"
    return f"{what}: Monte Carlo dropout needs a network trained with dropout; {detail}"


def mc_dropout_logits(network: nn.Module, x: np.ndarray, passes: int, seed: int = 0) -> np.ndarray:
    """Logits ``(passes, N, L)`` with only the dropout layers active.

    Each image is run on its own, its dropout masks seeded from ``seed`` and a
    checksum of its pixels inside a forked RNG: the same image and seed give the same
    samples whatever else shares its batch (the gateway micro-batches studies), and
    the caller's random state is left alone.
    """
    if passes < 1:
        raise InferenceError(f"Monte Carlo dropout needs at least 1 pass, not {passes}")
    layers = dropout_layers(network)
    if not layers:
        raise InferenceError("Monte Carlo dropout needs dropout layers with p > 0")
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    was_training = network.training
    network.eval()
    for layer in layers:
        layer.train()
    try:
        rows: list[np.ndarray] = []
        with torch.random.fork_rng(devices=[]), torch.inference_mode():
            for row in tensor:
                # One pass of the image repeated: each copy gets its own dropout mask.
                torch.manual_seed(seed ^ zlib.crc32(row.numpy().tobytes()))
                copies = row[None].expand(passes, *row.shape).contiguous()
                rows.append(network(copies).numpy())
        if not rows:
            return np.zeros((passes, 0, 0), dtype=np.float32)
        out = list(np.stack(rows, axis=1))  # (passes, N, L)
    finally:
        network.train(was_training)
        if not was_training:
            network.eval()
    return np.stack(out).astype(np.float32)


@dataclass(frozen=True)
class SampleSettings:
    """How a pipeline draws probability samples for each image.

    ``tta`` None: the original image only; ``mc_dropout_passes`` 0: the plain
    network. Ensemble members add a factor of their own.
    """

    tta: TestTimeAugmentation | None = None
    mc_dropout_passes: int = 0
    mc_dropout_seed: int = 0

    @property
    def single_pass(self) -> bool:
        """True when each image gets one forward pass (per member)."""
        return self.tta is None and self.mc_dropout_passes == 0

    def describe(self) -> dict[str, Any]:
        """What produced the probabilities (recorded with a conformal calibration)."""
        return {
            "tta_views": self.tta.views if self.tta is not None else 1,
            "tta": self.tta.to_dict() if self.tta is not None else None,
            "mc_dropout_passes": self.mc_dropout_passes,
        }

    @classmethod
    def for_package(
        cls, manifest: Manifest, *, tta_views: int | None = None, mc_dropout: int | None = None
    ) -> SampleSettings:
        """The package's defaults (``uncertainty`` section), overridden where given."""
        section = manifest.uncertainty
        views = tta_views if tta_views is not None else (section.tta_views if section else 1)
        passes = (
            mc_dropout if mc_dropout is not None else (section.mc_dropout_passes if section else 0)
        )
        if views < 1:
            raise InferenceError(f"test-time augmentation needs at least 1 view, not {views}")
        if passes < 0:
            raise InferenceError(f"Monte Carlo dropout passes must be >= 0, not {passes}")
        tta = None
        if views > 1:
            ranges = section.tta.model_dump() if section else {}
            if ranges.get("horizontal_flip"):
                refusal = flip_refusal(manifest.accepts.body_parts)
                if refusal:
                    raise InferenceError(f"{manifest.name} {manifest.version}: {refusal}")
            tta = TestTimeAugmentation(views=views, **ranges)
        return cls(tta=tta, mc_dropout_passes=passes)

    def matches(self, recorded: dict[str, Any]) -> bool:
        """Whether probabilities made now are made as ``recorded`` ones were."""
        mine = self.describe()
        return all(recorded.get(k) == mine[k] for k in ("tta_views", "mc_dropout_passes")) and (
            mine["tta"] is None or recorded.get("tta") == mine["tta"]
        )


__all__ = [
    "SampleSettings",
    "dropout_layers",
    "mc_dropout_logits",
    "mc_dropout_refusal",
]
