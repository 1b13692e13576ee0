"""The AI second read as a DICOM Comprehensive SR (TID 1500 Measurement Report).

Why TID 1500: it is the template PACS viewers, DICOMweb archives and research
tooling (highdicom, dcmjs, OHIF, dcmqi) already parse, and it carries exactly what a
radiologist needs to judge an AI result: who produced it (a *device* observer with
the model's name, version and checksum), about which image (references to the
source SOP instances), and for each finding a probability, the operating-point
threshold and the resulting present/absent decision.

Content tree (one measurement group per finding)::

    CONTAINER Imaging Measurement Report (TID 1500)
      Language, Observer context (device: overread model), Procedure reported
      Image Library (source images)
      CONTAINER Imaging Measurements
        CONTAINER Measurement Group (TID 1501)      -- one per finding
          Tracking identifier / UID, Finding (coded), Algorithm (TID 4019: name,
          version, sha256 + threshold parameters), Source image reference,
          NUM Probability [{ratio}], NUM Operating point threshold [{ratio}],
          NUM Threshold proximity [{ratio}] (when known),
          NUM Explanation trust score, Heatmap concentration, Deletion probability
          drop [{ratio}], NUM Predictive entropy, Mutual information [bit] (each
          when known),
          CODE <finding> = Present | Absent,
          CODE Conformal prediction set = Present only | ... (when known)
      CONTAINER Qualitative Evaluations
        TEXT Summary = "AI second read: possible pneumothorax (p=0.93) ..."
        TEXT Probability calibration applied = "Site calibration applied: ..." (when the
             service chose the calibration by the study's site)
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC
from functools import lru_cache
from typing import Any

import highdicom as hd
from highdicom.sr.templates import DEFAULT_LANGUAGE
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import generate_uid

from overread.errors import ServiceError
from overread.findings import Finding
from overread.results import (
    Decision,
    FindingResult,
    ModelRef,
    Prediction,
    calibration_statement,
)
from overread.service.outputs import codes as oc
from overread.service.outputs.prediction import (
    checked_findings,
    concept_of,
    model_identity,
)
from overread.service.outputs.sr_encoding import (
    CONTENT_SEQUENCE,
    Encoder,
    memoize_highdicom_iod_lookups,
)
from overread.service.verification import Verification

logger = logging.getLogger(__name__)

memoize_highdicom_iod_lookups()

#: Manufacturer written into every object overread creates.
MANUFACTURER = "overread"
#: The caveat every human-readable result carries.
RESEARCH_CAVEAT = "For research use only; not for diagnosis."
#: Added to the model's name in the text of an SR from an uncalibrated onboarded model.
UNCALIBRATED_NOTE = ", uncalibrated: every threshold 0.5"


def device_uid(model: ModelRef) -> str:
    """Return a stable UID for the model as an SR device observer.

    Derived from the model's name, version and checksum, so the same model package
    always appears as the same device in every report, and a retrained model
    (new checksum) as a different one.
    """
    return str(
        generate_uid(entropy_srcs=["overread-device", model.name, model.version, model.sha256])
    )


def contributing_equipment(model: ModelRef) -> hd.ContributingEquipment:
    """The Contributing Equipment item naming the AI model that made an object.

    PS3.3 C.12.1 (SOP Common): Purpose of Reference DCM 109102 "Processing Equipment",
    the manufacturer (overread), the model as Manufacturer's Model Name, overread's and
    the model's versions, the package checksum as serial number, when, and what it did.
    IHE AI Results expects it on every result object so a display can say which
    algorithm produced what it shows; highdicom puts the source image's acquisition
    equipment (109101) before it.
    """
    from datetime import datetime

    from overread import __version__

    return hd.ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=model.name[:64],
        software_versions=[f"overread {__version__}"[:64], model.version[:64]],
        device_serial_number=model.short_hash or None,
        contribution_datetime=datetime.now(UTC),
        contribution_description=f"AI inference: {model.name} {model.version}"[:64],
    )


def summary_text(prediction: Prediction) -> str:
    """Return the one-paragraph, plain-language summary of a prediction.

    Positive findings are listed by decreasing probability; "No Finding" is never
    listed as a "possible" finding.
    """
    model = model_identity(prediction)
    findings = checked_findings(prediction)
    ranked = sorted(findings, key=lambda f: -float(f.probability))
    positives = [
        f for f in ranked if f.decision is Decision.POSITIVE and f.label != Finding.NO_FINDING.value
    ]
    referred = [f for f in ranked if f.decision is Decision.INDETERMINATE]
    note = "" if model.calibrated else UNCALIBRATED_NOTE
    head = f"AI second read ({model.name} {model.version}{note})"
    sentences = []
    if positives:
        items = ", ".join(
            f"possible {f.label.lower()} (p={float(f.probability):.2f})" for f in positives
        )
        sentences.append(f"{head}: {items}.")
    if referred:
        items = ", ".join(
            f"{f.label.lower()} (p={float(f.probability):.2f}, threshold {float(f.threshold):.2f})"
            for f in referred
        )
        lead = "Too close to call" if positives else f"{head}: too close to call"
        sentences.append(f"{lead}, for a radiologist to judge: {items}.")
    negatives = [f for f in findings if f.decision is Decision.NEGATIVE]
    if positives or referred:
        if negatives:
            sentences.append("Other findings assessed are below their operating points.")
    else:
        sentences.append(
            f"{head}: no finding above its operating point "
            f"({len(findings)} finding{'s' if len(findings) != 1 else ''} assessed)."
        )
    sentences.append(RESEARCH_CAVEAT)
    return " ".join(sentences)


#: The qualitative evaluation an SR records for each decision.
_EVALUATION = {
    Decision.POSITIVE: oc.PRESENT,
    Decision.INDETERMINATE: oc.UNDETERMINED,
    Decision.NEGATIVE: oc.ABSENT,
}


# Concepts of TID 1501 and TID 4019 that highdicom's templates write.
_TRACKING_IDENTIFIER = oc.Concept("112039", "DCM", "Tracking Identifier")
_TRACKING_UID = oc.Concept("112040", "DCM", "Tracking Unique Identifier")
_FINDING = oc.Concept("121071", "DCM", "Finding")
_ALGORITHM_NAME = oc.Concept("111001", "DCM", "Algorithm Name")
_ALGORITHM_VERSION = oc.Concept("111003", "DCM", "Algorithm Version")
_ALGORITHM_PARAMETERS = oc.Concept("111002", "DCM", "Algorithm Parameters")
_MEASUREMENT_GROUP = oc.Concept("125007", "DCM", "Measurement Group")
_IMAGING_MEASUREMENTS = oc.Concept("126010", "DCM", "Imaging Measurements")
_HAS_OBS_CONTEXT = "HAS OBS CONTEXT"
_HAS_CONCEPT_MOD = "HAS CONCEPT MOD"
_CONTAINS = "CONTAINS"


def _measurement_group(
    encoder: Encoder,
    finding: FindingResult,
    model: ModelRef,
    source_items: Sequence[bytes],
    image_label: str = "",
) -> bytes:
    """One TID 1501 measurement group (a CONTAINER item), encoded: what highdicom's
    ``MeasurementsAndQualitativeEvaluations`` makes of the same finding."""
    concept = concept_of(finding)
    parameters = [f"threshold={float(finding.threshold):.6g}"]
    if model.sha256:
        parameters.append(f"sha256={model.sha256}")
    if not model.calibrated:
        parameters.append("calibrated=false")
    ratio = oc.UNIT_RATIO
    measurements: list[tuple[oc.Concept, float, oc.Concept]] = [
        (oc.PROBABILITY, float(finding.probability), ratio),
        (oc.OPERATING_THRESHOLD, float(finding.threshold), ratio),
    ]
    if finding.threshold_proximity is not None:
        measurements.append((oc.THRESHOLD_PROXIMITY, float(finding.threshold_proximity), ratio))
    measurements.extend(_evidence_measurements(finding))
    evaluations = [(concept, _EVALUATION[finding.decision])]
    if finding.conformal_set is not None:
        evaluations.append((oc.CONFORMAL_SET, oc.CONFORMAL_SET_VALUES[finding.conformal_set]))
    identifier = " ".join(p for p in (model.name, finding.label, image_label) if p)[:64]
    return _group(
        encoder,
        identifier,
        concept,
        model,
        parameters,
        [encoder.num_item(_CONTAINS, name, value, unit) for name, value, unit in measurements],
        evaluations,
        source_items,
    )


def _group(
    encoder: Encoder,
    identifier: str,
    finding_type: oc.Concept | None,
    model: ModelRef,
    parameters: Sequence[str],
    measurements: Sequence[bytes],
    evaluations: Sequence[tuple[oc.Concept, oc.Concept]],
    source_items: Sequence[bytes],
) -> bytes:
    children = [
        encoder.text_item(_HAS_OBS_CONTEXT, _TRACKING_IDENTIFIER, identifier),
        encoder.uid_item(_HAS_OBS_CONTEXT, _TRACKING_UID, str(generate_uid())),
    ]
    if finding_type is not None:
        children.append(encoder.code_content_item(_CONTAINS, _FINDING, finding_type))
    children.append(_algorithm(encoder, model))
    children.extend(
        encoder.text_item(_HAS_CONCEPT_MOD, _ALGORITHM_PARAMETERS, p) for p in parameters
    )
    children.extend(measurements)
    children.extend(
        encoder.code_content_item(_CONTAINS, name, value) for name, value in evaluations
    )
    children.extend(source_items)
    return encoder.container_item(_CONTAINS, _MEASUREMENT_GROUP, children, template_id="1501")


def _algorithm(encoder: Encoder, model: ModelRef) -> bytes:
    """TID 4019's name and version items (constant per model, so encoded once)."""
    return _algorithm_items(model.name, model.version, _hashable(encoder.character_set))


