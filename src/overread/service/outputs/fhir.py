"""The AI second read as a FHIR R4 transaction Bundle.

Electronic health records and RIS take results over FHIR, not DICOM. The bundle
holds:

* a ``Device`` for the model (name, version, manufacturer "overread", package
  sha256 as an identifier), so every observation says which model produced it;
* one ``Observation`` per finding: the finding's code (SNOMED CT where one exists),
  the probability as ``valueQuantity`` (UCUM "1"), interpretation ``POS``/``NEG`` at
  the operating point, the threshold and threshold proximity as components (and,
  where known, the explanation trust score with its map concentration and deletion
  drop, predictive entropy and mutual information in bits, and the conformal
  prediction set as a ``valueCodeableConcept``), ``device`` = the model,
  ``derivedFrom`` = the imaging study;
* a ``DiagnosticReport`` (status ``preliminary``, category ``RAD``, LOINC code for
  the chest X-ray examination, the plain-language ``conclusion``, coded positive
  findings in ``conclusionCode``, ``imagingStudy`` referencing the study by its
  Study Instance UID) whose ``result`` lists the observations.

The resources use only elements whose shape is identical in FHIR R4 (4.0.1) and
R4B (4.3.0); the test-suite validates the output with ``fhir.resources.R4B``.
The bundle is a ``transaction`` so a FHIR server creates all resources at once.
Patient and study are referenced by identifier (logical references), because the
service knows the DICOM identifiers, not the server's resource ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydicom.dataset import Dataset

from overread.errors import ServiceError
from overread.findings import Finding
from overread.imaging import ImageMetadata
from overread.results import (
    Decision,
    FindingResult,
    ModelRef,
    Prediction,
    ResultSummary,
    StudyHeader,
    calibration_statement,
)
from overread.service.outputs import codes as oc
from overread.service.outputs.prediction import (
    checked_findings,
    concept_of,
    model_identity,
)
from overread.service.outputs.sr import MANUFACTURER, RESEARCH_CAVEAT, gate_text, summary_text
from overread.service.verification import ReportStatus, Verification, verification_of

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: FHIR identifier system for DICOM UIDs (values are ``urn:oid:<uid>``).
DICOM_UID_SYSTEM = "urn:dicom:uid"
#: Identifier system for a model package's sha256.
MODEL_SHA256_SYSTEM = "urn:overread:model-package-sha256"
#: The DiagnosticReport extension saying which probability calibration the service applied.
CALIBRATION_EXTENSION = "urn:overread:fhir:extension:probability-calibration"
UCUM_SYSTEM = oc.FHIR_SYSTEMS["UCUM"]
_INTERPRETATION = {
    Decision.POSITIVE: oc.FHIR_POSITIVE,
    Decision.NEGATIVE: oc.FHIR_NEGATIVE,
    Decision.INDETERMINATE: oc.FHIR_INDETERMINATE,
}


def _urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def _study_date(ds: Dataset) -> str | None:
    """Return the study date as a FHIR ``dateTime`` (date only: DICOM times lack a zone)."""
    raw = str(getattr(ds, "StudyDate", "") or getattr(ds, "ContentDate", "") or "")
    if len(raw) == 8 and raw.isdigit():
        return f"{raw[:4]}-{raw[4:6]}-{raw[6:]}"
    return None


def _probability(value: float) -> dict[str, Any]:
    return {
        "value": round(float(value), 6),
        "unit": "probability",
        "system": UCUM_SYSTEM,
        "code": "1",
    }


def _bits(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": "bit", "system": UCUM_SYSTEM, "code": "bit"}


def _evidence_components(finding: FindingResult) -> list[dict[str, Any]]:
    """Observation components for the finding's explanation trust and uncertainty."""
    quantities = [
        (oc.TRUST_SCORE, finding.trust_score, _probability),
        (oc.MAP_CONCENTRATION, finding.map_concentration, _probability),
        (oc.DELETION_DROP, finding.deletion_drop, _probability),
        (oc.PREDICTIVE_ENTROPY, finding.entropy, _bits),
        (oc.MUTUAL_INFORMATION, finding.mutual_information, _bits),
    ]
    components = [
        {"code": {"coding": [concept.to_fhir()]}, "valueQuantity": quantity(float(value))}
        for concept, value, quantity in quantities
        if value is not None
    ]
    if finding.conformal_set is not None:
        value = oc.CONFORMAL_SET_VALUES[finding.conformal_set]
        components.append(
            {
                "code": {"coding": [oc.CONFORMAL_SET.to_fhir()]},
                "valueCodeableConcept": {
                    "coding": [value.to_fhir()],
                    "text": finding.conformal_set,
                },
            }
        )
    return components


