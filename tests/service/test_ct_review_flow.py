"""CT results through the review gate and re-reads, end to end: DCMTK storescu -> the
gateway (CT route) -> REST review -> the Comprehensive 3D SR (TID 1500, nodules) and
the SEG that reach a DCMTK storescp PACS.

A held CT result goes out only once a reader accepts it, as a VERIFIED SR; a CT result
that went out unverified and is then edited goes again as a new VERIFIED SR that
supersedes the first (Predecessor Documents Sequence), with its SEG; a CT study that
grows after its result is read again and the new SR supersedes the one sent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from tests.inference.ct_series import SHAPE, SPACING, Nodule, chest_volume, write_series

from overread.audit import AuditEvent
from overread.gateway import Gateway
from overread.results import ResultSummary
from overread.service.db import Job, Result, ResultReview

from .conftest import Storescp, api_token, bearer, needs_dcmtk, storescu, wait_until
from .outputs.conftest import dciodvfy_errors

pytestmark = [pytest.mark.service, needs_dcmtk]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _ct_route(**extra: Any) -> dict[str, Any]:
    return {
        "name": "chest-ct",
        "modality": ["CT"],
        "models": ["ct-threshold-baseline"],
        "complete_on_release": True,
        **extra,
    }


def _series(folder: Path) -> list[Path]:
    volume = chest_volume(SHAPE, SPACING, [Nodule((24.0, 38.0, 50.0), 4.0, 30.0)])
    return write_series(folder, volume, SPACING, study_uid=generate_uid())


def _send(service: Gateway, files: list[Path]) -> None:
    storescu(service.dicom_port, files, called="OVERREAD", calling="CTSCANNER", timeout=60)


def _states(service: Gateway) -> list[tuple[str, str]]:
    with service.database.session() as session:
        return [(j.kind, j.state) for j in session.scalars(select(Job).order_by(Job.id)).all()]


def _received(storescp: Storescp, sop_class: str) -> list[tuple[Path, Dataset]]:
    found = []
    for path in storescp.files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # a file still being written
            continue
        if ds.SOPClassUID == sop_class:
            found.append((path, ds))
    return found


def _review_post(service: Gateway, uid: str, body: dict[str, Any], token: str) -> httpx.Response:
    url = f"http://127.0.0.1:{service.http_port}/api/studies/{uid}/review"
    shown = httpx.get(url, headers=bearer(token), timeout=30)
    assert shown.status_code == 200, shown.text
    seen = [{"result_id": r["result_id"], "version": r["version"]} for r in shown.json()["results"]]
    return httpx.post(url, json={**body, "results": seen}, headers=bearer(token), timeout=120)


def _texts(sr: Dataset) -> list[str]:
    found: list[str] = []

    def walk(items: Any) -> None:
        for item in items or []:
            if item.ValueType == "TEXT":
                found.append(str(item.TextValue))
            walk(item.get("ContentSequence"))

    walk(sr.ContentSequence)
    return found


def _referenced(sr: Dataset) -> set[str]:
    """The SOP Instance UIDs the SR's content items reference (images, segments)."""
    found: set[str] = set()

    def walk(items: Any) -> None:
        for item in items or []:
            for ref in item.get("ReferencedSOPSequence", []):
                found.add(str(ref.ReferencedSOPInstanceUID))
            walk(item.get("ContentSequence"))

    walk(sr.ContentSequence)
    return found


def _predecessors(sr: Dataset) -> list[str]:
    return [
        str(ref.ReferencedSOPInstanceUID)
        for study in sr.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    ]