@lru_cache(maxsize=64)
def _algorithm_items(name: str, version: str, character_set: Any) -> bytes:
    encoder = Encoder(character_set)
    return encoder.text_item(_HAS_CONCEPT_MOD, _ALGORITHM_NAME, name) + encoder.text_item(
        _HAS_CONCEPT_MOD, _ALGORITHM_VERSION, version
    )


def _hashable(character_set: Any) -> Any:
    if character_set is None or isinstance(character_set, str):
        return character_set
    return tuple(character_set)


def _evidence_measurements(finding: FindingResult) -> list[tuple[oc.Concept, float, oc.Concept]]:
    """The finding's explanation trust and uncertainty, each that is known."""
    known = [
        (oc.TRUST_SCORE, finding.trust_score, oc.UNIT_RATIO),
        (oc.MAP_CONCENTRATION, finding.map_concentration, oc.UNIT_RATIO),
        (oc.DELETION_DROP, finding.deletion_drop, oc.UNIT_RATIO),
        (oc.PREDICTIVE_ENTROPY, finding.entropy, oc.UNIT_BIT),
        (oc.MUTUAL_INFORMATION, finding.mutual_information, oc.UNIT_BIT),
    ]
    return [(name, float(value), unit) for name, value, unit in known if value is not None]


def _check_sources(source_datasets: Sequence[Dataset]) -> list[Dataset]:
    sources = list(source_datasets)
    if not sources:
        raise ServiceError("build_sr needs at least one source image dataset")
    for ds in sources:
        for keyword in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID"):
            if not getattr(ds, keyword, None):
                raise ServiceError(f"source dataset lacks {keyword}; cannot reference it in the SR")
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(studies) != 1:
        raise ServiceError(
            f"source images belong to {len(studies)} studies ({', '.join(sorted(studies))}); "
            "one SR reports on one study"
        )
    return sources


