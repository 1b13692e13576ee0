"""Explanations: CAM, Grad-CAM, Grad-CAM++, Score-CAM, occlusion, integrated gradients.

:func:`explain_maps` is the one entry point; :mod:`overread.explain.faithfulness`
measures whether maps are faithful to the model and point at the finding;
:func:`explanation_trust` scores one map for one result; overlays are cividis.
"""

from overread.explain.attribution import IntegratedGradients, Occlusion
from overread.explain.cam import (
    CamMethod,
    GradCam,
    ScoreCam,
    as_spatial,
    cam_to_heatmaps,
    default_target_layer,
    default_target_layer_name,
    normalise_maps,
    resolve_target_layer,
    upsample_maps,
)
from overread.explain.maps import (
    EXPLAIN_METHODS,
    LAYER_METHODS,
    ExplainMethod,
    explain_maps,
    parse_method,
)
from overread.explain.overlay import (
    CIVIDIS,
    blend_overlay,
    colourise,
    draw_region,
    save_overlay,
)
from overread.explain.trust import ExplanationTrust, explanation_trust, map_concentration

__all__ = [
    "CIVIDIS",
    "EXPLAIN_METHODS",
    "LAYER_METHODS",
    "CamMethod",
    "ExplainMethod",
    "ExplanationTrust",
    "GradCam",
    "IntegratedGradients",
    "Occlusion",
    "ScoreCam",
    "as_spatial",
    "blend_overlay",
    "cam_to_heatmaps",
    "colourise",
    "default_target_layer",
    "default_target_layer_name",
    "draw_region",
    "explain_maps",
    "explanation_trust",
    "map_concentration",
    "normalise_maps",
    "parse_method",
    "resolve_target_layer",
    "save_overlay",
    "upsample_maps",
]
