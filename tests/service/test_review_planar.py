"""The review gate for a radiograph's lung-field SEG (a planar segmentation package:
a SEG, no SR of its own), end to end: DCMTK storescu -> Gateway -> REST review -> what
reaches DCMTK storescp.

A reader's negative decision withdraws the SEG (held: it is never sent; sent before:
a KOS "Rejected for Quality Reasons" listing it follows it), and a study-level edit of a
study read by two models applies each decision to the result that has its label.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydicom
import pytest
from sqlalchemy import select

from overread.audit import AuditEvent
from overread.gateway import Gateway
from overread.phantom import generate_cohort
from overread.service.db import Result, ResultReview

from .conftest import Storescp, api_token, needs_dcmtk, storescu, wait_until
from .outputs.conftest import dciodvfy_errors
from .test_ct_review_flow import _received, _review_post, _states
from .test_lung_field_flow import ROUTES, SEGMENTATION_STORAGE

pytestmark = [pytest.mark.service, needs_dcmtk]

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"


def _film(tmp_path: Path) -> Path:
    generate_cohort(tmp_path / "cohort", n=1, seed=51, rows=256, cols=256, workers=1)
    [film] = sorted((tmp_path / "cohort" / "images").rglob("*.dcm"))
    return film


def _send(service: Gateway, film: Path) -> str:
    storescu(service.dicom_port, [film], called="OVERREAD", calling="MODALITY", timeout=60)
    return str(pydicom.dcmread(film, stop_before_pixels=True).StudyInstanceUID)


def _settled(service: Gateway, jobs: int) -> Callable[[], bool]:
    def done() -> bool:
        states = [s for _, s in _states(service)]
        return len(states) >= jobs and all(s == "succeeded" for s in states)

    return done


def _audited(service: Gateway, action: str) -> list[AuditEvent]:
    with service.database.session() as session:
        return [
            e
            for e in session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
            if e.action == action
        ]


def _held(route: dict[str, Any]) -> dict[str, Any]:
    return {**route, "review": True}


def test_a_negative_lung_field_decision_keeps_the_held_seg_from_the_pacs(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_held(ROUTES[1])], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    uid = _send(service, _film(tmp_path))
    wait_until(lambda: _states(service) == [("infer", "succeeded")], timeout=240)
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert SEGMENTATION_STORAGE in {a["sop_class_uid"] for a in result.artifacts}
        assert session.scalar(select(ResultReview)).state == "pending"
    reader = api_token(service, "radiologist", username="dr.lung")
    body = {"action": "edit", "findings": {"lung-field": "negative"}, "note": "no lung seen"}
    answer = _review_post(service, uid, body, reader)
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["results"]
    assert outcome["state"] == "edited" and outcome["report_status"] == "final"
    wait_until(_settled(service, 1), timeout=120)
    assert _received(storescp, SEGMENTATION_STORAGE) == []
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert SEGMENTATION_STORAGE not in {a["sop_class_uid"] for a in result.artifacts or []}
    # Nothing was sent before: there is nothing to reject either.
    assert _received(storescp, KEY_OBJECT_SELECTION) == []
    assert _audited(service, "review-withdraw") == []


def test_a_positive_lung_field_decision_releases_the_held_seg(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_held(ROUTES[1])], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    uid = _send(service, _film(tmp_path))
    wait_until(lambda: _states(service) == [("infer", "succeeded")], timeout=240)
    reader = api_token(service, "radiologist", username="dr.lung")
    answer = _review_post(service, uid, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: len(_received(storescp, SEGMENTATION_STORAGE)) == 1, timeout=120)


def test_a_rejected_study_read_by_both_models_sends_nothing(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_held(r) for r in ROUTES],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
    )
    uid = _send(service, _film(tmp_path))
    wait_until(lambda: _states(service) == [("infer", "succeeded")] * 2, timeout=240)
    reader = api_token(service, "radiologist", username="dr.no")
    answer = _review_post(service, uid, {"action": "reject", "reason": "wrong patient"}, reader)
    assert answer.status_code == 200, answer.text
    assert [o["state"] for o in answer.json()["results"]] == ["rejected", "rejected"]
    assert [o["exports"] for o in answer.json()["results"]] == [0, 0]
    assert _states(service) == [("infer", "succeeded")] * 2
    assert storescp.files() == []


def test_a_study_level_edit_applies_each_decision_to_the_result_with_its_label(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_held(r) for r in ROUTES],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
    )
    uid = _send(service, _film(tmp_path))
    wait_until(lambda: _states(service) == [("infer", "succeeded")] * 2, timeout=240)
    reader = api_token(service, "radiologist", username="dr.both")
    # A label neither model has is refused, naming it; nothing is applied.
    answer = _review_post(
        service, uid, {"action": "edit", "findings": {"no-such-finding": "negative"}}, reader
    )
    assert answer.status_code == 422, answer.text
    assert "'no-such-finding'" in answer.text and "lung-field" in answer.text
    with service.database.session() as session:
        assert {r.state for r in session.scalars(select(ResultReview)).all()} == {"pending"}
    # The lung-field decision goes to the lung-field result; the classifier's result is
    # verified as the model called it (the reader reviewed the study).
    body = {"action": "edit", "findings": {"lung-field": "negative"}, "note": "study read"}
    answer = _review_post(service, uid, body, reader)
    assert answer.status_code == 200, answer.text
    outcomes = answer.json()["results"]
    with service.database.session() as session:
        models = {r.id: r.model_name for r in session.scalars(select(Result)).all()}
        reviews = {r.result_id: r for r in session.scalars(select(ResultReview)).all()}
    states = {models[o["result_id"]]: o["state"] for o in outcomes}
    assert states == {"cxr-default": "accepted", "cxr-lung-seg": "edited"}
    decisions = {models[i]: r.decisions for i, r in reviews.items()}
    assert decisions == {"cxr-default": {}, "cxr-lung-seg": {"lung-field": "negative"}}
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_SR)) == 1, timeout=120)
    wait_until(_settled(service, 3), timeout=120)
    [(_, sr)] = _received(storescp, COMPREHENSIVE_SR)
    assert sr.VerificationFlag == "VERIFIED"
    assert _received(storescp, SEGMENTATION_STORAGE) == []


def test_a_sent_lung_field_seg_corrected_negative_is_rejected_at_the_pacs(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[ROUTES[1]], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    uid = _send(service, _film(tmp_path))
    wait_until(_settled(service, 2), timeout=240)
    [(seg_path, seg)] = _received(storescp, SEGMENTATION_STORAGE)
    seg_path.unlink()  # to see whether it is sent again
    reader = api_token(service, "radiologist", username="dr.late")
    body = {"action": "edit", "findings": {"lung-field": "negative"}, "note": "artefact"}
    answer = _review_post(service, uid, body, reader)
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["results"]
    assert outcome["state"] == "edited" and outcome["report_status"] == "amended"
    wait_until(lambda: len(_received(storescp, KEY_OBJECT_SELECTION)) == 1, timeout=120)
    wait_until(_settled(service, 2), timeout=60)
    assert _received(storescp, SEGMENTATION_STORAGE) == []
    [(note_path, note)] = _received(storescp, KEY_OBJECT_SELECTION)
    full = pydicom.dcmread(note_path)
    title = full.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator) == ("113001", "DCM")
    listed = [
        str(ref.ReferencedSOPInstanceUID)
        for study in full.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    ]
    assert listed == [str(seg.SOPInstanceUID)]
    assert note.StudyInstanceUID == seg.StudyInstanceUID and note.PatientID == seg.PatientID
    assert dciodvfy_errors(note_path) == []
    [event] = _audited(service, "review-withdraw")
    assert event.details["rejected"] == [str(seg.SOPInstanceUID)]
    assert event.details["rejection_note"] == str(note.SOPInstanceUID)
    assert event.actor == "dr.late"


def test_a_lung_field_seg_withdrawn_goes_out_again_after_a_positive_edit(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[ROUTES[1]], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    uid = _send(service, _film(tmp_path))
    wait_until(_settled(service, 2), timeout=240)
    [(seg_path, seg)] = _received(storescp, SEGMENTATION_STORAGE)
    seg_path.unlink()
    reader = api_token(service, "radiologist", username="dr.late")
    negative = {"action": "edit", "findings": {"lung-field": "negative"}, "note": "artefact"}
    assert _review_post(service, uid, negative, reader).status_code == 200
    wait_until(lambda: len(_received(storescp, KEY_OBJECT_SELECTION)) == 1, timeout=120)
    wait_until(_settled(service, 2), timeout=60)
    assert _received(storescp, SEGMENTATION_STORAGE) == []
    positive = {"action": "edit", "findings": {"lung-field": "positive"}, "note": "real"}
    answer = _review_post(service, uid, positive, reader)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: len(_received(storescp, SEGMENTATION_STORAGE)) == 1, timeout=120)
    [(_, again)] = _received(storescp, SEGMENTATION_STORAGE)
    assert again.SOPInstanceUID != seg.SOPInstanceUID
    assert again.SeriesInstanceUID == seg.SeriesInstanceUID
    assert again.StudyInstanceUID == seg.StudyInstanceUID and again.PatientID == seg.PatientID