def _subject(ds: Dataset) -> dict[str, Any]:
    patient_id = str(getattr(ds, "PatientID", "") or "")
    if not patient_id:
        raise ServiceError("source dataset has no Patient ID; the FHIR report needs a subject")
    reference: dict[str, Any] = {"type": "Patient", "identifier": {"value": patient_id}}
    issuer = str(getattr(ds, "IssuerOfPatientID", "") or "")
    if issuer:
        reference["identifier"]["assigner"] = {"display": issuer}
    name = getattr(ds, "PatientName", None)
    if name:
        # The alphabetic group only (not ideographic/phonetic), as "Given Family".
        parts = [name.name_prefix, name.given_name, name.middle_name, name.family_name]
        display = " ".join(str(p) for p in parts if p) or str(name).split("=")[0]
        reference["display"] = display.replace("^", " ").strip()
    return reference


def build_fhir_report(
    prediction: Prediction,
    source_dataset: Dataset,
    *,
    additional_sources: Sequence[Dataset] = (),
    sr_sop_instance_uid: str | None = None,
    status: ReportStatus = ReportStatus.PRELIMINARY,
) -> dict[str, Any]:
    """Build the FHIR R4 transaction Bundle of a prediction.

    Parameters
    ----------
    prediction
        The prediction to report.
    source_dataset
        The image (header) the prediction was made on: patient, study and dates.
    additional_sources
        Other images of the same examination that were read (e.g. the lateral
        view); with any, the report's code is "XR Chest 2 Views".
    sr_sop_instance_uid
        SOP Instance UID of the DICOM SR built from the same prediction, recorded
        as an identifier of the DiagnosticReport so both can be matched.
    status
        Of the DiagnosticReport and its Observations: ``preliminary`` (AI only),
        ``final`` (verified by a reader) or ``amended`` (corrected after it went out).

    Returns
    -------
    dict
        A JSON-serialisable FHIR Bundle (``resourceType`` "Bundle").

    Raises
    ------
    ServiceError
        If the prediction is unusable or the source lacks patient or study UIDs.
    """
    model = model_identity(prediction)
    findings = checked_findings(prediction)
    study_uid = str(getattr(source_dataset, "StudyInstanceUID", "") or "")
    if not study_uid:
        raise ServiceError("source dataset has no Study Instance UID; cannot reference the study")
    subject = _subject(source_dataset)
    effective = _study_date(source_dataset)
    issued = datetime.now(UTC).isoformat(timespec="milliseconds")
    study_ref = {
        "type": "ImagingStudy",
        "identifier": {"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{study_uid}"},
    }
    body_site = {"coding": [oc.BODY_SITE_CHEST.to_fhir()]}

    device_url = _urn()
    device: dict[str, Any] = {
        "resourceType": "Device",
        "status": "active",
        "manufacturer": MANUFACTURER,
        "deviceName": [{"name": model.name, "type": "model-name"}],
        "version": [{"value": model.version}],
        "note": [{"text": f"AI second reader model. {RESEARCH_CAVEAT}"}],
    }
    if model.sha256:
        device["identifier"] = [{"system": MODEL_SHA256_SYSTEM, "value": model.sha256}]
    entries: list[dict[str, Any]] = [
        {"fullUrl": device_url, "resource": device, "request": {"method": "POST", "url": "Device"}}
    ]

    observation_urls: list[str] = []
    conclusion_codes: list[dict[str, Any]] = []
    for finding in findings:
        concept = concept_of(finding)
        decision = finding.decision
        components: list[dict[str, Any]] = [
            {
                "code": {"coding": [oc.OPERATING_THRESHOLD.to_fhir()]},
                "valueQuantity": _probability(float(finding.threshold)),
            }
        ]
        if finding.threshold_proximity is not None:
            components.append(
                {
                    "code": {"coding": [oc.THRESHOLD_PROXIMITY.to_fhir()]},
                    "valueQuantity": _probability(float(finding.threshold_proximity)),
                }
            )
        components.extend(_evidence_components(finding))
        observation: dict[str, Any] = {
            "resourceType": "Observation",
            "status": status.value,
            "category": [{"coding": [dict(oc.FHIR_OBSERVATION_IMAGING)]}],
            "code": {"coding": [concept.to_fhir()], "text": finding.label},
            "subject": subject,
            "issued": issued,
            "valueQuantity": _probability(float(finding.probability)),
            "interpretation": [{"coding": [dict(_INTERPRETATION[decision])]}],
            "bodySite": body_site,
            "device": {"reference": device_url, "display": f"{model.name} {model.version}"},
            "derivedFrom": [study_ref],
            "component": components,
            "note": [
                {
                    "text": (
                        f"Probability {float(finding.probability):.3f} against operating-point "
                        f"threshold {float(finding.threshold):.3f}. {RESEARCH_CAVEAT}"
                    )
                }
            ],
        }
        if effective:
            observation["effectiveDateTime"] = effective
        url = _urn()
        observation_urls.append(url)
        entries.append(
            {
                "fullUrl": url,
                "resource": observation,
                "request": {"method": "POST", "url": "Observation"},
            }
        )
        if (
            decision is Decision.POSITIVE
            and finding.label != Finding.NO_FINDING.value
            and not concept.is_local
        ):
            conclusion_codes.append({"coding": [concept.to_fhir()], "text": finding.label})

    code = oc.LOINC_XR_CHEST_2_VIEWS if additional_sources else oc.LOINC_XR_CHEST_SINGLE_VIEW
    report: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "status": status.value,
        "category": [{"coding": [dict(oc.FHIR_CATEGORY_RAD)]}],
        "code": {"coding": [code.to_fhir()], "text": code.meaning},
        "subject": subject,
        "issued": issued,
        "imagingStudy": [study_ref],
        "result": [{"reference": url} for url in observation_urls],
        "conclusion": summary_text(prediction),
    }
    if effective:
        report["effectiveDateTime"] = effective
    if conclusion_codes:
        report["conclusionCode"] = conclusion_codes
    accession = str(getattr(source_dataset, "AccessionNumber", "") or "")
    identifiers: list[dict[str, Any]] = []
    if sr_sop_instance_uid:
        identifiers.append({"system": DICOM_UID_SYSTEM, "value": f"urn:oid:{sr_sop_instance_uid}"})
    if identifiers:
        report["identifier"] = identifiers
    if accession:
        report["basedOn"] = [
            {"type": "ServiceRequest", "identifier": {"value": accession}, "display": "Accession"}
        ]
    entries.append(
        {
            "fullUrl": _urn(),
            "resource": report,
            "request": {"method": "POST", "url": "DiagnosticReport"},
        }
    )
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "timestamp": issued,
        "entry": entries,
    }


