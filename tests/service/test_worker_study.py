"""A two-view chest study through the gateway: one SR for the study reaches the PACS."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.service.db import Result

from .conftest import Storescp, needs_dcmtk, send_and_run

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")


def test_a_multi_view_study_gets_one_sr_referencing_every_image_read(
    make_service: Callable[..., Any], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    study = generate_uid()
    pa = dx_factory(study_uid=study, size=256)
    ap_path = dx_factory(study_uid=study, size=256)
    ap = pydicom.dcmread(ap_path)
    ap.ViewPosition = "AP"
    ap.save_as(ap_path, enforce_file_format=True)
    # The shipped model reads frontal views only: the lateral is reported, not read.
    lateral_path = dx_factory(study_uid=study, size=256)
    lateral = pydicom.dcmread(lateral_path)
    lateral.ViewPosition = "LL"
    lateral.save_as(lateral_path, enforce_file_format=True)
    send_and_run(service, [pa, ap_path, lateral_path])
    [sr_file] = storescp.files()
    sr = hd.sr.srread(sr_file)
    assert sr.StudyInstanceUID == study
    groups = sr.content.get_image_measurement_groups()
    sources = {g.source_images[0].referenced_sop_instance_uid for g in groups}
    assert sources == {pydicom.dcmread(pa).SOPInstanceUID, ap.SOPInstanceUID}
    assert len(groups) == 2 * 14
    identifiers = {str(g.tracking_identifier).rsplit(" ", 1)[-1] for g in groups}
    assert identifiers == {"PA", "AP"}
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        instances = result.summary["instances"]
        assert sorted(i["ok"] for i in instances) == [False, True, True]
        [refused] = [i for i in instances if not i["ok"]]
        assert "LL" in refused["error"]
        assert len(result.artifacts) == 1
        assert result.summary["study"]["study_instance_uid"] == study
        timings = result.summary["timings"]
        assert timings["artifacts"] > 0 and timings["model_total"] > 0