def study_prediction(predictions: Sequence[Prediction]) -> Prediction:
    """Merge the predictions of one model on the images of one study.

    Per label, the image with the strongest decision (positive, then indeterminate, then
    negative; the higher probability among equals) speaks for the study, so a finding
    seen on the lateral view only is still reported. One prediction is returned as is.

    Raises
    ------
    ServiceError
        If there is no prediction, one failed, or they come from different models.
    """
    if not predictions:
        raise ServiceError("a study report needs at least one prediction")
    if len(predictions) == 1:
        return predictions[0]
    models = {model_identity(p) for p in predictions}
    if len(models) != 1:
        raise ServiceError(
            f"one study report covers one model; got {', '.join(sorted(m.name for m in models))}"
        )
    best: dict[str, FindingResult] = {}
    for prediction in predictions:
        for finding in checked_findings(prediction):
            current = best.get(finding.label)
            rank = (finding.decision.severity, finding.probability)
            if current is None or rank > (current.decision.severity, current.probability):
                best[finding.label] = finding
    return Prediction(path=None, ok=True, model=predictions[0].model, findings=list(best.values()))


def gate_text(predictions: Sequence[Prediction]) -> str:
    """What the input gate said of a study's images, for the report ("" when all passed).

    A refused image that was not analysed says "Not analysed: REASON"; one analysed
    at a reader's request says it is outside the model's intended use; a flagged one
    gives the flag's reason.
    """
    lines: list[str] = []
    for prediction in predictions:
        gate = prediction.gate
        if gate is None:
            continue
        if gate.refused:
            lines.append(f"Not analysed: {gate.reason}.")
        elif prediction.outside_intended_use or gate.overridden:
            lines.append(
                "Outside the model's intended use: analysed at a reader's request although "
                f"the input gate refused the image ({gate.reason})."
            )
        elif gate.status == "flag":
            lines.append(f"Input gate flag (analysed): {gate.reason}.")
    return " ".join(dict.fromkeys(lines))


