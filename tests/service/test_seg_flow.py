"""DICOM SEG out of the gateway, from a classifier's thresholded CAM regions.

No segmentation model ships with overread, so the SEG path is exercised with the
``cam_segmentation`` option: the bundled classifier's class activation regions of its
positive and referred findings, thresholded, sent as a SEG that says in its
description that it is not a segmentation model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import select

from overread.service.db import Result
from overread.service.outputs import CAM_REGION_DESCRIPTION

from .conftest import Storescp, needs_dcmtk, send_and_run
from .outputs.conftest import dciodvfy_errors

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def test_routed_study_gets_a_valid_cam_region_seg_at_the_pacs(
    make_service: Callable[..., Any], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"], cam_segmentation=["cxr-default"]
    )
    image = dx_factory(size=256)
    send_and_run(service, [image])
    received = {pydicom.dcmread(p).SOPClassUID: p for p in storescp.files()}
    assert set(received) == {COMPREHENSIVE_SR, SEGMENTATION_STORAGE}
    seg_path = received[SEGMENTATION_STORAGE]
    assert dciodvfy_errors(seg_path) == []
    seg = pydicom.dcmread(seg_path)
    source = pydicom.dcmread(image)
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ContentDescription == CAM_REGION_DESCRIPTION[:64]
    assert seg.SegmentationType == "BINARY"
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        findings = result.summary["instances"][0]["findings"]
    flagged = {f["label"] for f in findings if f["decision"] in ("positive", "indeterminate")}
    labels = {item.SegmentLabel for item in seg.SegmentSequence}
    assert labels and labels <= flagged
    frames = seg.pixel_array.reshape(len(labels), source.Rows, source.Columns)
    assert all(0 < frame.sum() < frame.size for frame in frames)
    assert set(np.unique(frames)) <= {0, 1}
    referenced = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
    assert referenced.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
