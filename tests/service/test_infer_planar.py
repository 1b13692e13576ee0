"""The lung-field (planar) package through the gateway: DCMTK storescu -> the gateway
-> the infer job -> the result, the results API and the PACS.

Each image of a projection series is its own prediction, stored under its own SOP
Instance UID; an image outside the package's intended use (its header's body part)
is refused by the input gate as the classifiers refuse it: not analysed, no SEG.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.phantom import generate_cohort
from overread.results import ResultSummary
from overread.service.db import Instance, Result

from .conftest import Storescp, api_token, bearer, job_states, needs_dcmtk, storescu, wait_until

pytestmark = [pytest.mark.service, needs_dcmtk]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _route(**extra: Any) -> dict[str, Any]:
    return {
        "name": "chest-xray-lung-fields",
        "modality": ["CR", "DX"],
        "models": ["cxr-lung-seg"],
        "complete_on_release": True,
        **extra,
    }


def _film(tmp_path: Path) -> pydicom.Dataset:
    generate_cohort(tmp_path / "cohort", n=1, seed=51, rows=256, cols=256, workers=1)
    [film] = sorted((tmp_path / "cohort" / "images").rglob("*.dcm"))
    return pydicom.dcmread(film)


def _received(storescp: Storescp, sop_class: str) -> list[pydicom.Dataset]:
    found = []
    for path in storescp.files():
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # a file still being written
            continue
        if ds.SOPClassUID == sop_class:
            found.append(ds)
    return found


def _all_done(service: Any, count: int) -> bool:
    states = job_states(service)
    return len(states) >= count and all(s == "succeeded" for s in states)


def test_two_images_of_one_series_are_each_stored_under_their_own_uid(
    make_service: Callable[..., Any], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(
        routes=[_route(body_part=["CHEST"])],
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
    )
    pa = _film(tmp_path)
    lateral = copy.deepcopy(pa)
    lateral.SOPInstanceUID = generate_uid()
    lateral.file_meta.MediaStorageSOPInstanceUID = lateral.SOPInstanceUID
    lateral.InstanceNumber = 2
    files = [tmp_path / "pa.dcm", tmp_path / "lateral.dcm"]
    pa.save_as(files[0])
    lateral.save_as(files[1])
    storescu(service.dicom_port, files, called="OVERREAD", calling="MODALITY", timeout=60)
    wait_until(lambda: _all_done(service, 2), timeout=240)
    sent = {str(pa.SOPInstanceUID), str(lateral.SOPInstanceUID)}

    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        summary = ResultSummary.from_dict(result.summary)
        stored = {
            str(service.store.path(row.object_key)): row.sop_instance_uid
            for row in session.scalars(select(Instance)).all()
        }
    assert len(summary.instances) == 2
    assert set(summary.sop_instance_uids) == sent
    # Each entry is the UID of the image that prediction read.
    for prediction, uid in zip(summary.instances, summary.sop_instance_uids, strict=True):
        assert stored[str(prediction.path)] == uid

    token = api_token(service, "admin")
    url = f"http://127.0.0.1:{service.http_port}/api/studies/{pa.StudyInstanceUID}/results"
    answer = httpx.get(url, headers=bearer(token), timeout=30)
    assert answer.status_code == 200, answer.text
    [shown] = answer.json()
    assert {i["sop_instance_uid"] for i in shown["instances"]} == sent

    # One SEG per image, each referencing its own source image.
    wait_until(lambda: len(_received(storescp, SEGMENTATION_STORAGE)) == 2, timeout=60)
    referenced = {
        str(ref.ReferencedSOPInstanceUID)
        for seg in _received(storescp, SEGMENTATION_STORAGE)
        for series in seg.ReferencedSeriesSequence
        for ref in series.ReferencedInstanceSequence
    }
    assert referenced == sent


def test_a_radiograph_of_a_hand_is_not_analysed_by_the_lung_field_package(
    make_service: Callable[..., Any], storescp: Storescp, tmp_path: Path
) -> None:
    """A route that takes any DX (no body part rule): the package's own rules still
    decide, as the classifiers' do."""
    service = make_service(
        routes=[_route()], destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"]
    )
    hand = _film(tmp_path)
    hand.BodyPartExamined = "HAND"
    path = tmp_path / "hand.dcm"
    hand.save_as(path)
    storescu(service.dicom_port, [path], called="OVERREAD", calling="MODALITY", timeout=60)
    wait_until(lambda: _all_done(service, 2), timeout=240)

    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        summary = ResultSummary.from_dict(result.summary)
        artifacts = list(result.artifacts or [])
    [prediction] = summary.instances
    assert not prediction.ok and prediction.findings == []
    assert prediction.gate is not None and prediction.gate.refused
    assert prediction.gate.reasons == ("body part HAND is not accepted (accepts CHEST)",)
    assert summary.sop_instance_uids == (str(hand.SOPInstanceUID),)
    # No SEG: the not-analysed report alone, saying why.
    assert [a["sop_class_uid"] for a in artifacts] == [COMPREHENSIVE_SR]
    wait_until(lambda: len(_received(storescp, COMPREHENSIVE_SR)) == 1, timeout=60)
    assert _received(storescp, SEGMENTATION_STORAGE) == []