def build_not_analysed_sr(
    readings: Sequence[tuple[Prediction, Dataset]], **kwargs: Any
) -> hd.sr.ComprehensiveSR:
    """The SR of a study the model did not analyse: no findings, and why not.

    ``readings`` are the study's images with their (refused) predictions; the
    keyword arguments are :func:`build_study_sr`'s.
    """
    if not readings:
        raise ServiceError("a study report needs at least one source image dataset")
    sources = _check_sources([source for _, source in readings])
    first = readings[0][0]
    model = model_identity(first)
    reason = gate_text([p for p, _ in readings]) or "Not analysed."
    stand_in = Prediction(path=None, ok=True, model=first.model)
    summary = (
        f"AI second read ({model.name} {model.version}): the study was not analysed. "
        f"{reason} {RESEARCH_CAVEAT}"
    )
    # TID 1500 needs one measurement group: it records the verdict on the images.
    encoder = _encoder(sources)
    group = _group(
        encoder,
        f"{model.name} not analysed"[:64],
        None,
        model,
        (),
        (),
        [(oc.INPUT_GATE, oc.NOT_ANALYSED)],
        _source_items(encoder, sources),
    )
    return _assemble(
        stand_in, model, [group], sources, encoder, summary=summary, **_sr_identity(kwargs)
    )


def _sr_identity(kwargs: dict[str, Any]) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "series_number": 9901,
        "instance_number": 1,
        "series_instance_uid": None,
        "sop_instance_uid": None,
        "institution_name": None,
        "institutional_department_name": None,
        "series_description": "overread AI second read (research use)",
        # A re-read that analyses nothing still supersedes the SRs sent before it.
        "predecessors": (),
    }
    unknown = set(kwargs) - set(defaults)
    if unknown:
        raise TypeError(f"unknown SR arguments: {', '.join(sorted(unknown))}")
    return {**defaults, **kwargs}


def image_label(source: Dataset, index: int, count: int) -> str:
    """How a measurement group names its image: the view, else the image's position."""
    if count == 1:
        return ""
    view = str(getattr(source, "ViewPosition", "") or "").strip()
    return view or f"image {index + 1}"


class _EncodedSR(hd.sr.ComprehensiveSR):
    """A :class:`highdicom.sr.ComprehensiveSR` whose Content Sequence is kept encoded.

    ``pydicom.dcmwrite`` copies the encoded tree as is; reading ``ContentSequence``
    parses it, and :attr:`content` gives highdicom's view of it (parsed from a copy
    the first time it is asked for), as for a document read from a file.
    """

    @property
    def content(self) -> hd.sr.ContentSequence:
        parsed = self.__dict__.get("_parsed_content")
        if parsed is None:
            parsed = hd.sr.ComprehensiveSR.from_dataset(self, copy=True).content
            self.__dict__["_parsed_content"] = parsed
        return parsed


