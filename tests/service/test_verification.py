"""A reader's verification as each output states it: the FHIR report's status, the
ORU's result status, the reader's decisions in place of the model's, and who verified."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from overread.results import (
    Decision,
    FindingResult,
    ModelRef,
    Prediction,
    ResultSummary,
    StudyHeader,
)
from overread.service.config import ReviewTimeout, Route
from overread.service.hl7 import build_result_message
from overread.service.hl7.encoding import unescape
from overread.service.outputs import fhir_report_for_result
from overread.service.verification import (
    ReportStatus,
    Verification,
    reader_person_name,
)

FINDINGS = [
    FindingResult("Pneumothorax", 0.91, True, 0.2, 0.5),
    FindingResult("Cardiomegaly", 0.10, False, 0.3, 0.4),
]


def _result() -> Any:
    prediction = Prediction(
        path="a.dcm", ok=True, model=ModelRef("cxr-default", "1.1.0"), findings=list(FINDINGS)
    )
    summary = ResultSummary(
        alias="cxr-default",
        instances=(prediction,),
        sop_instance_uids=("1.2.3",),
        study=StudyHeader(
            study_instance_uid="1.2.826.0.1.3680043.8.498.1",
            patient_id="PAT-7",
            patient_name="Doe^Jane",
            study_date="20261201",
            accession_number="ACC42",
        ),
    )
    return SimpleNamespace(
        id=7,
        study_instance_uid="1.2.826.0.1.3680043.8.498.1",
        model_name="cxr-default",
        model_version="1.1.0",
        summary=summary.to_dict(),
        artifacts=[],
    )


def _verified(status: ReportStatus, **decisions: Decision) -> Verification:
    return Verification(
        status=status,
        observer_name=reader_person_name("dr.grey"),
        organization="General Hospital",
        verified_at=datetime(2026, 12, 5, 9, 30, tzinfo=UTC),
        decisions=decisions,
        note="checked the apices",
    )


def _report(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )


def _observation(bundle: dict[str, Any], label: str) -> dict[str, Any]:
    return next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["text"] == label
    )


@pytest.mark.parametrize(
    ("verification", "status"),
    [
        (None, "preliminary"),
        (_verified(ReportStatus.FINAL), "final"),
        (_verified(ReportStatus.AMENDED, Cardiomegaly=Decision.POSITIVE), "amended"),
    ],
)
def test_fhir_report_states_the_verification(
    verification: Verification | None, status: str
) -> None:
    bundle = fhir_report_for_result(_result(), verification)
    Bundle.model_validate(bundle)
    report = _report(bundle)
    assert report["status"] == status
    assert {
        e["resource"]["status"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    } == {status}
    interpretation = _observation(bundle, "Cardiomegaly")["interpretation"][0]["coding"][0]
    if verification is not None and verification.decisions:
        assert interpretation["code"] == "POS"
        assert "Changed by the reader: cardiomegaly: positive" in report["conclusion"]
    else:
        assert interpretation["code"] == "NEG"
    if verification is not None:
        assert "Verified by dr.grey (General Hospital)" in report["conclusion"]
        assert "checked the apices" in report["conclusion"]


@pytest.mark.parametrize(
    ("verification", "code"),
    [
        (None, "P"),
        (_verified(ReportStatus.FINAL), "F"),
        (_verified(ReportStatus.AMENDED, Cardiomegaly=Decision.POSITIVE), "C"),
    ],
)
def test_oru_result_status_follows_the_verification(
    verification: Verification | None, code: str
) -> None:
    built = build_result_message(_result(), control_id="OR1.1", verification=verification)
    message = parse_message(built.er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    order = message.oru_r01_patient_result.oru_r01_order_observation
    assert order.obr.obr_25.to_er7() == code
    observations = [o.obx for o in order.oru_r01_observation]
    assert {obx.obx_11.to_er7() for obx in observations} == {code}
    decision = next(
        obx for obx in observations if obx.obx_3.to_er7().split("^")[1] == "Cardiomegaly"
    )
    changed = verification is not None and bool(verification.decisions)
    assert decision.obx_5.to_er7().split("^")[1] == ("Present" if changed else "Absent")
    text = " ".join(
        unescape(obx.obx_5.to_er7()) for obx in observations if obx.obx_2.to_er7() == "TX"
    )
    assert ("Verified by dr.grey" in text) is (verification is not None)


def test_reader_names_become_person_names() -> None:
    assert reader_person_name("dr.grey") == "dr.grey^"
    assert reader_person_name("Grey^Meredith") == "Grey^Meredith"


def test_route_review_settings_default_to_no_review_and_escalation() -> None:
    route = Route(name="r", models=["m"])
    assert route.review is False and route.review_timeout_seconds is None
    assert route.review_on_timeout is ReviewTimeout.ESCALATE
    held = Route(
        name="r",
        models=["m"],
        review=True,
        review_timeout_seconds=600,
        review_on_timeout="release-unverified",
    )
    assert held.review_on_timeout is ReviewTimeout.RELEASE_UNVERIFIED
    with pytest.raises(ValueError, match="review_on_timeout"):
        Route(name="r", models=["m"], review_on_timeout="send-anyway")
    with pytest.raises(ValueError, match="review_timeout_seconds"):
        Route(name="r", models=["m"], review_timeout_seconds=0)
