"""The review gate end to end: DCMTK storescu -> Gateway (route with review) -> REST
review -> the SR that reaches DCMTK storescp, verified, and nothing before."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from sqlalchemy import select

from overread.audit import AuditEvent
from overread.gateway import Gateway
from overread.harness import storescu
from overread.results import ModelRef, ResultSummary
from overread.service.db import Job, Result, ResultReview
from overread.service.review import ReviewDesk
from overread.triage.schema import Alert, WorklistItem

from .conftest import Storescp, api_token, bearer, needs_dcmtk, wait_until
from .outputs.conftest import dciodvfy_errors

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")
pytest.importorskip("overread.service.outputs", reason="the result builders are not importable")

PRESENT = "52101004"


def _route(**extra: Any) -> dict[str, Any]:
    return {
        "name": "chest-xray",
        "modality": ["CR", "DX"],
        "body_part": ["CHEST"],
        "models": ["cxr-default"],
        "complete_on_release": True,
        **extra,
    }


def _jobs(service: Gateway) -> list[Job]:
    with service.database.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)).all())


def _review(service: Gateway) -> ResultReview | None:
    with service.database.session() as session:
        return session.scalar(select(ResultReview))


def _actions(service: Gateway) -> list[AuditEvent]:
    with service.database.session() as session:
        return list(session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all())


def _post(service: Gateway, uid: str, body: dict[str, Any], token: str) -> httpx.Response:
    """A verdict on the study's results as the reader sees them now (GET, then POST)."""
    url = f"http://127.0.0.1:{service.http_port}/api/studies/{uid}/review"
    if "results" not in body:
        shown = httpx.get(url, headers=bearer(token), timeout=30)
        if shown.status_code == 200:
            body = {
                **body,
                "results": [
                    {"result_id": r["result_id"], "version": r["version"]}
                    for r in shown.json()["results"]
                ],
            }
    return httpx.post(url, json=body, headers=bearer(token), timeout=60)


def _content_items(items: Any) -> Iterator[Dataset]:
    for item in items or []:
        yield item
        yield from _content_items(item.get("ContentSequence"))


def _decision_codes(sr: Dataset, label: str) -> set[str]:
    """The coded decisions the SR states for ``label`` (one per image)."""
    return {
        str(item.ConceptCodeSequence[0].CodeValue)
        for item in _content_items(sr.ContentSequence)
        if item.ValueType == "CODE"
        and str(item.ConceptNameCodeSequence[0].CodeMeaning).lower() == label.lower()
    }


def _negative_finding(service: Gateway) -> str:
    """A finding the model decided negative on the stored result."""
    with service.database.session() as session:
        result = session.scalar(select(Result))
        assert result is not None
        summary = ResultSummary.from_dict(result.summary)
    [(_, prediction)] = summary.usable()
    return next(
        f.label
        for f in prediction.findings
        if f.decision.value == "negative" and f.label != "No Finding"
    )


@pytest.fixture
def held_study(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    database_url: str,
) -> tuple[Gateway, str]:
    """A gateway whose chest route requires review (on SQLite and on PostgreSQL), with
    one study read and held."""
    service = make_service(
        database_url=database_url,
        routes=[_route(review=True)],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
        verifying_organization="General Hospital",
    )
    image = dx_factory(size=256)
    storescu(service.dicom_port or 0, [image])
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded"])
    wait_until(lambda: _review(service) is not None)
    return service, str(pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID)