def _encoder(sources: Sequence[Dataset]) -> Encoder:
    """The encoder of the SR's text: the SR takes its character set from its first source."""
    return Encoder(sources[0].get("SpecificCharacterSet"))


def _source_items(encoder: Encoder, sources: Sequence[Dataset]) -> list[bytes]:
    """The Source image items of a measurement group (one per referenced image)."""
    return encoder.datasets(
        hd.sr.SourceImageForMeasurementGroup.from_source_image(ds) for ds in sources
    )


def _comprehensive_sr(
    evidence: Sequence[Dataset], content: bytes, **kwargs: Any
) -> hd.sr.ComprehensiveSR:
    """A Comprehensive SR document holding the encoded root ``content`` items.

    highdicom builds the document around an empty TID 1500 root container (patient,
    study, evidence, equipment, flags: a few elements); the content is put in place as
    a raw element, and the document marked as encoded in Explicit VR Little Endian
    with its own character set, so that ``pydicom.dcmwrite`` writes the raw element
    as it is instead of parsing it to encode it again.
    """
    shell = hd.sr.ContainerContentItem(name=codes.DCM.ImagingMeasurementReport, template_id="1500")
    shell.ContentSequence = hd.sr.ContentSequence([])
    sr = hd.sr.ComprehensiveSR(evidence=evidence, content=shell, **kwargs)
    sr[CONTENT_SEQUENCE] = RawDataElement(
        Tag(CONTENT_SEQUENCE), "SQ", len(content), content, 0, False, True, True, False
    )
    sr.__class__ = _EncodedSR
    return sr


def build_study_sr(
    readings: Sequence[tuple[Prediction, Dataset]],
    *,
    series_number: int = 9901,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    institution_name: str | None = None,
    institutional_department_name: str | None = None,
    series_description: str = "overread AI second read (research use)",
    not_analysed: Sequence[Prediction] = (),
    verification: Verification | None = None,
    predecessors: Sequence[Dataset] = (),
    calibration: Mapping[str, Any] | None = None,
) -> hd.sr.ComprehensiveSR:
    """Build one TID 1500 Comprehensive SR for a model's predictions on a whole study.

    ``not_analysed`` are images of the study the input gate refused: the report
    names them as not analysed beside the findings of the others.

    Each image gets its own findings: one measurement group per (image, finding),
    referencing that image only and tracked as ``"<model> <finding> <view>"``, so a
    PA and a lateral view read as one examination give one report with both views'
    probabilities. The summary speaks for the study (:func:`study_prediction`).

    Parameters
    ----------
    readings
        ``(prediction, source image header)`` pairs, one per image of one study, all
        from one model.
    series_number, instance_number, series_instance_uid, sop_instance_uid
        Identity of the new SR instance; UIDs are generated when not given.
    institution_name, institutional_department_name
        Written to the General Equipment module.
    series_description
        Shown in PACS series lists; says this is an AI result for research use.
    verification
        A reader's verification: the SR is ``VERIFIED`` and ``FINAL`` with the
        Verifying Observer Sequence (the reader, the organisation, when), the reader's
        decisions replace the model's, and a "Reader review" text says who changed
        what. ``None``: ``UNVERIFIED`` and ``PRELIMINARY``, as AI results go out.
    predecessors
        Earlier SRs of the same result that went out (their headers suffice): listed
        in the Predecessor Documents Sequence, which this SR supersedes.
    calibration
        Which calibration the service applied (``summary["calibration"]``): stated in
        a "Probability calibration applied" text item beside the summary.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        A pydicom :class:`~pydicom.dataset.Dataset` subclass, ready to save or send.

    Raises
    ------
    ServiceError
        If a prediction failed or has invalid values, the predictions come from
        several models, or the sources cannot be referenced (missing UIDs, several
        studies).
    """
    if not readings:
        raise ServiceError("build_sr needs at least one source image dataset")
    if verification is not None:
        readings = [(verification.apply(prediction), source) for prediction, source in readings]
    sources = _check_sources([source for _, source in readings])
    merged = study_prediction([prediction for prediction, _ in readings])
    model = model_identity(merged)
    encoder = _encoder(sources)
    groups: list[bytes] = []
    for index, (prediction, source) in enumerate(readings):
        label = image_label(source, index, len(readings))
        source_items = _source_items(encoder, [source])
        groups.extend(
            _measurement_group(encoder, f, model, source_items, label)
            for f in checked_findings(prediction)
        )
    return _assemble(
        merged,
        model,
        groups,
        sources,
        encoder,
        gate=gate_text([*(prediction for prediction, _ in readings), *not_analysed]),
        series_number=series_number,
        instance_number=instance_number,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        institution_name=institution_name,
        institutional_department_name=institutional_department_name,
        series_description=series_description,
        verification=verification,
        predecessors=predecessors,
        calibration=calibration_statement(calibration),
    )


