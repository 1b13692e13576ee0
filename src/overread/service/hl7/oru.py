"""The AI second read as an HL7 v2.5 ORU^R01 (unsolicited observation result).

One message per stored result: MSH, PID (the study's patient), ORC and OBR (the
order, linked by accession number), then OBX segments: a summary, and per finding a
group sharing one OBX-4 sub-ID (the finding's decision with its abnormal flag, the
probability, the operating-point threshold, and the threshold proximity and
explanation trust where known). ``docs/hl7.md`` maps every field.

An AI result is never verified until a reader confirms it: OBR-25 and every OBX-11
are ``P`` (preliminary) until then; a reader's verification makes them ``F`` (final),
or ``C`` (corrected) when a reader changed a result that had already gone out, with
the reader's decisions and a note of who verified it. A finding at or over its
critical-alert threshold is flagged ``AA`` (critical abnormal) in OBX-8.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from overread.errors import ServiceError
from overread.results import Decision, FindingResult, ModelRef, ResultSummary, StudyHeader
from overread.service.hl7.encoding import (
    components,
    escape,
    hl7_date,
    join_segments,
    message_header,
    segment,
    timestamp,
    validated,
)
from overread.service.outputs import codes as oc
from overread.service.outputs.prediction import checked_findings, concept_of
from overread.service.outputs.sr import (
    RESEARCH_CAVEAT,
    gate_text,
    study_prediction,
    summary_text,
)
from overread.service.verification import Verification

#: MSH-3 of every message the gateway sends.
SENDING_APPLICATION = "OVERREAD"
#: OBR-25 and OBX-11 of an unverified result: preliminary. AI results are never final
#: until a reader confirms (then ``F``, or ``C`` for a correction).
RESULT_STATUS = "P"
#: OBX-8 (HL7 table 0078).
FLAG_CRITICAL = "AA"
FLAG_ABNORMAL = "A"
FLAG_NORMAL = "N"

#: Characters per line of the summary text (a line's OBX-5 stays under 199 escaped).
_LINE_WIDTH = 120

_DECISION_CONCEPTS = {
    Decision.POSITIVE: oc.PRESENT,
    Decision.NEGATIVE: oc.ABSENT,
    Decision.INDETERMINATE: oc.UNDETERMINED,
}


@dataclass(frozen=True)
class OrderReference:
    """The order a result answers: ORC-2/OBR-2, ORC-3/OBR-3 (plain values) and OBR-4
    (as the order sent it, already encoded)."""

    placer_order_number: str = ""
    filler_order_number: str = ""
    service_code: str = ""


@dataclass(frozen=True)
class ResultMessage:
    """A built ORU^R01: its text and control ID (MSH-10, which the ACK must name)."""

    er7: str
    control_id: str
    accession_number: str
    observations: int


def _coded(concept: oc.Concept) -> str:
    return components(concept.value, concept.meaning, concept.scheme)


def _person_name(dicom_name: str) -> str:
    """A DICOM PN (family^given^middle^prefix^suffix) as an HL7 XPN
    (family^given^middle^suffix^prefix); ``""`` (explicitly empty) when there is none."""
    alphabetic = dicom_name.split("=")[0]
    parts = (alphabetic.split("^") + [""] * 5)[:5]
    family, given, middle, prefix, suffix = (p.strip() for p in parts)
    encoded = components(family, given, middle, suffix, prefix)
    return encoded or '""'


def flags(finding: FindingResult, critical: Mapping[str, float]) -> str:
    """OBX-8 of a finding: ``AA`` at or over its critical threshold, else ``A`` when
    decided positive, ``N`` when negative, nothing when indeterminate (the decision
    OBX says "Undetermined": a reader must look)."""
    threshold = critical.get(finding.label)
    if threshold is not None and float(finding.probability) >= threshold:
        return FLAG_CRITICAL
    return {Decision.POSITIVE: FLAG_ABNORMAL, Decision.NEGATIVE: FLAG_NORMAL}.get(
        finding.decision, ""
    )


def _number(value: float) -> str:
    return f"{float(value):.4f}"


def build_result_message(
    result: Any,
    *,
    control_id: str,
    order: OrderReference | None = None,
    critical: Mapping[str, float] | None = None,
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    when: datetime | None = None,
    verification: Verification | None = None,
) -> ResultMessage:
    """Build and validate the ORU^R01 of one stored result (a ``Result`` row).

    Parameters
    ----------
    result
        The stored result: its summary (findings, the study's header facts) and model.
    control_id
        MSH-10; the receiver's ACK names it in MSA-2.
    order
        The order the study was linked to (by accession and patient ID), if any.
    critical
        Critical-alert threshold of each finding label (the triage settings').
    verification
        A reader's verification: the result status is its ``F`` or ``C``, the reader's
        decisions replace the model's, and the summary says who verified it.

    Raises
    ------
    ServiceError
        If the result has no successful prediction or its study header no patient ID
        (an ORU must name the right patient).
    HL7MessageError
        If the built message does not validate (a bug: never sent).
    """
    summary = ResultSummary.from_dict(result.summary)
    study = summary.study or StudyHeader()
    if not study.patient_id:
        raise ServiceError(
            f"result {result.id}: the study's header has no patient ID; an ORU needs the patient"
        )
    model = ModelRef(name=str(result.model_name), version=str(result.model_version))
    predictions = [p for _, p in summary.usable()]
    if not predictions:
        raise ServiceError(f"result {result.id} holds no successful prediction to report")
    prediction = study_prediction(predictions)
    if verification is not None:
        prediction = verification.apply(prediction)
    status = RESULT_STATUS if verification is None else verification.status.hl7
    findings = checked_findings(prediction)
    critical = dict(critical or {})
    moment = when or datetime.now(UTC)
    order = order or OrderReference()
    accession = study.accession_number
    study_date = hl7_date(study.study_date)
    exam = oc.LOINC_XR_CHEST_2_VIEWS if len(predictions) > 1 else oc.LOINC_XR_CHEST_SINGLE_VIEW
    service = order.service_code or _coded(exam)
    filler = escape(order.filler_order_number or accession)
    placer = escape(order.placer_order_number)
    equipment = components(f"{model.name} {model.version}", SENDING_APPLICATION)

    segments = [
        message_header(
            sending_application=SENDING_APPLICATION,
            sending_facility=sending_facility,
            receiving_application=receiving_application,
            receiving_facility=receiving_facility,
            message_type="ORU^R01^ORU_R01",
            control_id=control_id,
            when=moment,
        ),
        segment(
            "PID",
            [
                "1",
                "",
                components(study.patient_id, "", "", study.issuer_of_patient_id),
                "",
                _person_name(study.patient_name),
            ],
        ),
        segment("ORC", ["RE", placer, filler]),
        segment(
            "OBR",
            [
                "1",
                placer,
                filler,
                service,
                "",
                "",
                study_date,
                *[""] * 10,
                escape(accession),  # OBR-18
                "",
                "",
                "",
                timestamp(moment),  # OBR-22
                "",
                "RAD",  # OBR-24
                status,  # OBR-25
            ],
        ),
    ]
    observations: list[list[str]] = []

    def observe(
        kind: str,
        code: str,
        sub_id: str,
        value: str,
        *,
        units: str = "",
        flag: str = "",
    ) -> None:
        observations.append(
            # OBX-2 .. OBX-19 (OBX-11 the status, OBX-14 the study date, OBX-18 the model).
            [
                kind,
                code,
                sub_id,
                value,
                units,
                "",
                flag,
                "",
                "",
                status,
                "",
                "",
                study_date,
                "",
                "",
                "",
                equipment,
                timestamp(moment),
            ]
        )

    statement = "" if verification is None else verification.statement
    text = " ".join(
        t for t in (summary_text(prediction), gate_text(summary.instances), statement) if t
    )
    if RESEARCH_CAVEAT not in text:
        text = f"{text} {RESEARCH_CAVEAT}"
    # One TX line per OBX (the parser's limit for a value is 199 characters).
    for line in textwrap.wrap(text, width=_LINE_WIDTH):
        observe("TX", _coded(oc.SUMMARY), "", escape(line))
    ratio = _coded(oc.UNIT_RATIO)
    for k, finding in enumerate(findings, start=1):
        sub = str(k)
        concept = concept_of(finding)
        observe(
            "CWE",
            components(concept.value, finding.label, concept.scheme),
            sub,
            _coded(_DECISION_CONCEPTS[finding.decision]),
            flag=flags(finding, critical),
        )
        observe("NM", _coded(oc.PROBABILITY), sub, _number(finding.probability), units=ratio)
        observe("NM", _coded(oc.OPERATING_THRESHOLD), sub, _number(finding.threshold), units=ratio)
        if finding.threshold_proximity is not None:
            observe(
                "NM",
                _coded(oc.THRESHOLD_PROXIMITY),
                sub,
                _number(finding.threshold_proximity),
                units=ratio,
            )
        if finding.trust_score is not None:
            observe("NM", _coded(oc.TRUST_SCORE), sub, _number(finding.trust_score), units=ratio)
    segments.extend(
        segment("OBX", [str(i), *fields]) for i, fields in enumerate(observations, start=1)
    )
    er7 = join_segments(segments)
    validated(er7)
    return ResultMessage(
        er7=er7, control_id=control_id, accession_number=accession, observations=len(observations)
    )


__all__ = [
    "FLAG_ABNORMAL",
    "FLAG_CRITICAL",
    "FLAG_NORMAL",
    "RESULT_STATUS",
    "SENDING_APPLICATION",
    "OrderReference",
    "ResultMessage",
    "build_result_message",
    "flags",
]