class ResultNotFoundError(ServiceError, LookupError):
    """No stored result of a study to report (the REST API answers 404)."""


#: SOP Class UID of the Comprehensive SR the gateway sends with each result.
_COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
#: A CT result's SR (one per series; the report names the first).
_COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def study_header(header: ImageMetadata) -> StudyHeader:
    """The header facts a FHIR report needs, as stored with a result (``summary["study"]``)."""
    return StudyHeader(
        study_instance_uid=header.study_instance_uid or "",
        patient_id=header.patient_id or "",
        patient_name=header.patient_name or "",
        issuer_of_patient_id=header.issuer_of_patient_id or "",
        study_date=header.study_date or "",
        accession_number=header.accession_number or "",
    )


def _header_dataset(study: StudyHeader, study_uid: str) -> Dataset:
    ds = Dataset()
    ds.StudyInstanceUID = study.study_instance_uid or study_uid
    ds.PatientID = study.patient_id
    if study.patient_name:
        ds.PatientName = study.patient_name
    if study.issuer_of_patient_id:
        ds.IssuerOfPatientID = study.issuer_of_patient_id
    if study.study_date:
        ds.StudyDate = study.study_date
    if study.accession_number:
        ds.AccessionNumber = study.accession_number
    return ds


def _stored_predictions(summary: ResultSummary, model: ModelRef) -> list[Prediction]:
    """The successful predictions of a stored result, each under the result's model
    where its own identity lacks a name, version or checksum."""
    predictions = []
    for _, prediction in summary.usable():
        own = prediction.model
        prediction.model = ModelRef(
            name=own.name or model.name,
            version=own.version or model.version,
            sha256=own.sha256 or model.sha256,
        )
        predictions.append(prediction)
    return predictions