def build_sr(
    prediction: Prediction,
    source_datasets: Sequence[Dataset],
    *,
    series_number: int = 9901,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    institution_name: str | None = None,
    institutional_department_name: str | None = None,
    series_description: str = "overread AI second read (research use)",
) -> hd.sr.ComprehensiveSR:
    """Build the TID 1500 Comprehensive SR of a prediction on its source image(s).

    Parameters
    ----------
    prediction
        A prediction (see :class:`overread.results.Prediction`);
        every finding becomes one measurement group.
    source_datasets
        The image(s) the prediction was made on (headers suffice); they supply the
        patient and study, and are referenced from each measurement group. For
        predictions made per image, use :func:`build_study_sr`.
    series_number, instance_number, series_instance_uid, sop_instance_uid
        Identity of the new SR instance; UIDs are generated when not given.
    institution_name, institutional_department_name
        Written to the General Equipment module.
    series_description
        Shown in PACS series lists; says this is an AI result for research use.

    Returns
    -------
    highdicom.sr.ComprehensiveSR
        A pydicom :class:`~pydicom.dataset.Dataset` subclass, ready to save or send.

    Raises
    ------
    ServiceError
        If the prediction failed or has invalid values, or the sources cannot be
        referenced (missing UIDs, several studies).
    """
    sources = _check_sources(source_datasets)
    model = model_identity(prediction)
    findings = checked_findings(prediction)
    encoder = _encoder(sources)
    source_items = _source_items(encoder, sources)
    groups = [_measurement_group(encoder, f, model, source_items) for f in findings]
    return _assemble(
        prediction,
        model,
        groups,
        sources,
        encoder,
        series_number=series_number,
        instance_number=instance_number,
        series_instance_uid=series_instance_uid,
        sop_instance_uid=sop_instance_uid,
        institution_name=institution_name,
        institutional_department_name=institutional_department_name,
        series_description=series_description,
    )


def verification_options(verification: Verification | None) -> dict[str, Any]:
    """The flags of an SR document (highdicom's keyword arguments): ``UNVERIFIED`` and
    ``PRELIMINARY`` without a reader's verification, else ``VERIFIED`` and ``FINAL``
    with the reader as the Verifying Observer and their organisation."""
    if verification is None:
        return {"is_final": False, "is_verified": False}
    return {
        "is_final": True,
        "is_verified": True,
        "verifying_observer_name": verification.observer_name,
        "verifying_organization": verification.organization[:64] or MANUFACTURER,
    }


def stamp_verification(sr: Dataset, verification: Verification | None) -> None:
    """Date the Verifying Observer item when the reader verified, not when the document
    was built (highdicom's default, in local time)."""
    if verification is None:
        return
    moment = verification.verified_at.astimezone(UTC)
    sr.VerifyingObserverSequence[0].VerificationDateTime = moment.strftime("%Y%m%d%H%M%S.%f+0000")


def reader_review_item(verification: Verification) -> hd.sr.TextContentItem:
    """The "Reader review" text of a verified SR: who verified, what they changed."""
    return hd.sr.TextContentItem(
        name=oc.READER_REVIEW.to_dicom(),
        value=verification.statement[:1024],
        relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
    )


