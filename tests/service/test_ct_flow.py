"""A CT series through the gateway: storescu -> serve -> SEG and SR at a storescp PACS.

The default routes send CT to the bundled ``ct-nodule-cad``; the SEG must
read back with highdicom and the SR carry each nodule's measurements. A second
study of the same patient, a year later with the nodule grown, is compared with
the first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import highdicom as hd
import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select
from tests.inference.ct_series import SHAPE, SPACING, Nodule, chest_volume, write_series

from overread.service.db import Result

from .conftest import Storescp, job_states, needs_dcmtk, storescu, wait_until
from .outputs.conftest import dciodvfy_errors

pytestmark = [pytest.mark.service, needs_dcmtk]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


NODULE_MM = (24.0, 38.0, 50.0)


def _study(folder: Path, radius: float, study_date: str) -> list[Path]:
    volume = chest_volume(SHAPE, SPACING, [Nodule(NODULE_MM, radius, 30.0)])
    paths = write_series(folder, volume, SPACING, study_uid=generate_uid())
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study_date
        ds.save_as(path)
    return paths


def _received(storescp: Storescp, study_uid: str) -> dict[str, Path]:
    found = {}
    for path in storescp.files():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.StudyInstanceUID == study_uid:
            found[str(ds.SOPClassUID)] = path
    return found


def _measurements(path: Path) -> list[dict[str, Any]]:
    report = hd.sr.srread(path)
    rows = []
    for group in report.content.get_volumetric_roi_measurement_groups():
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        texts = [str(i.TextValue) for i in group[0].ContentSequence if i.ValueType == "TEXT"]
        rows.append({**values, "text": " ".join(texts), "segment": group.referenced_segment})
    return rows


def _at_nodule(service: Any, study_uid: str, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The SR row of the region nearest the phantom's nodule (picked by where it is:
    the CAD may also report a weaker candidate beside it)."""
    with service.database.session() as session:
        [result] = session.scalars(
            select(Result).where(Result.study_instance_uid == study_uid)
        ).all()
        [instance] = result.summary["instances"]
    regions = instance["regions"]
    nearest = min(
        regions,
        key=lambda r: sum((a - b) ** 2 for a, b in zip(r["centre_mm"], NODULE_MM, strict=True)),
    )
    assert sum((a - b) ** 2 for a, b in zip(nearest["centre_mm"], NODULE_MM, strict=True)) < 9.0
    [row] = [
        r for r in rows if r["segment"].referenced_segment_numbers == [nearest["segment_number"]]
    ]
    return row


def test_ct_series_comes_back_as_seg_and_sr_with_nodule_measurements(
    make_service: Callable[..., Any], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    first = _study(tmp_path / "2025", 3.5, "20250101")
    storescu(service.dicom_port, first, called="OVERREAD", calling="CTSCANNER", timeout=60)
    wait_until(lambda: job_states(service) == ["succeeded"] * 2, timeout=180)
    study = str(pydicom.dcmread(first[0]).StudyInstanceUID)
    received = _received(storescp, study)
    assert set(received) == {SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR}

    seg = hd.seg.segread(received[SEGMENTATION_STORAGE])
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["lung", "nodule 1"]
    assert seg.SeriesInstanceUID != pydicom.dcmread(first[0]).SeriesInstanceUID
    [series] = seg.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == pydicom.dcmread(first[0]).SeriesInstanceUID
    assert dciodvfy_errors(received[SEGMENTATION_STORAGE]) == []
    assert dciodvfy_errors(received[COMPREHENSIVE_3D_SR]) == []
    [nodule] = _measurements(received[COMPREHENSIVE_3D_SR])
    assert 5.0 < nodule["Diameter"] < 11.0 and nodule["Volume"] > 50.0
    assert nodule["segment"].referenced_segment_numbers == [2]
    assert "no prior" in nodule["text"]
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert result.model_name == "ct-nodule-cad"
        [instance] = result.summary["instances"]
        assert instance["task"] == "segmentation" and len(instance["regions"]) == 1

    # A year later the same patient's nodule is larger: growth against the prior.
    later = _study(tmp_path / "2026", 6.0, "20260101")
    storescu(service.dicom_port, later, called="OVERREAD", calling="CTSCANNER", timeout=60)
    wait_until(lambda: job_states(service) == ["succeeded"] * 4, timeout=180)
    later_uid = str(pydicom.dcmread(later[0]).StudyInstanceUID)
    received = _received(storescp, later_uid)
    grown = _at_nodule(service, later_uid, _measurements(received[COMPREHENSIVE_3D_SR]))
    assert grown["Diameter"] > nodule["Diameter"] + 1.5
    assert "growing" in grown["text"]


def test_a_study_with_ct_and_a_radiograph_gets_both_models(
    make_service: Callable[..., Any],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    ct = _study(tmp_path / "ct", 4.0, "20260101")
    study = str(pydicom.dcmread(ct[0]).StudyInstanceUID)
    film = dx_factory(study_uid=study, patient_id="CT-PHANTOM-1")
    storescu(service.dicom_port, [*ct, film], called="OVERREAD", calling="MODALITY", timeout=60)
    wait_until(lambda: job_states(service) == ["succeeded"] * 4, timeout=180)
    with service.database.session() as session:
        models = sorted(r.model_name for r in session.scalars(select(Result)).all())
    assert models == ["ct-nodule-cad", "cxr-default"]
    received = _received(storescp, study)
    # The X-ray SR (Comprehensive), and the CT's SEG and 3D SR.
    assert set(received) == {
        SEGMENTATION_STORAGE,
        COMPREHENSIVE_3D_SR,
        "1.2.840.10008.5.1.4.1.1.88.33",
    }
    ct_sr = hd.sr.srread(received[COMPREHENSIVE_3D_SR])
    sources = {
        ref.ReferencedSOPInstanceUID
        for item in ct_sr.CurrentRequestedProcedureEvidenceSequence
        for series in item.ReferencedSeriesSequence
        for ref in series.ReferencedSOPSequence
    }
    assert str(pydicom.dcmread(film).SOPInstanceUID) not in sources


def test_a_study_no_series_of_which_is_a_volume_is_not_analysed_not_retried(
    make_service: Callable[..., Any], storescp: Storescp, tmp_path: Path
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    # One CT slice: routed to the CT model, which cannot read it as a volume.
    [single, *_] = _study(tmp_path / "one", 4.0, "20260101")
    storescu(service.dicom_port, [single], called="OVERREAD", calling="CTSCANNER", timeout=60)
    # The infer job succeeds (with its report's export), it is not retried.
    wait_until(
        lambda: bool(job_states(service)) and set(job_states(service)) == {"succeeded"},
        timeout=120,
    )
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert result.model_name == "ct-nodule-cad"
        [instance] = result.summary["instances"]
        assert not instance["ok"] and instance["gate"]["status"] == "refuse"
        assert "a single slice is not a volume" in " ".join(instance["gate"]["reasons"])