def fhir_report_for_result(result: Any, verification: Verification | None = None) -> dict[str, Any]:
    """The FHIR R4 transaction Bundle of one stored result (a ``Result`` row).

    With a reader's ``verification`` the report is ``final`` or ``amended``, states
    the reader's decisions and says who verified it; without, ``preliminary``.

    Built from what the gateway stored with the result: every image's findings
    (``summary["instances"]``) merged into one study report as the SR is
    (:func:`~overread.service.outputs.sr.study_prediction`), the study's header facts
    (``summary["study"]``), and the SR sent with it (its SOP Instance UID becomes an
    identifier of the DiagnosticReport).

    Raises
    ------
    ResultNotFoundError
        If the result holds no successful prediction.
    ServiceError
        If the stored header lacks the patient ID.
    """
    from overread.service.outputs.sr import study_prediction

    summary = ResultSummary.from_dict(result.summary)
    model = ModelRef(name=str(result.model_name), version=str(result.model_version))
    predictions = _stored_predictions(summary, model)
    if not predictions:
        raise ResultNotFoundError(
            f"study {result.study_instance_uid}: result {result.id} has no successful prediction"
        )
    source = _header_dataset(summary.study or StudyHeader(), str(result.study_instance_uid))
    sr_uid = next(
        (
            str(a["sop_instance_uid"])
            for a in result.artifacts or []
            if a.get("sop_class_uid") in (_COMPREHENSIVE_SR, _COMPREHENSIVE_3D_SR)
        ),
        None,
    )
    merged = study_prediction(predictions)
    if verification is not None:
        merged = verification.apply(merged)
    bundle = build_fhir_report(
        merged,
        source,
        additional_sources=[source] * (len(predictions) - 1),
        sr_sop_instance_uid=sr_uid,
        status=ReportStatus.PRELIMINARY if verification is None else verification.status,
    )
    bundle = _with_gate_note(bundle, gate_text(summary.instances))
    bundle = _with_calibration(bundle, summary.calibration)
    return bundle if verification is None else _with_gate_note(bundle, verification.statement)


def _with_calibration(
    bundle: dict[str, Any], calibration: Mapping[str, Any] | None
) -> dict[str, Any]:
    """Which calibration decided the findings, as an extension of the DiagnosticReport
    (:data:`CALIBRATION_EXTENSION`): the statement as read by people, then the facts
    (``calibration`` site or global, the study's site and where it came from, the
    package's site and method, the reason a global one was kept)."""
    statement = calibration_statement(calibration)
    if calibration is None or not statement:
        return bundle
    parts: list[dict[str, Any]] = [
        {"url": "statement", "valueString": statement},
        {"url": "calibration", "valueCode": str(calibration.get("calibration", ""))},
    ]
    for key, url in (
        ("site", "site"),
        ("source", "siteSource"),
        ("package_site", "packageSite"),
        ("method", "method"),
        ("reason", "reason"),
    ):
        value = calibration.get(key)
        if value:
            parts.append({"url": url, "valueString": str(value)})
    for label, reason in sorted((calibration.get("fallback") or {}).items()):
        parts.append({"url": "fallback", "valueString": f"{label}: {reason}"})
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "DiagnosticReport":
            resource.setdefault("extension", []).append(
                {"url": CALIBRATION_EXTENSION, "extension": parts}
            )
    return bundle


def _with_gate_note(bundle: dict[str, Any], note: str) -> dict[str, Any]:
    """The input gate's statement (a flag, or a result outside the intended use)
    appended to the DiagnosticReport's conclusion."""
    if not note:
        return bundle
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if resource.get("resourceType") == "DiagnosticReport":
            resource["conclusion"] = f"{resource.get('conclusion', '')} {note}".strip()
    return bundle


def fhir_report_for_study(session: Session, study_uid: str) -> dict[str, Any]:
    """The FHIR R4 Bundle of a study's latest results (what ``GET /api/studies/{uid}/fhir``
    returns).

    With one model's result, the bundle is that result's transaction Bundle
    (Device, Observations, DiagnosticReport); with several models, the latest result
    of each contributes its entries to one transaction Bundle.

    Parameters
    ----------
    session
        A session on the gateway's database.
    study_uid
        The Study Instance UID.

    Raises
    ------
    ResultNotFoundError
        If the study has no stored result.
    """
    from sqlalchemy import select

    from overread.service.db import Result
    from overread.service.rollout import not_shadow

    rows = session.scalars(
        select(Result)
        .where(Result.study_instance_uid == study_uid, not_shadow())
        .order_by(Result.created_at.desc(), Result.id.desc())
    ).all()
    latest: dict[str, Any] = {}
    for row in rows:
        latest.setdefault(row.model_name, row)
    if not latest:
        raise ResultNotFoundError(f"study {study_uid} has no stored result")
    bundles = [
        fhir_report_for_result(row, verification_of(session, row.id)) for row in latest.values()
    ]
    if len(bundles) == 1:
        return bundles[0]
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "timestamp": max(str(b["timestamp"]) for b in bundles),
        "entry": [entry for b in bundles for entry in b["entry"]],
    }


__all__ = [
    "DICOM_UID_SYSTEM",
    "MODEL_SHA256_SYSTEM",
    "ResultNotFoundError",
    "build_fhir_report",
    "fhir_report_for_result",
    "fhir_report_for_study",
    "study_header",
]