def test_a_held_ct_result_goes_out_only_as_a_verified_sr_with_its_seg(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_ct_route(review=True)],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
        verifying_organization="General Hospital",
    )
    files = _series(tmp_path / "ct")
    _send(service, files)
    wait_until(lambda: _states(service) == [("infer", "succeeded")], timeout=240)
    with service.database.session() as session:
        review = session.scalar(select(ResultReview))
        assert review is not None and review.state == "pending"
        [result] = session.scalars(select(Result)).all()
        [unverified] = [a for a in result.artifacts if a["sop_class_uid"] == COMPREHENSIVE_3D_SR]
        [seg_entry] = [a for a in result.artifacts if a["sop_class_uid"] == SEGMENTATION_STORAGE]
    assert storescp.files() == []  # held: nothing sent
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)

    reader = api_token(service, "radiologist", username="dr.lung")
    answer = _review_post(service, uid, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["results"]
    assert outcome["state"] == "accepted" and outcome["report_status"] == "final"
    assert outcome["sr_sop_instance_uid"] != unverified["sop_instance_uid"]
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=120)

    [(sr_path, sr)] = _received(storescp, COMPREHENSIVE_3D_SR)
    [(_, seg)] = _received(storescp, SEGMENTATION_STORAGE)
    assert sr.SOPInstanceUID == outcome["sr_sop_instance_uid"]
    assert sr.VerificationFlag == "VERIFIED" and sr.PreliminaryFlag == "FINAL"
    [observer] = sr.VerifyingObserverSequence
    assert observer.VerifyingObserverName.family_name == "dr.lung"
    assert observer.VerifyingOrganization == "General Hospital"
    assert "PredecessorDocumentsSequence" not in sr  # the unverified one never went out
    assert seg.SOPInstanceUID == seg_entry["sop_instance_uid"]  # the same SEG, kept
    # The nodule, its measurements and its SEG segment are those of the unverified SR.
    report = hd.sr.srread(sr_path)
    [group] = report.content.get_volumetric_roi_measurement_groups()
    assert group.referenced_segment.referenced_segment_numbers == [2]
    assert str(seg.SOPInstanceUID) in _referenced(pydicom.dcmread(sr_path))
    assert {m.name.meaning for m in group.get_measurements()} >= {"Volume", "Diameter"}
    texts = _texts(pydicom.dcmread(sr_path))
    assert any("dr.lung" in t and "Verified by" in t for t in texts), texts
    assert not any("Not verified by a reader" in t for t in texts), texts
    assert dciodvfy_errors(sr_path) == []
    with service.database.session() as session:
        accept = next(
            e for e in session.scalars(select(AuditEvent)).all() if e.action == "review-accept"
        )
    assert str(sr.SOPInstanceUID) in accept.object_uids


def _summary(sr: Dataset) -> str:
    """The SR's summary line (the one that names the AI second read)."""
    return next(t for t in _texts(sr) if t.startswith("AI second read"))


def _nodule_groups(path: Path) -> list[Any]:
    """The SR's nodule measurement groups (read once the PACS has written it whole)."""
    found: list[Any] = []

    def read() -> bool:
        try:
            found[:] = hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()
        except Exception:  # still being written
            return False
        return True

    wait_until(read, timeout=30)
    return found


