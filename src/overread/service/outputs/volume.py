"""DICOM outputs of a volumetric (CT) model: a SEG over the series and a TID 1500 SR.

The SEG references every slice of the source series; its segments are the lung and
one segment per nodule (so that each nodule can be referenced on its own), each
with the algorithm identification (name, version, family "Artificial
Intelligence") of the package. The SR (Comprehensive 3D, TID 1500) holds one
volumetric measurement group per nodule: volume (mm3), longest diameter (mm), mean
attenuation (HU), the Lung-RADS-style category, density and growth, the nodule's
box as SCOORD3D points in the patient frame and, when a SEG was made, the
reference to its segment. As every AI result the project sends, the SR is
UNVERIFIED and PRELIMINARY, and its summary says it is for research use.

Once a reader has reviewed the result, the SR is built again from the stored result
(:func:`build_volume_sr` with a ``verification``): ``VERIFIED`` and ``FINAL``, the
reader as Verifying Observer, a "Reader review" text saying who changed what, and
the SR it replaces in the Predecessor Documents Sequence; the SEG is the same object
as before and is referenced as it was. A label the reader decides negative takes its
nodules out of the verified SR (no measurement group, no SEG reference: the summary
states the reader's decision); a label the reader decides positive where the model
found nothing is stated as the reader's decision, with no measurement to give.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import unicodedata
from collections.abc import Mapping, Sequence
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from overread.errors import ServiceError
from overread.inference.nodules import growth_text
from overread.results import Decision, ModelRef, Prediction, Region
from overread.service.outputs import codes as oc
from overread.service.outputs.sr import (
    MANUFACTURER,
    RESEARCH_CAVEAT,
    contributing_equipment,
    device_uid,
    reader_review_item,
    stamp_verification,
    verification_options,
)
from overread.service.verification import Verification

logger = logging.getLogger(__name__)

#: SOP Class UIDs of the CT outputs.
SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
#: Where the CT outputs go in the study (the X-ray SR and SEG use 9901 and 9903).
SEG_SERIES_NUMBER = 9913
SR_SERIES_NUMBER = 9911
#: The SEG of a planar (radiograph) segmentation package.
PLANAR_SEG_SERIES_NUMBER = 9914

LUNG = codes.SCT.Lung
NODULE = codes.SCT.Nodule
_LONGEST_DIAMETER = codes.SCT.Diameter
_MEAN = codes.SCT.Mean
_ATTENUATION = hd.sr.CodedConcept("112031", "DCM", "Attenuation Coefficient")
#: The concept of the box's SCOORD3D item in each nodule's group.
IMAGE_REGION = hd.sr.CodedConcept("111030", "DCM", "Image Region")
_PROCEDURE_CT_CHEST = hd.sr.CodedConcept("169069000", "SCT", "CT of chest")


def _algorithm(model: ModelRef) -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(
        name=model.name,
        family=codes.cid7162.ArtificialIntelligence,
        version=model.version,
        parameters={"sha256": model.sha256} if model.sha256 else None,
    )


def build_volume_seg(
    label_map: npt.NDArray[np.uint8],
    labels: Mapping[int, str],
    sources: Sequence[Dataset],
    model: ModelRef,
    *,
    lung_value: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    baseline: bool = False,
    planar: bool = False,
) -> hd.seg.Segmentation:
    """A BINARY SEG of a label map ``(slices, rows, cols)`` over the series' slices.

    ``sources`` are the slice datasets in volume order (one per slice of the map);
    ``labels`` names each value of the map (``{1: "lung", 2: "nodule 1", ...}``).
    Empty frames are left out. ``planar``: the map is one radiograph's (one frame,
    series 9914, described as an X-ray segmentation).
    """
    if len(sources) != label_map.shape[0]:
        raise ServiceError(
            f"label map has {label_map.shape[0]} slices; the series has {len(sources)}"
        )
    present = {int(v) for v in np.unique(label_map) if v}
    values = [v for v in sorted(labels) if v in present]
    if not values:
        raise ServiceError("the segmentation is empty: nothing to send as SEG")
    algorithm = _algorithm(model)
    descriptions = []
    remap = np.zeros(256, dtype=np.uint8)
    for number, value in enumerate(values, start=1):
        remap[value] = number
        is_lung = value == lung_value
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=labels[value][:64],
                segmented_property_category=(
                    codes.SCT.Organ if is_lung else codes.SCT.MorphologicallyAbnormalStructure
                ),
                segmented_property_type=LUNG if is_lung else NODULE,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=generate_uid(),
                tracking_id=f"{model.name} {labels[value]}"[:64],
            )
        )
    description = (
        "overread CT baseline (HU threshold) - research use"
        if baseline
        else "overread AI X-ray segmentation (research use)"
        if planar
        else "overread AI CT segmentation (research use)"
    )
    seg = hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=remap[label_map],
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=PLANAR_SEG_SERIES_NUMBER if planar else SEG_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        manufacturer_model_name=model.name[:64],
        software_versions=model.version[:64],
        device_serial_number=model.sha256[:64] or "unknown",
        content_description=description[:64],
        content_label="OVERREAD",
        omit_empty_frames=True,
        contributing_equipment=[contributing_equipment(model)],
    )
    seg.SeriesDescription = description[:64]
    if planar and "ImageOrientationPatient" not in sources[0]:
        # General Image: Type 2C without a patient frame; the source's own (or empty).
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
        # Pixel Measures is conditional on a patient frame (not a projection's), and
        # without Slice Thickness (which a projection has none of) readers such as
        # highdicom refuse it: left out. The SEG has the source's rows and columns.
        shared = seg.SharedFunctionalGroupsSequence[0]
        if "PixelMeasuresSequence" in shared:
            del shared.PixelMeasuresSequence
    return seg


def segment_numbers(seg: Dataset, labels: Mapping[int, str]) -> dict[int, int]:
    """Label-map value -> SEG segment number (by segment label)."""
    by_label = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    return {value: by_label[name[:64]] for value, name in labels.items() if name[:64] in by_label}


def _box_points(region: Region) -> npt.NDArray[np.float64]:
    """The box's two opposite corners (LPS mm), as SCOORD3D MULTIPOINT data."""
    x0, y0, z0, x1, y1, z1 = region.box_mm
    return np.array([[x0, y0, z0], [x1, y1, z1]], dtype=np.float64)