def test_a_held_sr_reaches_the_pacs_only_after_accept_verified_by_the_reader(
    held_study: tuple[Gateway, str], storescp: Storescp
) -> None:
    service, uid = held_study
    review = _review(service)
    assert review is not None and review.state == "pending" and review.held
    # Stored, triaged, but nothing sent: no export job at all, and the PACS has nothing.
    time.sleep(1.0)
    assert [j.kind for j in _jobs(service)] == ["infer"]
    assert storescp.files() == []
    with service.database.session() as session:
        assert session.scalar(select(WorklistItem).where(WorklistItem.study_instance_uid == uid))
    reader = api_token(service, "radiologist", username="dr.grey")
    state = httpx.get(
        f"http://127.0.0.1:{service.http_port}/api/studies/{uid}/review",
        headers=bearer(reader),
        timeout=30,
    ).json()
    assert [r["state"] for r in state["results"]] == ["pending"]
    worklist = httpx.get(
        f"http://127.0.0.1:{service.http_port}/api/worklist", headers=bearer(reader), timeout=30
    ).json()
    assert [i["review"] for i in worklist["items"]] == ["pending"]

    answer = _post(service, uid, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["results"]
    assert outcome["state"] == "accepted" and outcome["report_status"] == "final"
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    [sr_file] = storescp.files()
    sr = pydicom.dcmread(sr_file)
    assert sr.SOPInstanceUID == outcome["sr_sop_instance_uid"]
    assert sr.VerificationFlag == "VERIFIED"
    assert sr.PreliminaryFlag == "FINAL"
    [observer] = sr.VerifyingObserverSequence
    assert observer.VerifyingObserverName.family_name == "dr.grey"
    assert observer.VerifyingOrganization == "General Hospital"
    assert len(str(observer.VerificationDateTime)) >= 14
    assert "PredecessorDocumentsSequence" not in sr  # the held one never went out
    assert dciodvfy_errors(sr_file) == []
    actions = [e.action for e in _actions(service)]
    assert actions.index("review-hold") < actions.index("review-accept") < actions.index("export")
    accept = next(e for e in _actions(service) if e.action == "review-accept")
    assert accept.actor == "dr.grey" and uid in accept.object_uids
    # Accepting again is a correction of a verified result: refused.
    assert _post(service, uid, {"action": "accept"}, reader).status_code == 409


def test_a_reject_sends_nothing_and_is_audited(
    held_study: tuple[Gateway, str], storescp: Storescp
) -> None:
    service, uid = held_study
    reader = api_token(service, "radiologist", username="dr.house")
    answer = _post(service, uid, {"action": "reject", "reason": "wrong patient"}, reader)
    assert answer.status_code == 200, answer.text
    assert [r["state"] for r in answer.json()["results"]] == ["rejected"]
    time.sleep(1.0)
    assert [j.kind for j in _jobs(service)] == ["infer"]
    assert storescp.files() == []
    review = _review(service)
    assert review is not None
    assert (review.state, review.reviewer, review.reason) == (
        "rejected",
        "dr.house",
        "wrong patient",
    )
    assert review.reviewed_at is not None
    [event] = [e for e in _actions(service) if e.action == "review-reject"]
    assert event.actor == "dr.house" and event.details["reason"] == "wrong patient"
    # A rejected result is never released afterwards.
    assert _post(service, uid, {"action": "accept"}, reader).status_code == 409


def test_an_edit_changes_the_decision_in_the_sr(
    held_study: tuple[Gateway, str], storescp: Storescp
) -> None:
    service, uid = held_study
    label = _negative_finding(service)
    reader = api_token(service, "radiologist", username="dr.edit")
    body = {"action": "edit", "findings": {label: "positive"}, "note": "seen on review"}
    answer = _post(service, uid, body, reader)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["state"] == "edited"
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    [sr_file] = storescp.files()
    sr = pydicom.dcmread(sr_file)
    assert sr.VerificationFlag == "VERIFIED"
    assert _decision_codes(sr, label) == {PRESENT}
    texts = [str(i.TextValue) for i in _content_items(sr.ContentSequence) if i.ValueType == "TEXT"]
    assert any("seen on review" in t and "dr.edit" in t for t in texts), texts
    # The verified SR still says which calibration decided the findings (the test
    # image names no institution: the global one, with the reason).
    assert "Global calibration applied: no site found (institution is empty)." in texts
    assert dciodvfy_errors(sr_file) == []
    # The same edit again changes nothing: refused.
    assert _post(service, uid, body, reader).status_code == 409
    # An unknown finding is refused, and nothing changes.
    bad = _post(service, uid, {"action": "edit", "findings": {"Dragon": "positive"}}, reader)
    assert bad.status_code == 422


def test_confirming_a_result_that_went_out_sends_a_superseding_verified_sr(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    image = dx_factory(size=256)
    storescu(service.dicom_port or 0, [image])
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    [first_file] = storescp.files()
    first = pydicom.dcmread(first_file)
    assert first.VerificationFlag == "UNVERIFIED"  # without review, as today
    uid = str(first.StudyInstanceUID)
    reader = api_token(service, "radiologist", username="dr.late")
    answer = _post(service, uid, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["results"]
    assert outcome["report_status"] == "final"
    assert outcome["superseded"] == [str(first.SOPInstanceUID)]
    wait_until(lambda: len(storescp.files()) == 2)
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    [second_file] = [f for f in storescp.files() if f != first_file]
    second = pydicom.dcmread(second_file)
    assert second.SOPInstanceUID != first.SOPInstanceUID
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert second.VerificationFlag == "VERIFIED"
    assert second.VerifyingObserverSequence[0].VerifyingObserverName.family_name == "dr.late"
    [study] = second.PredecessorDocumentsSequence
    [series] = study.ReferencedSeriesSequence
    [reference] = series.ReferencedSOPSequence
    assert reference.ReferencedSOPInstanceUID == first.SOPInstanceUID
    assert dciodvfy_errors(second_file) == []
    # Then a change: amended, superseding both earlier versions.
    prediction_label = _negative_finding(service)
    answer = _post(
        service, uid, {"action": "edit", "findings": {prediction_label: "positive"}}, reader
    )
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["report_status"] == "amended"
    wait_until(lambda: len(storescp.files()) == 3)
    [third_file] = [f for f in storescp.files() if f not in (first_file, second_file)]
    third = pydicom.dcmread(third_file)
    assert _decision_codes(third, prediction_label) == {PRESENT}
    referenced = {
        r.ReferencedSOPInstanceUID
        for s in third.PredecessorDocumentsSequence
        for se in s.ReferencedSeriesSequence
        for r in se.ReferencedSOPSequence
    }
    assert referenced == {first.SOPInstanceUID, second.SOPInstanceUID}


def test_a_role_without_verify_permission_gets_403(held_study: tuple[Gateway, str]) -> None:
    service, uid = held_study
    for role in ("technologist", "admin", "auditor", "service"):
        token = api_token(service, role)
        body = {"action": "accept", "results": [{"result_id": 1, "version": "0"}]}
        assert _post(service, uid, body, token).status_code == 403, role
    review = _review(service)
    assert review is not None and review.state == "pending"
    denied = [e for e in _actions(service) if e.action == "access-denied"]
    assert len(denied) == 4


def test_a_review_past_its_timeout_alerts_and_is_released_only_when_configured(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(
        routes=[
            _route(review=True, review_timeout_seconds=0.5, review_on_timeout="release-unverified")
        ],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
    )
    storescu(service.dicom_port or 0, [dx_factory(size=256)])
    wait_until(lambda: _review(service) is not None)
    time.sleep(0.6)
    service.run_triage()
    with service.database.session() as session:
        alerts = session.scalars(select(Alert).where(Alert.finding == "Review overdue")).all()
    assert len(alerts) == 1
    review = _review(service)
    assert review is not None and review.state == "released" and review.escalated_at
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    [sr_file] = storescp.files()
    assert pydicom.dcmread(sr_file).VerificationFlag == "UNVERIFIED"
    actions = [e.action for e in _actions(service)]
    assert "review-overdue" in actions and "review-release" in actions


def test_a_review_past_its_timeout_escalates_but_stays_held_by_default(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(
        routes=[_route(review=True, review_timeout_seconds=0.5)],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
    )
    storescu(service.dicom_port or 0, [dx_factory(size=256)])
    wait_until(lambda: _review(service) is not None)
    time.sleep(0.6)
    service.run_triage()
    service.run_triage()  # once per review: one alert
    with service.database.session() as session:
        alerts = session.scalars(select(Alert).where(Alert.finding == "Review overdue")).all()
    assert len(alerts) == 1
    review = _review(service)
    assert review is not None and review.state == "pending" and review.escalated_at
    time.sleep(0.5)
    assert [j.kind for j in _jobs(service)] == ["infer"] and storescp.files() == []


def test_fhir_gets_nothing_while_held_then_final_then_amended(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    from .test_fhir_flow import FhirSink

    sink = FhirSink([])
    try:
        service = make_service(routes=[_route(review=True)], fhir_endpoints=[sink.url])
        image = dx_factory(size=256)
        storescu(service.dicom_port or 0, [image])
        wait_until(lambda: _review(service) is not None)
        time.sleep(1.0)
        assert sink.stored == [] and [j.kind for j in _jobs(service)] == ["infer"]
        uid = str(pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID)
        reader = api_token(service, "radiologist", username="dr.fhir")
        assert _post(service, uid, {"action": "accept"}, reader).status_code == 200
        wait_until(lambda: len(sink.stored) == 1)
        label = _negative_finding(service)
        edit = {"action": "edit", "findings": {label: "positive"}, "note": "amended"}
        answer = _post(service, uid, edit, reader)
        assert answer.status_code == 200, answer.text
        assert answer.json()["results"][0]["report_status"] == "amended"
        wait_until(lambda: len(sink.stored) == 2)
    finally:
        sink.close()
    reports = [
        next(
            e["resource"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "DiagnosticReport"
        )
        for bundle in sink.stored
    ]
    assert [r["status"] for r in reports] == ["final", "amended"]
    assert all("Verified by dr.fhir" in r["conclusion"] for r in reports)
    changed = next(
        e["resource"]
        for e in sink.stored[1]["entry"]
        if e["resource"]["resourceType"] == "Observation" and e["resource"]["code"]["text"] == label
    )
    assert changed["interpretation"][0]["coding"][0]["code"] == "POS"


def test_hl7_gets_a_final_result_after_accept_and_a_corrected_one_after_an_edit(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    from hl7apy.consts import VALIDATION_LEVEL
    from hl7apy.parser import parse_message

    from .hl7.conftest import RisPeer

    ris = RisPeer()
    try:
        service = make_service(routes=[_route(review=True)], hl7_endpoints=[ris.address])
        image = dx_factory(size=256)
        storescu(service.dicom_port or 0, [image])
        wait_until(lambda: _review(service) is not None)
        time.sleep(1.0)
        assert ris.received == []
        uid = str(pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID)
        reader = api_token(service, "radiologist", username="dr.hl7")
        assert _post(service, uid, {"action": "accept"}, reader).status_code == 200
        wait_until(lambda: len(ris.received) == 1)
        label = _negative_finding(service)
        edit = {"action": "edit", "findings": {label: "positive"}}
        assert _post(service, uid, edit, reader).status_code == 200
        wait_until(lambda: len(ris.received) == 2)
    finally:
        ris.close()
    statuses = []
    for er7 in ris.received:
        message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        order = message.oru_r01_patient_result.oru_r01_order_observation
        statuses.append(order.obr.obr_25.to_er7())
        assert {o.obx.obx_11.to_er7() for o in order.oru_r01_observation} == {statuses[-1]}
    assert statuses == ["F", "C"]


def _queue_export(service: Gateway, uid: str, storescp: Storescp, name: str = "PACS") -> int:
    """An export job for the study's result queued behind the gate's back (as a
    replaced result's old job, a requeued dead letter or a released kill switch)."""
    from overread.service.config import Destination
    from overread.service.db import JobKind
    from overread.service.payloads import DicomExportPayload

    with service.database.session() as session:
        result = session.scalar(select(Result))
        assert result is not None
        payload = DicomExportPayload(
            Destination.parse(f"{name}=PACSAE@127.0.0.1:{storescp.port}"), result.id
        )
        job_id, _ = service.queue.enqueue(
            session,
            study_instance_uid=uid,
            model_name=result.model_name,
            model_version=result.model_version,
            kind=JobKind.EXPORT,
            destination=name,
            payload=payload.to_dict(),
        )
    service.wake_workers()
    return int(job_id)


def test_an_export_queued_for_a_pending_result_is_held_and_for_a_rejected_one_refused(
    held_study: tuple[Gateway, str], storescp: Storescp
) -> None:
    service, uid = held_study
    first = _queue_export(service, uid, storescp)
    wait_until(lambda: {j.id: j.state for j in _jobs(service)}[first] == "held", timeout=30)
    assert storescp.files() == []
    reader = api_token(service, "radiologist", username="dr.house")
    assert (
        _post(service, uid, {"action": "reject", "reason": "artefact"}, reader).status_code == 200
    )
    second = _queue_export(service, uid, storescp, name="ARCHIVE")
    wait_until(lambda: {j.id: j.state for j in _jobs(service)}[second] == "dead_lettered")
    time.sleep(0.5)
    assert storescp.files() == []


def test_a_reader_who_rejects_while_the_time_out_sweep_runs_wins(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The sweep has loaded the overdue review; before it acts, a reader rejects it in
    another transaction. The sweep must neither release nor overwrite the rejection."""
    from sqlalchemy import update

    from overread.service.db import ReviewState

    service = make_service(
        routes=[
            _route(review=True, review_timeout_seconds=0.5, review_on_timeout="release-unverified")
        ],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
    )
    storescu(service.dicom_port or 0, [dx_factory(size=256)])
    wait_until(lambda: _review(service) is not None)
    time.sleep(0.6)
    review = _review(service)
    assert review is not None

    def reject_now() -> None:
        with service.database.session() as other:
            other.execute(
                update(ResultReview)
                .where(ResultReview.id == review.id)
                .values(state=ReviewState.REJECTED.value)
            )

    still_pending = ReviewDesk._still_pending

    def racing(session: Any, review_id: int, **values: Any) -> bool:
        reject_now()  # the reader's reject commits between the sweep's read and update
        return still_pending(session, review_id, **values)

    monkeypatch.setattr(ReviewDesk, "_still_pending", staticmethod(racing))
    service.run_triage()
    after = _review(service)
    assert after is not None and after.state == "rejected"
    time.sleep(1.0)
    assert [j.kind for j in _jobs(service)] == ["infer"] and storescp.files() == []


def test_the_pdf_and_overlays_go_out_verified_and_a_correction_resends_every_kind(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    from overread.service.outputs import ENCAPSULATED_PDF_STORAGE

    from .test_pdf_flow import _report_text

    service = make_service(
        routes=[_route(review=True)],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
        verifying_organization="General Hospital",
        pdf_report=True,
        explain=True,
    )
    image = dx_factory(size=256)
    storescu(service.dicom_port or 0, [image])
    wait_until(lambda: _review(service) is not None)
    uid = str(pydicom.dcmread(image, stop_before_pixels=True).StudyInstanceUID)
    reader = api_token(service, "radiologist", username="dr.pdf")
    assert _post(service, uid, {"action": "accept"}, reader).status_code == 200
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])

    def received(files: list[Path]) -> dict[str, list[Path]]:
        kinds: dict[str, list[Path]] = {"SR": [], "DOC": [], "OT": []}
        for path in files:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            if ds.SOPClassUID == ENCAPSULATED_PDF_STORAGE:
                kinds["DOC"].append(path)
            elif str(ds.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.88."):
                kinds["SR"].append(path)
            else:
                kinds["OT"].append(path)
        return kinds

    first = received(storescp.files())
    assert len(first["SR"]) == 1 and len(first["DOC"]) == 1 and first["OT"], first
    document, text, images = _report_text(first["DOC"][0])
    # Nothing unverified reached the PACS: the report and every overlay state the reader.
    assert document.VerificationFlag == "VERIFIED"
    assert "verified by a radiologist" in text and "Verified by dr.pdf" in text
    assert "not verified" not in text
    # The verified report keeps the model card block the first report had.
    assert "Intended use:" in text and "NOT FOR DIAGNOSIS" in text
    assert images == len(first["OT"])
    assert dciodvfy_errors(first["DOC"][0]) == [] and dciodvfy_errors(first["OT"][0]) == []
    labels = []
    for path in first["OT"]:
        overlay = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(overlay.SeriesDescription).endswith("(verified)")
        assert "Verified by dr.pdf" in str(overlay.ImageComments)
        labels.append(str(overlay.DerivationDescription).partition(" heatmap from ")[0])

    # The reader corrects one finding shown on an overlay to negative: the correction
    # resends every kind (SR, PDF, overlays) and the overlay of that finding is gone.
    label = labels[0]
    answer = _post(service, uid, {"action": "edit", "findings": {label: "negative"}}, reader)
    assert answer.status_code == 200, answer.text
    assert answer.json()["results"][0]["report_status"] == "amended"
    expected = len(storescp.files()) + 2 + len(labels) - 1
    wait_until(lambda: len(storescp.files()) == expected)
    before = {p for kind in first.values() for p in kind}
    second = received([p for p in storescp.files() if p not in before])
    assert len(second["SR"]) == 1 and len(second["DOC"]) == 1
    assert len(second["OT"]) == len(labels) - 1
    _, corrected, _ = _report_text(second["DOC"][0])
    assert f"{label.lower()}: negative" in corrected and "amended" in corrected
    shown = {
        str(pydicom.dcmread(p, stop_before_pixels=True).DerivationDescription).partition(
            " heatmap from "
        )[0]
        for p in second["OT"]
    }
    assert label not in shown

    # A package gone from the registry: no card, and the report falls back to
    # "not for diagnosis" without the intended-use block.
    desk = ReviewDesk(service.config, service.database, service.store, service.queue)
    assert desk._card(ModelRef(name="gone-model", version="9.9.9")) is None
