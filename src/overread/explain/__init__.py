"""Explanations: class activation maps (CAM, Grad-CAM, Grad-CAM++, Score-CAM) and overlays."""

from overread.explain.cam import (
    CamMethod,
    GradCam,
    ScoreCam,
    cam_to_heatmaps,
    default_target_layer,
    normalise_maps,
    upsample_maps,
)
from overread.explain.overlay import blend_overlay, colourise, save_overlay

__all__ = [
    "CamMethod",
    "GradCam",
    "ScoreCam",
    "blend_overlay",
    "cam_to_heatmaps",
    "colourise",
    "default_target_layer",
    "normalise_maps",
    "save_overlay",
    "upsample_maps",
]