def _group(
    region: Region,
    model: ModelRef,
    frame_of_reference: str,
    series_uid: str,
    seg: Dataset | None,
    segment_number: int | None,
) -> hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    algorithm = hd.sr.AlgorithmIdentification(name=model.name, version=model.version)
    measurements = [
        hd.sr.Measurement(
            name=codes.SCT.Volume,
            value=float(region.volume_mm3),
            unit=codes.UCUM.CubicMillimeter,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=_LONGEST_DIAMETER,
            value=float(region.longest_diameter_mm),
            unit=codes.UCUM.Millimeter,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=_ATTENUATION,
            value=float(region.mean_hu),
            unit=codes.UCUM.HounsfieldUnit,
            derivation=_MEAN,
            algorithm_id=algorithm,
        ),
        hd.sr.Measurement(
            name=oc.PROBABILITY.to_dicom(),
            value=float(region.score),
            unit=hd.sr.CodedConcept("1", "UCUM", "no units"),
            algorithm_id=algorithm,
        ),
    ]
    text = (
        f"{region.density}; Lung-RADS-style category {region.category}; "
        f"growth: {growth_text(region.growth)}; box (LPS mm) "
        + ", ".join(f"{v:.1f}" for v in region.box_mm)
    )
    kwargs: dict[str, Any] = {}
    if seg is not None and segment_number is not None:
        kwargs["referenced_segment"] = hd.sr.ReferencedSegment(
            sop_class_uid=str(seg.SOPClassUID),
            sop_instance_uid=str(seg.SOPInstanceUID),
            segment_number=segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
        )
    else:
        # No SEG (a detection model): the nodule is its centre; the box follows.
        kwargs["referenced_volume_surface"] = hd.sr.VolumeSurface(
            graphic_type=hd.sr.GraphicTypeValues3D.POINT,
            graphic_data=np.array([region.centre_mm], dtype=np.float64),
            frame_of_reference_uid=frame_of_reference,
            source_series=hd.sr.SourceSeriesForSegmentation(series_uid),
        )
    group = hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=generate_uid(), identifier=f"{model.name} nodule {region.index}"[:64]
        ),
        finding_type=NODULE,
        algorithm_id=algorithm,
        measurements=measurements,
        **kwargs,
    )
    # The box: its two opposite corners in the patient frame (SCOORD3D MULTIPOINT).
    group[0].ContentSequence.append(
        hd.sr.Scoord3DContentItem(
            name=IMAGE_REGION,
            graphic_type=hd.sr.GraphicTypeValues3D.MULTIPOINT,
            graphic_data=_box_points(region),
            frame_of_reference_uid=frame_of_reference,
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    group[0].ContentSequence.append(
        hd.sr.TextContentItem(
            name=oc.SUMMARY.to_dicom(),
            value=text[:1024],
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    )
    return group


def reader_withdrawn(decisions: Mapping[str, Decision]) -> set[str]:
    """The labels whose nodules a reader's decisions take out of the report."""
    return {label for label, decision in decisions.items() if decision is Decision.NEGATIVE}


_N = r"-?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?"
#: The warnings the pipeline generates, as the SR's TEXT items hold them (regular
#: expressions of the whole text): numbers and fixed words, no header value. A
#: de-identified export keeps these and replaces any other warning (a DICOM reader's
#: message can echo a header value, a UID holding a name).
GENERATED_WARNINGS: tuple[str, ...] = tuple(
    "Warning: " + pattern
    for pattern in (
        rf"the large airways found are {_N}% of the lung and airways \(expected under {_N}%\): "
        r"emphysema or a bulla joined to the trachea may have been left out of the lung",
        rf"{_N} or more nodule candidates: only the {_N} largest are reported "
        r"\(is the series a chest CT in HU\?\)",
        rf"{_N} nodule candidates kept from the strongest {_N} of {_N} blob peaks: "
        rf"the {_N} weaker were not scored",
        r"the series is not axial \(its slices do not run along the body's long axis\): "
        r"the classical lung mask's airway and dome rules were not applied",
        rf"gap of {_N} mm between slices at {_N} and {_N} mm \(typical step {_N} mm\): "
        rf"about {_N} missing slice\(s\)",
        rf"uneven slice spacing: steps from {_N} to {_N} mm",
        r"slice positions drift in-plane \(gantry tilt or sheared stack\): the affine "
        r"uses the mean step",
        rf"single slice: slice step taken as {_N} mm",
        rf"{_N} candidate\(s\) scoring at or above the operating point \(best {_N}\) could not "
        r"be measured \(no mask, or a diameter outside the measured range\): not reported as "
        r"nodules; a reader must look",
    )
)


def is_generated_warning(text: str) -> bool:
    """Whether a prediction's warning ``text`` is one the pipeline generates
    (:data:`GENERATED_WARNINGS`: numbers and fixed words, no header value)."""
    return any(re.fullmatch(pattern, "Warning: " + text) for pattern in GENERATED_WARNINGS)


def ascii_text(text: str) -> str:
    """``text`` folded to ASCII (accents dropped, compatibility forms such as ``²``
    unfolded, anything else ``?``): an SR written without a Specific Character Set is
    ASCII, and a warning can carry any character (a reader message, a path)."""
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(c for c in decomposed if not unicodedata.combining(c))
    return kept.encode("ascii", "replace").decode("ascii")


#: What the report says when a candidate at or above the operating point was found but
#: could not be measured (the finding is INDETERMINATE): never "no nodule found".
UNMEASURED_SUMMARY = (
    "a candidate at or above the operating point could not be measured: "
    "indeterminate, review the series"
)


def unmeasured_candidate(prediction: Prediction) -> bool:
    """Whether the model found a nodule it gave no measurement of: a finding that is
    positive or INDETERMINATE (an unmeasured candidate at or above the operating point)
    with no region reported."""
    return not prediction.regions and any(
        f.positive or f.decision is not Decision.NEGATIVE for f in prediction.findings
    )


def volume_summary(
    prediction: Prediction,
    *,
    verified: bool = False,
    decisions: Mapping[str, Decision] | None = None,
) -> str:
    """The report's summary line for a series (``verified``: a reader reviewed it;
    ``decisions``: the reader's, where they differ from the model's). The regions are
    those the report gives (a label the reader decided negative has none left)."""
    model = prediction.model
    regions = prediction.regions or []
    decisions = decisions or {}
    positive = sorted(label for label, d in decisions.items() if d is Decision.POSITIVE)
    negative = sorted(reader_withdrawn(decisions))
    if not regions and negative:
        found = (
            f"no {' or '.join(negative)}, by the reader's decision "
            "(the AI candidates were set aside)"
        )
    elif not regions and positive:
        found = (
            f"{' and '.join(positive)} present, by the reader's decision "
            "(the AI gave no measurement of it)"
        )
    elif not regions and unmeasured_candidate(prediction):
        found = UNMEASURED_SUMMARY
    elif not regions:
        found = "no nodule found"
    else:
        found = f"{len(regions)} nodule(s): " + "; ".join(
            f"#{r.index} {r.longest_diameter_mm:.1f} mm {r.density}, category {r.category.split(' ')[0]}"
            f", {growth_text(r.growth)}"
            for r in regions
        )
    review = (
        "Reviewed by a reader (see Reader review)." if verified else "Not verified by a reader."
    )
    return (f"AI second read ({model.name} {model.version}): {found}. {review} {RESEARCH_CAVEAT}")[
        :1024
    ]


def build_volume_sr(
    prediction: Prediction,
    sources: Sequence[Dataset],
    *,
    seg: Dataset | None = None,
    segments: Mapping[int, int] | None = None,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    instance_number: int = 1,
    verification: Verification | None = None,
    predecessors: Sequence[Dataset] = (),
) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 SR of a volumetric prediction on a series (``sources`` its slices).

    ``segments`` maps a region's ``segment_number`` (its label-map value) to the SEG's
    segment number; regions are referenced by their box when there is no SEG.
    ``verification``: a reader's, which makes the SR ``VERIFIED`` and ``FINAL`` (the
    reader's decisions replace the model's, a "Reader review" text says who and
    what); ``predecessors``: the SRs it supersedes (their headers suffice), listed in
    the Predecessor Documents Sequence.
    """
    if not sources:
        raise ServiceError("an SR needs the source series")
    if verification is not None:
        prediction = verification.apply(prediction)
        withdrawn = reader_withdrawn(verification.decisions)
        if withdrawn and prediction.regions:
            # The reader says there is no such nodule: none of its measurements is given.
            prediction = dataclasses.replace(
                prediction, regions=[r for r in prediction.regions if r.label not in withdrawn]
            )
    model = prediction.model
    first = sources[0]
    frame = str(getattr(first, "FrameOfReferenceUID", "") or "")
    if not frame:
        raise ServiceError("the source series has no Frame of Reference UID")
    series_uid = str(first.SeriesInstanceUID)
    groups = [
        _group(
            region,
            model,
            frame,
            series_uid,
            seg,
            None
            if segments is None or region.segment_number is None
            else segments.get(region.segment_number),
        )
        for region in prediction.regions or []
    ]
    if not groups:
        # TID 1500 needs one measurement group: it says the series was read (and, where
        # the reader decided a nodule present that the model did not find, that there
        # is no measurement of it).
        reader_positive = verification is not None and any(
            d is Decision.POSITIVE for d in verification.decisions.values()
        )
        if reader_positive:
            what = "no measurement"
        elif unmeasured_candidate(prediction):
            what = "unmeasured candidate, indeterminate"
        else:
            what = "no nodule"
        groups = [
            hd.sr.MeasurementsAndQualitativeEvaluations(  # type: ignore[list-item]
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=generate_uid(), identifier=f"{model.name} {what}"[:64]
                ),
                algorithm_id=hd.sr.AlgorithmIdentification(name=model.name, version=model.version),
                source_images=[
                    hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources
                ],
            )
        ]
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid(model),
            name=model.name,
            manufacturer_name=MANUFACTURER,
            model_name=f"{model.name} {model.version}"[:64],
            serial_number=model.short_hash or None,
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURE_CT_CHEST,
        imaging_measurements=groups,
        referenced_images=None if seg is not None else list(sources),
    )
    evaluations = hd.sr.ContainerContentItem(
        name=oc.QUALITATIVE_EVALUATIONS.to_dicom(),
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )
    evaluations.ContentSequence = hd.sr.ContentSequence(
        [
            hd.sr.TextContentItem(
                name=oc.SUMMARY.to_dicom(),
                value=volume_summary(
                    prediction,
                    verified=verification is not None,
                    decisions=None if verification is None else verification.decisions,
                ),
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        ]
    )
    for warning in prediction.warnings:
        # The run's warnings (an implausible airway share, a candidate cap): the
        # reader sees what the log says.
        evaluations.ContentSequence.append(
            hd.sr.TextContentItem(
                name=oc.COMMENT.to_dicom(),
                value=f"Warning: {ascii_text(warning)}",
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            )
        )
    if verification is not None:
        evaluations.ContentSequence.append(reader_review_item(verification))
    report[0].ContentSequence.append(evaluations)
    evidence: list[Dataset] = list(sources)
    if seg is not None:
        evidence.append(seg)
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        previous_versions=list(predecessors) or None,
        contributing_equipment=[contributing_equipment(model)],
        **verification_options(verification),
    )
    stamp_verification(sr, verification)
    if verification is not None:
        oc.declare_local_scheme(sr)  # the "Reader review" concept is a local one
    sr.SeriesDescription = "overread AI CT nodules (research use)"
    sr.ManufacturerModelName = model.name[:64]
    sr.SoftwareVersions = model.version[:64]
    logger.info(
        "built CT SR",
        extra={
            "sop_instance_uid": str(sr.SOPInstanceUID),
            "nodules": len(prediction.regions or []),
            "verified": verification is not None,
        },
    )
    return sr


def evidence_of(sr: Dataset) -> list[tuple[str, str, str]]:
    """The objects an SR was built on, ``(series UID, SOP Class UID, SOP Instance UID)``
    in the order of its Current Requested Procedure Evidence Sequence."""
    return [
        (
            str(series.SeriesInstanceUID),
            str(ref.ReferencedSOPClassUID),
            str(ref.ReferencedSOPInstanceUID),
        )
        for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for ref in series.get("ReferencedSOPSequence", [])
    ]


def source_series(sr: Dataset) -> set[str]:
    """The image series a CT SR reports on (its evidence other than the SEG)."""
    return {series for series, sop_class, _ in evidence_of(sr) if sop_class != SEGMENTATION}


def region_segments(seg: Dataset, regions: Sequence[Region]) -> dict[int, int]:
    """Region ``segment_number`` (label-map value) -> the SEG's segment number, by the
    segment labels :func:`build_volume_seg` wrote (``"<label> <index>"``)."""
    by_label = {str(item.SegmentLabel): int(item.SegmentNumber) for item in seg.SegmentSequence}
    found: dict[int, int] = {}
    for region in regions:
        number = by_label.get(f"{region.label} {region.index}"[:64])
        if region.segment_number is not None and number is not None:
            found[region.segment_number] = number
    return found


def build_volume_outputs(
    prediction: Prediction,
    sources: Sequence[Dataset],
    label_map: npt.NDArray[np.uint8] | None,
    labels: Mapping[int, str],
    *,
    baseline: bool = False,
    predecessors: Sequence[Dataset] = (),
    planar: bool = False,
) -> list[Dataset]:
    """SEG (when there is a label map with something in it) and SR of one series;
    ``predecessors``: the SRs of an earlier read of the series that the SR supersedes.

    ``planar`` (a radiograph's mask): the SEG only; a radiograph has no patient frame
    of reference for the SR's 3-D coordinates, and there is nothing to measure.
    """
    seg: hd.seg.Segmentation | None = None
    numbers: dict[int, int] | None = None
    if label_map is not None and any(int(v) in labels for v in np.unique(label_map) if v):
        seg = build_volume_seg(
            label_map, labels, sources, prediction.model, baseline=baseline, planar=planar
        )
        if planar:
            return [seg]
        numbers = segment_numbers(seg, labels)
    if planar:
        return []
    sr = build_volume_sr(prediction, sources, seg=seg, segments=numbers, predecessors=predecessors)
    return [d for d in (seg, sr) if d is not None]


__all__ = [
    "COMPREHENSIVE_3D_SR",
    "GENERATED_WARNINGS",
    "PLANAR_SEG_SERIES_NUMBER",
    "SEGMENTATION",
    "SEG_SERIES_NUMBER",
    "SR_SERIES_NUMBER",
    "UNMEASURED_SUMMARY",
    "ascii_text",
    "build_volume_outputs",
    "build_volume_seg",
    "build_volume_sr",
    "evidence_of",
    "is_generated_warning",
    "reader_withdrawn",
    "region_segments",
    "segment_numbers",
    "source_series",
    "unmeasured_candidate",
    "volume_summary",
]
