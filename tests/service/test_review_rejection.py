"""A CT SEG that went out unverified and that a reader's correction withdraws (nodule
negative) is rejected at the PACS: a KOS "Rejected for Quality Reasons" (IHE IOCM)
listing it follows the verified SR to the same destination, and the step is audited."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from overread.audit import AuditEvent
from overread.gateway import Gateway
from overread.service.db import Result

from .conftest import Storescp, api_token, needs_dcmtk, wait_until
from .outputs.conftest import dciodvfy_errors
from .test_ct_review_flow import (
    COMPREHENSIVE_3D_SR,
    SEGMENTATION_STORAGE,
    _ct_route,
    _received,
    _review_post,
    _send,
    _series,
    _states,
)

pytestmark = [pytest.mark.service, needs_dcmtk]

KEY_OBJECT_SELECTION = "1.2.840.10008.5.1.4.1.1.88.59"


def _listed(note: pydicom.Dataset) -> list[str]:
    return [
        str(ref.ReferencedSOPInstanceUID)
        for study in note.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    ]


def test_a_sent_ct_seg_corrected_negative_is_rejected_by_a_kos(
    make_service: Callable[..., Gateway], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_ct_route()], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    _send(service, _series(tmp_path / "ct"))
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=240)
    [(_, first)] = _received(storescp, COMPREHENSIVE_3D_SR)
    [(_, seg)] = _received(storescp, SEGMENTATION_STORAGE)
    uid = str(first.StudyInstanceUID)
    reader = api_token(service, "radiologist", username="dr.second")
    body = {"action": "edit", "findings": {"nodule": "negative"}, "note": "vessel"}
    answer = _review_post(service, uid, body, reader)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: len(_received(storescp, KEY_OBJECT_SELECTION)) == 1, timeout=120)
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=60)
    assert len(_received(storescp, COMPREHENSIVE_3D_SR)) == 2
    [(note_path, _)] = _received(storescp, KEY_OBJECT_SELECTION)
    note = pydicom.dcmread(note_path)
    title = note.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodeMeaning) == ("113001", "Rejected for Quality Reasons")
    assert _listed(note) == [str(seg.SOPInstanceUID)]
    assert note.StudyInstanceUID == seg.StudyInstanceUID
    assert dciodvfy_errors(note_path) == []
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        classes = [a["sop_class_uid"] for a in result.artifacts]
        [event] = [
            e for e in session.scalars(select(AuditEvent)).all() if e.action == "review-withdraw"
        ]
    assert SEGMENTATION_STORAGE not in classes and KEY_OBJECT_SELECTION in classes
    assert event.details["rejected"] == [str(seg.SOPInstanceUID)]
    assert str(seg.SOPInstanceUID) in event.object_uids
    # A further correction withdraws nothing more: no second rejection note.
    body = {"action": "edit", "findings": {"nodule": "negative"}, "note": "vessel, confirmed"}
    answer = _review_post(service, uid, body, reader)
    assert answer.status_code == 200, answer.text
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_3D_SR)) == 3, timeout=120)
    wait_until(lambda: [s for _, s in _states(service)] == ["succeeded"] * 2, timeout=60)
    with service.database.session() as session:
        events = [
            e for e in session.scalars(select(AuditEvent)).all() if e.action == "review-withdraw"
        ]
    assert len(events) == 1
    assert len({ds.SOPInstanceUID for _, ds in _received(storescp, KEY_OBJECT_SELECTION)}) == 1