def test_an_edit_of_a_sent_ct_result_sends_a_superseding_verified_sr(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_ct_route()], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    files = _series(tmp_path / "ct")
    _send(service, files)
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=240)
    [(_, first)] = _received(storescp, COMPREHENSIVE_3D_SR)
    assert first.VerificationFlag == "UNVERIFIED"
    [(seg_path, seg)] = _received(storescp, SEGMENTATION_STORAGE)
    seg_path.unlink()  # to see whether it is sent again
    uid = str(first.StudyInstanceUID)

    reader = api_token(service, "radiologist", username="dr.second")
    body = {"action": "edit", "findings": {"nodule": "negative"}, "note": "vessel, not nodule"}
    answer = _review_post(service, uid, body, reader)
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["results"]
    assert outcome["state"] == "edited" and outcome["report_status"] == "amended"
    assert outcome["superseded"] == [str(first.SOPInstanceUID)]
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 2, timeout=120)
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=60)
    [(second_path, second)] = [
        (p, ds)
        for p, ds in _received(storescp, COMPREHENSIVE_3D_SR)
        if ds.SOPInstanceUID != first.SOPInstanceUID
    ]
    assert second.SOPInstanceUID == outcome["sr_sop_instance_uid"]
    assert second.SeriesInstanceUID == first.SeriesInstanceUID
    assert int(second.InstanceNumber) == int(first.InstanceNumber) + 1
    assert second.VerificationFlag == "VERIFIED"
    assert second.VerifyingObserverSequence[0].VerifyingObserverName.family_name == "dr.second"
    assert _predecessors(second) == [str(first.SOPInstanceUID)]
    texts = _texts(pydicom.dcmread(second_path))
    assert any("nodule: negative" in t and "vessel, not nodule" in t for t in texts), texts
    # "No nodule": the verified SR gives none of the model's nodule measurements, its
    # summary states the reader's decision, and the SEG showing the nodule is not sent
    # again (nor referenced).
    assert _nodule_groups(second_path) == []
    summary = _summary(pydicom.dcmread(second_path))
    assert "no nodule, by the reader's decision" in summary, summary
    assert "nodule(s)" not in summary, summary
    assert str(seg.SOPInstanceUID) not in _referenced(pydicom.dcmread(second_path))
    assert _received(storescp, SEGMENTATION_STORAGE) == []
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert SEGMENTATION_STORAGE not in {a["sop_class_uid"] for a in result.artifacts}
    assert dciodvfy_errors(second_path) == []
    # A second edit supersedes the verified SR, and through it the first.
    body = {"action": "edit", "findings": {"nodule": "positive"}, "note": "nodule after all"}
    answer = _review_post(service, uid, body, reader)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 3, timeout=120)
    [(third_path, third)] = [
        (p, ds)
        for p, ds in _received(storescp, COMPREHENSIVE_3D_SR)
        if ds.SOPInstanceUID not in (first.SOPInstanceUID, second.SOPInstanceUID)
    ]
    assert sorted(_predecessors(third)) == sorted(
        [str(first.SOPInstanceUID), str(second.SOPInstanceUID)]
    )
    # The nodule is back, with the model's measurements (and its SEG, issued again).
    [group] = _nodule_groups(third_path)
    assert {m.name.meaning for m in group.get_measurements()} >= {"Volume", "Diameter"}
    assert "1 nodule(s)" in _summary(pydicom.dcmread(third_path))
    assert dciodvfy_errors(third_path) == []


