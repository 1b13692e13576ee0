"""A reviewed X-ray study that grows and is read again, end to end: DCMTK storescu ->
the gateway -> REST review -> the SRs that reach a DCMTK storescp PACS.

The new read is not the one the reader verified: it goes out UNVERIFIED (preliminary),
or is held again where the route requires review, and a reader can accept it. Every
verified SR names as predecessors exactly the SRs that went out before it, never one
that was held and never sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.audit import AuditEvent
from overread.gateway import Gateway
from overread.harness import storescu
from overread.service.db import Result, ResultReview
from overread.service.verification import verification_of

from .conftest import Storescp, api_token, bearer, needs_dcmtk, wait_until
from .outputs.conftest import dciodvfy_errors

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")
pytest.importorskip("overread.service.outputs", reason="the result builders are not importable")

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"


def _route(**extra: Any) -> dict[str, Any]:
    return {
        "name": "chest-xray",
        "modality": ["CR", "DX"],
        "body_part": ["CHEST"],
        "models": ["cxr-default"],
        "complete_on_release": True,
        **extra,
    }


def _post(service: Gateway, uid: str, body: dict[str, Any], token: str) -> httpx.Response:
    url = f"http://127.0.0.1:{service.http_port}/api/studies/{uid}/review"
    shown = httpx.get(url, headers=bearer(token), timeout=30)
    assert shown.status_code == 200, shown.text
    seen = [{"result_id": r["result_id"], "version": r["version"]} for r in shown.json()["results"]]
    return httpx.post(url, json={**body, "results": seen}, headers=bearer(token), timeout=60)


def _srs(storescp: Storescp) -> dict[str, tuple[Path, Dataset]]:
    """The SRs the PACS holds, by SOP Instance UID (files written whole only)."""
    found: dict[str, tuple[Path, Dataset]] = {}
    for path in storescp.files():
        try:
            ds = pydicom.dcmread(path)
            str(ds.VerificationFlag)
        except Exception:  # a file still being written
            continue
        found[str(ds.SOPInstanceUID)] = (path, ds)
    return found


def _wait_srs(storescp: Storescp, count: int) -> dict[str, tuple[Path, Dataset]]:
    wait_until(lambda: len(_srs(storescp)) == count, timeout=120)
    time.sleep(0.5)
    found = _srs(storescp)
    assert len(found) == count
    return found


def _predecessors(sr: Dataset) -> set[str]:
    return {
        str(ref.ReferencedSOPInstanceUID)
        for study in sr.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }


def _review(service: Gateway) -> ResultReview | None:
    with service.database.session() as session:
        return session.scalar(select(ResultReview))


def _audited(service: Gateway, action: str) -> list[AuditEvent]:
    with service.database.session() as session:
        return [e for e in session.scalars(select(AuditEvent)).all() if e.action == action]


def test_a_verified_study_that_grows_goes_out_unverified_and_can_be_accepted_again(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    study = generate_uid()
    storescu(service.dicom_port or 0, [dx_factory(size=256, study_uid=study)])
    [first] = _wait_srs(storescp, 1)
    reader = api_token(service, "radiologist", username="dr.first")
    answer = _post(service, study, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text
    second = answer.json()["results"][0]["sr_sop_instance_uid"]
    _wait_srs(storescp, 2)

    # More of the study: read again in place, with nobody having seen the new read.
    storescu(service.dicom_port or 0, [dx_factory(size=256, study_uid=study)])
    found = _wait_srs(storescp, 3)
    [(third_path, third)] = [v for k, v in found.items() if k not in (first, second)]
    assert third.VerificationFlag == "UNVERIFIED"
    assert "VerifyingObserverSequence" not in third
    assert _predecessors(third) == {first, second}  # both went out
    assert dciodvfy_errors(third_path) == []
    assert _review(service) is None  # unreviewed: dr.first's verification was of the old read
    with service.database.session() as session:
        result = session.scalar(select(Result))
        assert result is not None
        # What FHIR, HL7 and the PDF state of the new read: not verified by anyone.
        assert verification_of(session, result.id) is None
    [reopen] = _audited(service, "review-reopen")
    assert reopen.details["previous_state"] == "accepted"
    assert reopen.details["previous_reviewer"] == "dr.first"

    # A reader can accept the new read (not "verified already").
    answer = _post(service, study, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["results"]
    assert outcome["state"] == "accepted" and outcome["report_status"] == "final"
    found = _wait_srs(storescp, 4)
    _, fourth = found[outcome["sr_sop_instance_uid"]]
    assert fourth.VerificationFlag == "VERIFIED"
    assert _predecessors(fourth) == {first, second, str(third.SOPInstanceUID)}


def test_a_released_sr_is_a_predecessor_of_the_verified_re_read_and_a_held_one_is_not(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(
        routes=[
            _route(review=True, review_timeout_seconds=0.5, review_on_timeout="release-unverified")
        ],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
    )
    study = generate_uid()
    storescu(service.dicom_port or 0, [dx_factory(size=256, study_uid=study)])
    wait_until(lambda: _review(service) is not None)
    time.sleep(0.6)
    service.run_triage()  # past its time-out: released unverified, and sent
    [released] = _wait_srs(storescp, 1)

    # The study grows: read again and held again (the route requires review); nothing
    # more goes out.
    storescu(service.dicom_port or 0, [dx_factory(size=256, study_uid=study)])

    def held_again() -> bool:
        review = _review(service)
        with service.database.session() as session:
            result = session.scalar(select(Result))
            reread = result is not None and len(result.summary["sop_instance_uids"]) == 2
        return reread and review is not None and review.state == "pending"

    wait_until(held_again, timeout=120)
    with service.database.session() as session:
        result = session.scalar(select(Result))
        assert result is not None
        [held_sr] = [
            a["sop_instance_uid"] for a in result.artifacts if a["sop_class_uid"] == SR_CLASS
        ]
        assert [s["sop_instance_uid"] for s in result.summary["superseded"]] == [released]
    time.sleep(1.0)
    assert set(_srs(storescp)) == {released}
    assert [e.details["previous_state"] for e in _audited(service, "review-reopen")] == ["released"]

    reader = api_token(service, "radiologist", username="dr.late")
    answer = _post(service, study, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["results"]
    assert outcome["report_status"] == "final"
    found = _wait_srs(storescp, 2)
    path, verified = found[outcome["sr_sop_instance_uid"]]
    assert verified.VerificationFlag == "VERIFIED"
    # The SR released on time-out went out: named. The held re-read's SR never did.
    assert _predecessors(verified) == {released}
    assert held_sr not in _predecessors(verified)
    assert dciodvfy_errors(path) == []
