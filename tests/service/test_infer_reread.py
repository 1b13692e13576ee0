"""Re-reads of a grown study through the gateway: DCMTK storescu -> the gateway -> the
infer job -> the SRs that reach a DCMTK storescp PACS.

A reader's verdict (or a time-out's release) that lands while the re-read runs is not
lost: the re-read runs again from it, and its SR names the SR that verdict sent. A CT
re-read names as superseded exactly the SRs its new SRs name, the "not analysed"
report included.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from sqlalchemy import select
from tests.inference.ct_series import SHAPE, SPACING, Nodule, chest_volume, write_series

from overread.audit import AuditEvent
from overread.gateway import Gateway
from overread.service.db import Job, Result, ResultReview, utcnow
from overread.service.infer import InferenceHandler
from overread.service.outputs.volume import source_series

from .conftest import Storescp, api_token, bearer, needs_dcmtk, storescu, wait_until

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")

SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.33"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


def _post(service: Gateway, uid: str, body: dict[str, Any], token: str) -> httpx.Response:
    url = f"http://127.0.0.1:{service.http_port}/api/studies/{uid}/review"
    shown = httpx.get(url, headers=bearer(token), timeout=30)
    assert shown.status_code == 200, shown.text
    seen = [{"result_id": r["result_id"], "version": r["version"]} for r in shown.json()["results"]]
    return httpx.post(url, json={**body, "results": seen}, headers=bearer(token), timeout=60)


def _received(storescp: Storescp, sop_class: str) -> dict[str, Dataset]:
    """The PACS's objects of ``sop_class`` by SOP Instance UID (files written whole)."""
    found: dict[str, Dataset] = {}
    for path in storescp.files():
        try:
            ds = pydicom.dcmread(path)
            str(ds.ContentSequence[0].ValueType)
        except Exception:  # a file still being written
            continue
        if ds.SOPClassUID == sop_class:
            found[str(ds.SOPInstanceUID)] = ds
    return found


def _predecessors(sr: Dataset) -> set[str]:
    return {
        str(ref.ReferencedSOPInstanceUID)
        for study in sr.get("PredecessorDocumentsSequence", [])
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }


def _superseded(result: Result) -> list[str]:
    return [str(s["sop_instance_uid"]) for s in (result.summary or {}).get("superseded") or ()]


def _jobs_done(service: Gateway) -> bool:
    with service.database.session() as session:
        states = list(session.scalars(select(Job.state)).all())
    return bool(states) and all(s == "succeeded" for s in states)


def _review(service: Gateway) -> ResultReview | None:
    with service.database.session() as session:
        return session.scalar(select(ResultReview))


# -- a verdict while the study is read again ------------------------------------------


@pytest.mark.parametrize("verdict", ["accept", "time-out release"])
def test_a_verdict_during_a_re_read_is_named_by_the_re_reads_sr(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
    verdict: str,
) -> None:
    """The study grows while its first read waits for a reader; the re-read starts
    (the review still pending: nothing went out) and, before it stores its result, a
    reader accepts the first read (or its time-out releases it) and that SR goes out.
    The re-read must not build on the pending state it saw: its SR names that SR."""
    service = make_service(
        routes=[
            {
                "name": "chest-xray",
                "modality": ["CR", "DX"],
                "body_part": ["CHEST"],
                "models": ["cxr-default"],
                "complete_on_release": True,
                "review": True,
                "review_timeout_seconds": 3600,
                "review_on_timeout": "release-unverified",
            }
        ],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
    )
    study = generate_uid()
    reader = api_token(service, "radiologist", username="dr.meanwhile")
    storescu(service.dicom_port or 0, [dx_factory(size=256, study_uid=study)])
    wait_until(lambda: (r := _review(service)) is not None and r.state == "pending")
    wait_until(lambda: _jobs_done(service))

    # The hook: between the re-read's building and its storing, the verdict lands.
    original = InferenceHandler._finish
    landed: list[str] = []

    def finish(self: InferenceHandler, *args: Any, **kwargs: Any) -> list[int]:
        if kwargs.get("replaces") is not None and not landed:
            if verdict == "accept":
                answer = _post(service, study, {"action": "accept"}, reader)
                assert answer.status_code == 200, answer.text
                landed.append(str(answer.json()["results"][0]["sr_sop_instance_uid"]))
            else:
                service.run_triage(now=utcnow() + dt.timedelta(hours=2))
                review = _review(service)
                assert review is not None and review.state == "released"
                with service.database.session() as session:
                    [row] = session.scalars(select(Result)).all()
                    [sr] = [a for a in row.artifacts if a["sop_class_uid"] == SR_CLASS]
                landed.append(str(sr["sop_instance_uid"]))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(InferenceHandler, "_finish", finish)
    storescu(service.dicom_port or 0, [dx_factory(size=256, study_uid=study)])

    def read_again() -> bool:
        with service.database.session() as session:
            row = session.scalar(select(Result))
            grown = row is not None and len(row.summary["sop_instance_uids"]) == 2
        review = _review(service)
        return grown and review is not None and review.state == "pending"

    wait_until(read_again, timeout=240)
    wait_until(lambda: _jobs_done(service), timeout=120)
    [went_out] = landed
    wait_until(lambda: set(_received(storescp, SR_CLASS)) == {went_out}, timeout=60)
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert _superseded(result) == [went_out]
        reopened = [
            e for e in session.scalars(select(AuditEvent)).all() if e.action == "review-reopen"
        ]
    expected = "accepted" if verdict == "accept" else "released"
    assert [e.details["previous_state"] for e in reopened] == [expected]

    # The re-read, accepted in turn, supersedes the SR that went out meanwhile.
    answer = _post(service, study, {"action": "accept"}, reader)
    assert answer.status_code == 200, answer.text
    [outcome] = answer.json()["results"]
    wait_until(lambda: len(_received(storescp, SR_CLASS)) == 2, timeout=120)
    verified = _received(storescp, SR_CLASS)[outcome["sr_sop_instance_uid"]]
    assert verified.VerificationFlag == "VERIFIED"
    assert _predecessors(verified) == {went_out}