def test_a_seg_withdrawn_by_a_negative_edit_is_sent_again_after_a_positive_one(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_ct_route()], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    _send(service, _series(tmp_path / "ct"))
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=240)
    [(_, first)] = _received(storescp, COMPREHENSIVE_3D_SR)
    [(seg_path, seg)] = _received(storescp, SEGMENTATION_STORAGE)
    original = pydicom.dcmread(seg_path)
    seg_path.unlink()
    uid = str(first.StudyInstanceUID)
    reader = api_token(service, "radiologist", username="dr.second")

    negative = {"action": "edit", "findings": {"nodule": "negative"}, "note": "vessel"}
    assert _review_post(service, uid, negative, reader).status_code == 200
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 2, timeout=120)
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=60)
    assert _received(storescp, SEGMENTATION_STORAGE) == []

    positive = {"action": "edit", "findings": {"nodule": "positive"}, "note": "nodule after all"}
    answer = _review_post(service, uid, positive, reader)
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["results"]
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 3, timeout=120)
    wait_until(lambda: len(_received(storescp, SEGMENTATION_STORAGE)) == 1, timeout=120)
    [(again_path, again)] = _received(storescp, SEGMENTATION_STORAGE)
    [(third_path, third)] = [
        (p, ds)
        for p, ds in _received(storescp, COMPREHENSIVE_3D_SR)
        if str(ds.SOPInstanceUID) == outcome["sr_sop_instance_uid"]
    ]
    # A new instance of the same segmentation, in the SEG's series, referenced by the
    # verified SR's nodule group; the withdrawn one is named nowhere.
    assert again.SOPInstanceUID != seg.SOPInstanceUID
    assert again.SeriesInstanceUID == seg.SeriesInstanceUID
    assert int(again.InstanceNumber) == int(seg.InstanceNumber) + 1
    full = pydicom.dcmread(again_path)
    assert full.PixelData == original.PixelData
    assert len(full.SegmentSequence) == len(original.SegmentSequence)
    referenced = _referenced(pydicom.dcmread(third_path))
    assert str(again.SOPInstanceUID) in referenced
    assert str(seg.SOPInstanceUID) not in referenced
    [group] = _nodule_groups(third_path)
    assert group.referenced_segment.referenced_segment_numbers == [2]
    assert group.referenced_segment.referenced_sop_instance_uid == str(again.SOPInstanceUID)
    assert third.VerificationFlag == "VERIFIED"
    assert dciodvfy_errors(third_path) == []
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        segs = [a for a in result.artifacts if a["sop_class_uid"] == SEGMENTATION_STORAGE]
        assert [a["sop_instance_uid"] for a in segs] == [str(again.SOPInstanceUID)]
        assert "withheld" not in (result.summary or {})

    # Negative once more: the re-issued SEG is withdrawn in turn (not sent again).
    again_path.unlink()
    assert _review_post(service, uid, negative, reader).status_code == 200
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 4, timeout=120)
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=60)
    assert _received(storescp, SEGMENTATION_STORAGE) == []
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert SEGMENTATION_STORAGE not in {a["sop_class_uid"] for a in result.artifacts}
        [kept] = result.summary["withheld"]
        assert kept["sop_instance_uid"] == str(again.SOPInstanceUID)


def test_a_reader_positive_where_the_model_found_no_nodule_is_stated_as_the_readers(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_ct_route(review=True)],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
    )
    volume = chest_volume(SHAPE, SPACING, [])  # no nodule in it
    files = write_series(tmp_path / "ct", volume, SPACING, study_uid=generate_uid())
    _send(service, files)
    wait_until(lambda: _states(service) == [("infer", "succeeded")], timeout=240)
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        [prediction] = ResultSummary.from_dict(result.summary).instances
    assert prediction.ok and not prediction.regions  # the model found nothing
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    reader = api_token(service, "radiologist", username="dr.lung")
    body = {"action": "edit", "findings": {"nodule": "positive"}, "note": "RUL nodule"}
    answer = _review_post(service, uid, body, reader)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 1, timeout=120)
    [(path, _)] = _received(storescp, COMPREHENSIVE_3D_SR)
    assert _nodule_groups(path) == []  # no measurement to give
    sr = pydicom.dcmread(path)
    assert sr.VerificationFlag == "VERIFIED"
    summary = _summary(sr)
    assert "no nodule found" not in summary, summary
    assert "nodule present, by the reader's decision" in summary, summary
    assert not any("no nodule" in t for t in _texts(sr)), _texts(sr)
    assert dciodvfy_errors(path) == []


def test_a_ct_study_that_grows_after_its_result_is_read_again_and_superseded(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_ct_route()], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    files = _series(tmp_path / "ct")
    _send(service, files[:30])
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=240)
    [(_, old)] = _received(storescp, COMPREHENSIVE_3D_SR)
    _send(service, files[30:])  # the rest of the series, after its result went out
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 2, timeout=240)
    [(new_path, new)] = [
        (p, ds)
        for p, ds in _received(storescp, COMPREHENSIVE_3D_SR)
        if ds.SOPInstanceUID != old.SOPInstanceUID
    ]
    assert _predecessors(new) == [str(old.SOPInstanceUID)]
    assert new.VerificationFlag == "UNVERIFIED"
    assert dciodvfy_errors(new_path) == []
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert [s["sop_instance_uid"] for s in result.summary["superseded"]] == [
            str(old.SOPInstanceUID)
        ]
        assert len(result.summary["read_sop_instance_uids"]) == len(files)


