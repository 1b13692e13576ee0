"""The bundled default chest X-ray package and how to rebuild it.

Until a trained model replaces it, ``cxr-default`` is a freshly initialised
:class:`~overread.models.networks.CxrConvNet`: it exercises every part of the path
(package verification, ONNX FP32/INT8, CAM, the CLI and the service) but its
findings mean nothing, and its manifest says so (``trained: false``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from overread.findings import CHEXPERT_LABELS
from overread.models.calibration import calibration_images
from overread.models.networks import build_network
from overread.models.package import write_package

DEFAULT_NAME = "cxr-default"
DEFAULT_ARCHITECTURE = "cxr-convnet"
DEFAULT_SIZE = 224

#: Which images the chest X-ray models are for.
CXR_ACCEPTS: dict[str, list[str]] = {
    "modalities": ["CR", "DX"],
    "body_parts": ["CHEST", "THORAX", "LUNG"],
    "view_positions": ["PA", "AP"],
    "sop_class_uids": [
        "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image Storage
        "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
        "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
    ],
}


def cxr_input_spec(size: int = DEFAULT_SIZE) -> dict[str, Any]:
    """The input spec of chest X-ray packages: one grey channel through ``cxr_chain``."""
    from overread.imaging.transforms import cxr_chain

    return {
        "size": size,
        "channels": 1,
        "chain": cxr_chain(size).to_spec(),
        "window": "the file's VOI window, else the 0.5-99.5 percentile window",
        "normalisation": "[0, 1] after MONOCHROME1 inversion (bone bright); zero padding",
    }


def build_untrained_default(out_dir: Path | str, *, version: str = "0.1.0", seed: int = 0) -> Path:
    """Write the untrained placeholder ``cxr-default`` package (FP32 + INT8 ONNX)."""
    torch.manual_seed(seed)
    network = build_network(DEFAULT_ARCHITECTURE, in_channels=1, num_classes=len(CHEXPERT_LABELS))
    spec = cxr_input_spec()
    images, source = calibration_images(64, DEFAULT_SIZE, spec["chain"], seed=seed)
    return write_package(
        out_dir,
        network=network,
        architecture=DEFAULT_ARCHITECTURE,
        labels=list(CHEXPERT_LABELS),
        input_spec=spec,
        name=DEFAULT_NAME,
        version=version,
        trained=False,
        intended_use=(
            "untrained placeholder: randomly initialised weights that exercise the software "
            "path only; not for any clinical or research interpretation"
        ),
        accepts=CXR_ACCEPTS,
        operating_points={
            label: {"balanced": 0.5, "high sensitivity": 0.3} for label in CHEXPERT_LABELS
        },
        training={"data": "none (untrained)", "seed": seed, "int8_calibration": source},
        metrics={},
        int8_calibration=images,
        overwrite=True,
    )


__all__ = [
    "CXR_ACCEPTS",
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_NAME",
    "DEFAULT_SIZE",
    "build_untrained_default",
    "cxr_input_spec",
]
