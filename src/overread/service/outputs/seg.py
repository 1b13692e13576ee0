"""Segmentation-model output as a DICOM Segmentation (SEG) instance.

A mask sent as DICOM SEG lands in the same study and is drawn by PACS viewers and
OHIF on top of the source image, keeping segment labels, codes and the algorithm
that produced it. Classification models do not need this; segmentation models
(e.g. pneumothorax extent) do.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from overread.errors import ServiceError
from overread.results import Decision, ModelRef, Prediction
from overread.service.outputs import codes as oc
from overread.service.outputs.prediction import checked_findings
from overread.service.outputs.sr import MANUFACTURER, contributing_equipment

logger = logging.getLogger(__name__)


def _stack(masks: Mapping[str, np.ndarray], rows: int, cols: int, fractional: bool) -> np.ndarray:
    planes = []
    for label, mask in masks.items():
        array = np.squeeze(np.asarray(mask))
        if array.shape != (rows, cols):
            raise ServiceError(
                f"mask for {label!r} has shape {array.shape}; the source image is {rows}x{cols}"
            )
        if fractional:
            values = array.astype(np.float32)
            if not np.all(np.isfinite(values)) or values.min() < 0.0 or values.max() > 1.0:
                raise ServiceError(f"fractional mask for {label!r} must hold values in [0, 1]")
            planes.append(values)
        else:
            unique = np.unique(array)
            if not np.all(np.isin(unique, (0, 1, True, False))):
                raise ServiceError(
                    f"binary mask for {label!r} must hold only 0 and 1 (got {unique[:5]}...); "
                    "pass fractional=True for probabilities"
                )
            planes.append(array.astype(np.uint8))
    # highdicom expects (frames, rows, columns, segments).
    return np.stack(planes, axis=-1)[None, ...]


def build_seg(
    masks: Mapping[str, np.ndarray],
    source_datasets: Sequence[Dataset],
    model: ModelRef,
    *,
    fractional: bool = False,
    series_number: int = 9903,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    content_description: str = "overread AI segmentation (research use)",
) -> hd.seg.Segmentation:
    """Build a SEG instance from per-finding masks over one single-frame source image.

    Parameters
    ----------
    masks
        ``{finding label: mask}``, each mask (rows, columns) of the source image:
        0/1 for a binary segmentation, or probabilities in [0, 1] with
        ``fractional=True``. Segment numbers follow the mapping's order.
    source_datasets
        The source image (with pixel-matrix geometry); exactly one single-frame image.
    model
        The model that produced the masks (algorithm identification of each segment).
    fractional
        Store a FRACTIONAL (PROBABILITY) segmentation instead of BINARY.
    content_description
        What the segments are (shown by viewers); say so when they are not the output
        of a trained segmentation model.

    Raises
    ------
    ServiceError
        If there are no masks, a mask does not match the image, or values are invalid.
    """
    if not masks:
        raise ServiceError("build_seg needs at least one mask")
    sources = list(source_datasets)
    if len(sources) != 1:
        raise ServiceError(
            f"build_seg takes exactly one single-frame source image; got {len(sources)}"
        )
    source = sources[0]
    if int(getattr(source, "NumberOfFrames", 1) or 1) != 1:
        raise ServiceError("build_seg supports single-frame source images only")
    rows, cols = int(source.Rows), int(source.Columns)
    pixel_array = _stack(masks, rows, cols, fractional)

    algorithm = hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=model.version,
        parameters={"sha256": model.sha256} if model.sha256 else None,
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=label[:64],
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=oc.finding_concept(label).to_dicom(),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=generate_uid(),
            tracking_id=f"{model.name} {label}"[:64],
        )
        for number, label in enumerate(masks, start=1)
    ]
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=pixel_array,
        segmentation_type=(
            hd.seg.SegmentationTypeValues.FRACTIONAL
            if fractional
            else hd.seg.SegmentationTypeValues.BINARY
        ),
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name[:64],
        software_versions=model.version[:64],
        device_serial_number=model.sha256[:64] or "unknown",
        content_description=content_description[:64],
        content_label="OVERREAD",
        omit_empty_frames=False,
        contributing_equipment=[contributing_equipment(model)],
    )
    seg.SeriesDescription = content_description[:64]
    if "PatientOrientation" not in seg and "ImageOrientationPatient" not in source:
        # Projection images have no patient frame of reference; General Image then
        # needs the source's Patient Orientation (Type 2C, empty if unknown).
        seg.PatientOrientation = list(getattr(source, "PatientOrientation", None) or [])
    if any(oc.finding_concept(label).is_local for label in masks):
        oc.declare_local_scheme(seg)
    logger.info(
        "built SEG",
        extra={"sop_instance_uid": str(seg.SOPInstanceUID), "segments": len(descriptions)},
    )
    return seg


#: How SEG instances made from class activation maps describe themselves.
CAM_REGION_DESCRIPTION = "CAM regions, thresholded - not a segmentation model (research)"


def cam_region_masks(
    prediction: Prediction, source: Dataset, *, threshold: float = 0.5
) -> dict[str, np.ndarray]:
    """Binary masks of where a classifier looked, for its positive and referred findings.

    Each finding's class activation map is mapped onto the stored image (undoing the
    letterbox of the model input, as the overlays do) and thresholded at ``threshold``
    of its peak. This is a *stand-in* for a segmentation model: the regions are
    evidence maps, not delineated anatomy, and :data:`CAM_REGION_DESCRIPTION` labels
    the SEG built from them as such.

    Returns
    -------
    dict
        ``{finding label: (rows, columns) uint8 mask}``; empty without heatmaps or
        without positive or referred findings.
    """
    from overread.service.outputs.overlay import _heatmap_on_image

    heatmaps = prediction.heatmaps or {}
    shape = (int(source.Rows), int(source.Columns))
    geometry = prediction.letterbox
    masks: dict[str, np.ndarray] = {}
    for finding in checked_findings(prediction):
        heatmap = heatmaps.get(finding.label)
        if heatmap is None or finding.decision is Decision.NEGATIVE:
            continue
        region = _heatmap_on_image(heatmap, shape, shape, "auto", geometry) >= threshold
        if region.any():
            masks[finding.label] = region.astype(np.uint8)
    return masks


__all__ = ["CAM_REGION_DESCRIPTION", "build_seg", "cam_region_masks"]