def test_a_verified_ct_study_that_grows_is_read_again_unverified_and_can_be_accepted(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_ct_route()], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    files = _series(tmp_path / "ct")
    _send(service, files[:30])
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=240)
    [(_, first)] = _received(storescp, COMPREHENSIVE_3D_SR)
    uid = str(first.StudyInstanceUID)
    reader = api_token(service, "radiologist", username="dr.first")
    answer = _review_post(service, uid, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text
    second = answer.json()["results"][0]["sr_sop_instance_uid"]
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 2, timeout=120)

    _send(service, files[30:])  # the rest of the series, after it was verified
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 3, timeout=240)
    [(third_path, _)] = [
        (p, ds)
        for p, ds in _received(storescp, COMPREHENSIVE_3D_SR)
        if ds.SOPInstanceUID not in (first.SOPInstanceUID, second)
    ]
    _nodule_groups(third_path)  # written whole
    third = pydicom.dcmread(third_path)
    assert third.VerificationFlag == "UNVERIFIED" and third.PreliminaryFlag == "PRELIMINARY"
    assert "VerifyingObserverSequence" not in third
    assert not any("dr.first" in t for t in _texts(third))
    assert set(_predecessors(third)) == {str(first.SOPInstanceUID), second}
    with service.database.session() as session:
        assert session.scalar(select(ResultReview)) is None  # unreviewed
        reopened = [
            e for e in session.scalars(select(AuditEvent)).all() if e.action == "review-reopen"
        ]
    assert [e.details["previous_state"] for e in reopened] == ["accepted"]

    answer = _review_post(service, uid, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text  # not "verified already"
    [outcome] = answer.json()["results"]
    assert outcome["report_status"] == "final"
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 4, timeout=120)
    [(fourth_path, _)] = [
        (p, ds)
        for p, ds in _received(storescp, COMPREHENSIVE_3D_SR)
        if ds.SOPInstanceUID == outcome["sr_sop_instance_uid"]
    ]
    _nodule_groups(fourth_path)
    fourth = pydicom.dcmread(fourth_path)
    assert fourth.VerificationFlag == "VERIFIED"
    assert set(_predecessors(fourth)) == {
        str(first.SOPInstanceUID),
        second,
        str(third.SOPInstanceUID),
    }


def test_a_held_ct_read_that_is_read_again_is_never_named_as_a_predecessor(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_ct_route(review=True)], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    files = _series(tmp_path / "ct")
    _send(service, files[:30])
    wait_until(lambda: _states(service) == [("infer", "succeeded")], timeout=240)
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        [never_sent] = [
            a["sop_instance_uid"]
            for a in result.artifacts
            if a["sop_class_uid"] == COMPREHENSIVE_3D_SR
        ]
    _send(service, files[30:])  # the study grows while its first read waits for a reader

    def read_again() -> bool:
        with service.database.session() as session:
            [row] = session.scalars(select(Result)).all()
            return len(row.summary["read_sop_instance_uids"]) == len(files)

    wait_until(read_again, timeout=240)
    wait_until(lambda: _states(service) == [("infer", "succeeded")], timeout=60)
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert "superseded" not in result.summary  # nothing went out to supersede
        review = session.scalar(select(ResultReview))
        assert review is not None and review.state == "pending"
    assert storescp.files() == []
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).StudyInstanceUID)
    reader = api_token(service, "radiologist", username="dr.lung")
    answer = _review_post(service, uid, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 1, timeout=120)
    [(path, _)] = _received(storescp, COMPREHENSIVE_3D_SR)
    _nodule_groups(path)
    sr = pydicom.dcmread(path)
    assert sr.VerificationFlag == "VERIFIED"
    assert never_sent not in _predecessors(sr)
    assert "PredecessorDocumentsSequence" not in sr