@lru_cache(maxsize=64)
def _preamble(model: ModelRef, character_set: Any) -> bytes:
    """The root items before the image library: language, the device observer (the
    model), the procedure reported. The same for every study a model package reads,
    so built with highdicom and encoded once per package and character set."""
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
    items: list[Dataset] = [
        *hd.sr.LanguageOfContentItemAndDescendants(DEFAULT_LANGUAGE),
        *hd.sr.ObservationContext(observer_device_context=observer),
        hd.sr.CodeContentItem(
            name=codes.DCM.ProcedureReported,
            value=oc.PROCEDURE_CHEST_XRAY.to_dicom(),
            relationship_type=hd.sr.RelationshipTypeValues.HAS_CONCEPT_MOD,
        ),
    ]
    return b"".join(Encoder(character_set).datasets(items))


def _assemble(
    prediction: Prediction,
    model: ModelRef,
    groups: Sequence[bytes],
    sources: Sequence[Dataset],
    encoder: Encoder,
    *,
    series_number: int,
    instance_number: int,
    series_instance_uid: str | None,
    sop_instance_uid: str | None,
    institution_name: str | None,
    institutional_department_name: str | None,
    series_description: str,
    summary: str | None = None,
    gate: str = "",
    verification: Verification | None = None,
    predecessors: Sequence[Dataset] = (),
    calibration: str = "",
) -> hd.sr.ComprehensiveSR:
    """The SR document around measurement groups: observer, library, summary, (when
    there is one) the input gate's statement, and (when verified) the reader's.

    The content tree is the one highdicom's ``MeasurementReport`` makes (TID 1500),
    encoded directly (see :mod:`overread.service.outputs.sr_encoding`)."""
    texts = [(oc.SUMMARY, summary or summary_text(prediction))]
    if gate:
        texts.append((oc.INPUT_GATE, gate[:1024]))
    if calibration:
        texts.append((oc.CALIBRATION_APPLIED, calibration[:1024]))
    if verification is not None:
        texts.append((oc.READER_REVIEW, verification.statement[:1024]))
    content = b"".join(
        [
            _preamble(model, _hashable(encoder.character_set)),
            *encoder.datasets(hd.sr.ImageLibrary(sources)),
            encoder.container_item(_CONTAINS, _IMAGING_MEASUREMENTS, groups),
            encoder.container_item(
                _CONTAINS,
                oc.QUALITATIVE_EVALUATIONS,
                [encoder.text_item(_CONTAINS, name, value) for name, value in texts],
            ),
        ]
    )

    sr = _comprehensive_sr(
        sources,
        content,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        institution_name=institution_name,
        institutional_department_name=institutional_department_name,
        previous_versions=list(predecessors) or None,
        contributing_equipment=[contributing_equipment(model)],
        **verification_options(verification),
    )
    stamp_verification(sr, verification)
    sr.SeriesDescription = series_description[:64]
    sr.ManufacturerModelName = f"{model.name}"[:64]
    sr.SoftwareVersions = model.version[:64]
    if model.short_hash:
        sr.DeviceSerialNumber = model.short_hash
    # The threshold concept is always local, so the scheme is always declared.
    oc.declare_local_scheme(sr)
    # Encoded as it will be written: dcmwrite copies the raw content tree as is.
    sr.set_original_encoding(False, True, sr._character_set)
    logger.info(
        "built SR",
        extra={
            "sop_instance_uid": str(sr.SOPInstanceUID),
            "study_instance_uid": str(sr.StudyInstanceUID),
            "model": f"{model.name} {model.version}",
            "groups": len(groups),
            "images": len(sources),
        },
    )
    return sr


__all__ = [
    "MANUFACTURER",
    "RESEARCH_CAVEAT",
    "UNCALIBRATED_NOTE",
    "build_not_analysed_sr",
    "build_sr",
    "build_study_sr",
    "contributing_equipment",
    "device_uid",
    "gate_text",
    "image_label",
    "reader_review_item",
    "stamp_verification",
    "study_prediction",
    "summary_text",
    "verification_options",
]