# -- CT re-reads -----------------------------------------------------------------------


def _ct_route() -> dict[str, Any]:
    return {
        "name": "chest-ct",
        "modality": ["CT"],
        "models": ["ct-threshold-baseline"],
        "complete_on_release": True,
    }


def _series(folder: Path, study_uid: str) -> list[Path]:
    volume = chest_volume(SHAPE, SPACING, [Nodule((24.0, 38.0, 50.0), 4.0, 30.0)])
    return write_series(folder, volume, SPACING, study_uid=study_uid)


def _odd_slice(source: Path, out: Path) -> Path:
    """One more slice of ``source``'s series whose pixel spacing differs: the series
    no longer makes a volume."""
    ds = pydicom.dcmread(source)
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PixelSpacing = [1.6, 1.6]
    ds.InstanceNumber = 999
    ds.save_as(out)
    return out


def _send(service: Gateway, files: list[Path]) -> None:
    storescu(service.dicom_port, files, called="OVERREAD", calling="CTSCANNER", timeout=60)


def test_a_ct_re_read_that_analyses_nothing_supersedes_the_sr_sent(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_ct_route()], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    files = _series(tmp_path / "ct", generate_uid())
    _send(service, files)
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 1, timeout=240)
    [old] = _received(storescp, COMPREHENSIVE_3D_SR)
    wait_until(lambda: _jobs_done(service), timeout=60)

    _send(service, [_odd_slice(files[0], tmp_path / "odd.dcm")])
    wait_until(lambda: len(_received(storescp, SR_CLASS)) == 1, timeout=240)
    [report] = _received(storescp, SR_CLASS).values()  # the "not analysed" report
    assert _predecessors(report) == {old}
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert _superseded(result) == [old]


def test_a_ct_series_no_longer_read_is_not_recorded_as_superseded(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_ct_route()], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    study = generate_uid()
    first = _series(tmp_path / "a", study)
    second = _series(tmp_path / "b", study)
    _send(service, first + second)
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 2, timeout=300)
    wait_until(lambda: _jobs_done(service), timeout=60)
    first_series = str(pydicom.dcmread(first[0], stop_before_pixels=True).SeriesInstanceUID)
    [first_sr] = [
        uid
        for uid, sr in _received(storescp, COMPREHENSIVE_3D_SR).items()
        if source_series(sr) == {first_series}
    ]
    old_srs = set(_received(storescp, COMPREHENSIVE_3D_SR))

    # The second series gets a slice that breaks it: the re-read reads the first only.
    _send(service, [_odd_slice(second[0], tmp_path / "odd.dcm")])
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 3, timeout=300)
    [new] = [
        sr for uid, sr in _received(storescp, COMPREHENSIVE_3D_SR).items() if uid not in old_srs
    ]
    assert source_series(new) == {first_series}
    assert _predecessors(new) == {first_sr}
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        # Only the SR a new SR names; the second series' SR is superseded by none.
        assert _superseded(result) == [first_sr]
