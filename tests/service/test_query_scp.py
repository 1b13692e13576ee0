"""C-FIND and C-MOVE on the gateway's DICOM port, asked by DCMTK and by pynetdicom."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import Dataset, dcmread
from pydicom.errors import InvalidDicomError
from pynetdicom import AE
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    DigitalXRayImageStorageForPresentation,
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)
from sqlalchemy import select

from overread.audit import AuditAction
from overread.audit.schema import AuditEvent
from overread.harness import storescu
from overread.harness.gateway import Gateway
from overread.service.db import Database, Instance

from .conftest import Storescp, needs_dcmtk, wait_until

pytestmark = [
    pytest.mark.service,
    needs_dcmtk,
    pytest.mark.skipif(shutil.which("findscu") is None, reason="DCMTK findscu not installed"),
]


def _audited(db: Database, action: AuditAction) -> list[AuditEvent]:
    with db.session() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == action.value).order_by(AuditEvent.seq)
        ).all()
        session.expunge_all()
        return list(events)


def _stored(service: Gateway, files: list[Path]) -> None:
    storescu(service.dicom_port or 0, files, called="OVERREAD", calling="MODALITY", timeout=60)

    def arrived() -> bool:
        with service.database.session() as session:
            return len(session.scalars(select(Instance)).all()) == len(files)

    wait_until(arrived, timeout=30)


def _findscu(
    port: int, out: Path, *keys: str, calling: str = "VIEWER"
) -> subprocess.CompletedProcess[str]:
    out.mkdir(parents=True, exist_ok=True)
    args = ["findscu", "-S", "-aet", calling, "-aec", "OVERREAD", "-X", "-od", str(out)]
    for key in keys:
        args += ["-k", key]
    return subprocess.run(
        [*args, "127.0.0.1", str(port)], capture_output=True, text=True, timeout=60, check=False
    )


def _responses(out: Path) -> list[Dataset]:
    return [dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]


def _find(
    port: int, identifier: Dataset, model: str = StudyRootQueryRetrieveInformationModelFind
) -> tuple[list[Dataset], int]:
    """Matches and the final status of one C-FIND from a pynetdicom SCU."""
    ae = AE(ae_title="VIEWER")
    ae.add_requested_context(model)
    assoc = ae.associate("127.0.0.1", port, ae_title="OVERREAD")
    assert assoc.is_established
    matches: list[Dataset] = []
    final = -1
    try:
        for status, found in assoc.send_c_find(identifier, model):
            if status.Status in (0xFF00, 0xFF01):
                matches.append(found)
            else:
                final = int(status.Status)
    finally:
        assoc.release()
    return matches, final


def _identifier(level: str, **keys: object) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword, value in keys.items():
        setattr(identifier, keyword, value)
    return identifier


def test_findscu_finds_a_stored_study_with_the_keys_it_asked_for(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path], tmp_path: Path
) -> None:
    service = make_service()
    first = dx_factory(study_uid="1.2.826.0.1.3680043.10.1.1")
    second = dx_factory(study_uid="1.2.826.0.1.3680043.10.1.1")
    other = dx_factory(study_uid="1.2.826.0.1.3680043.10.1.2", patient_id="OTHER9")
    _stored(service, [first, second, other])

    done = _findscu(
        service.dicom_port or 0,
        tmp_path / "found",
        "QueryRetrieveLevel=STUDY",
        "PatientID=SVC001",
        "StudyInstanceUID",
        "PatientName",
        "StudyDate",
        "ModalitiesInStudy",
        "NumberOfStudyRelatedInstances",
    )
    assert done.returncode == 0, done.stderr
    (match,) = _responses(tmp_path / "found")
    assert match.StudyInstanceUID == "1.2.826.0.1.3680043.10.1.1"
    assert str(match.PatientName) == "Service^Test"
    assert match.StudyDate == "20260101"
    assert match.ModalitiesInStudy == "DX"
    assert int(match.NumberOfStudyRelatedInstances) == 2
    assert match.RetrieveAETitle == "OVERREAD"
    assert "AccessionNumber" not in match  # only what was asked (and the unique key)
    (audited,) = _audited(service.database, AuditAction.QUERY)
    assert audited.actor == "ae:VIEWER"


@pytest.mark.filterwarnings("ignore:Invalid value for VR DA")
def test_series_image_and_patient_levels_wildcards_and_ranges(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> None:
    service = make_service()
    study = "1.2.826.0.1.3680043.10.2.1"
    files = [
        dx_factory(study_uid=study, series_uid=f"{study}.1", sop_uid=f"{study}.1.{n}")
        for n in (1, 2)
    ]
    files.append(dx_factory(study_uid=study, series_uid=f"{study}.2", sop_uid=f"{study}.2.1"))
    _stored(service, files)
    port = service.dicom_port or 0

    series, status = _find(
        port,
        _identifier(
            "SERIES",
            StudyInstanceUID=study,
            SeriesInstanceUID="",
            NumberOfSeriesRelatedInstances="",
            Modality="",
        ),
    )
    assert status == 0x0000
    counts = {s.SeriesInstanceUID: int(s.NumberOfSeriesRelatedInstances) for s in series}
    assert counts == {f"{study}.1": 2, f"{study}.2": 1}
    assert {s.Modality for s in series} == {"DX"}

    images, status = _find(
        port,
        _identifier(
            "IMAGE", StudyInstanceUID=study, SeriesInstanceUID=f"{study}.1", SOPInstanceUID=""
        ),
    )
    assert status == 0x0000
    assert sorted(i.SOPInstanceUID for i in images) == [f"{study}.1.1", f"{study}.1.2"]

    by_name, _ = _find(port, _identifier("STUDY", PatientName="serv*", StudyInstanceUID=""))
    assert [m.StudyInstanceUID for m in by_name] == [study]
    in_range, _ = _find(
        port, _identifier("STUDY", StudyDate="20251201-20260131", StudyInstanceUID="")
    )
    assert len(in_range) == 1
    out_of_range, _ = _find(port, _identifier("STUDY", StudyDate="-20251231", StudyInstanceUID=""))
    assert out_of_range == []

    patients, status = _find(
        port,
        _identifier(
            "PATIENT", PatientID="SVC001", PatientName="", NumberOfPatientRelatedStudies=""
        ),
        PatientRootQueryRetrieveInformationModelFind,
    )
    assert status == 0x0000
    (patient,) = patients
    assert str(patient.PatientName) == "Service^Test"
    assert int(patient.NumberOfPatientRelatedStudies) == 1

    _, status = _find(port, _identifier("PATIENT", PatientID="SVC001"))
    assert status == 0xA900  # no PATIENT level in the Study Root model
    _, status = _find(port, _identifier("STUDY", StudyDate="2026-13-45"))
    assert status == 0xA900


def test_movescu_moves_a_stored_study_to_a_known_destination(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path], tmp_path: Path
) -> None:
    pacs = Storescp(tmp_path / "pacs")
    try:
        service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{pacs.port}"])
        study = "1.2.826.0.1.3680043.10.3.1"
        files = [dx_factory(study_uid=study), dx_factory(study_uid=study)]
        _stored(service, files)
        moved = subprocess.run(
            [
                "movescu", "-S", "-aet", "VIEWER", "-aec", "OVERREAD", "-aem", "PACSAE",
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                "127.0.0.1", str(service.dicom_port),
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert moved.returncode == 0, moved.stderr
        expected = {str(dcmread(f).SOPInstanceUID) for f in files}

        def received() -> set[str]:  # the gateway's own results may arrive there too
            uids = set()
            for path in pacs.out.glob("*"):
                try:  # a file storescp is still writing is read on the next round
                    uids.add(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
                except (InvalidDicomError, OSError, EOFError, AttributeError):
                    continue
            return uids

        wait_until(lambda: expected <= received(), timeout=30)
        # the gateway's own results are exported (and audited) too: pick the C-MOVE
        moves = [
            e
            for e in _audited(service.database, AuditAction.EXPORT)
            if e.details.get("via") == "C-MOVE"
        ]
        assert len(moves) == 1, [e.details for e in moves]
        assert moves[0].details["destination"] == "PACSAE"
        assert moves[0].details["instances"] == len(files)

        unknown = subprocess.run(
            [
                "movescu", "-v", "-S", "-aet", "VIEWER", "-aec", "OVERREAD", "-aem", "NOWHERE",
                "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={study}",
                "127.0.0.1", str(service.dicom_port),
            ],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert "MoveDestinationUnknown" in unknown.stdout + unknown.stderr
    finally:
        pacs.stop()


def test_allow_query_ae_refuses_an_unknown_calling_ae_and_audits_it(
    make_service: Callable[..., Gateway], dx_factory: Callable[..., Path], tmp_path: Path
) -> None:
    service = make_service(allow_query_ae=["VIEWER@127.0.0.1"])
    _stored(service, [dx_factory()])  # storage stays open to any calling AE
    port = service.dicom_port or 0

    refused = _findscu(
        port,
        tmp_path / "stranger",
        "QueryRetrieveLevel=STUDY",
        "StudyInstanceUID",
        calling="STRANGER",
    )
    assert refused.returncode != 0
    assert _responses(tmp_path / "stranger") == []
    (event,) = _audited(service.database, AuditAction.ASSOCIATION_REFUSED)
    assert event.actor == "ae:STRANGER"
    assert "--allow-query-ae" in event.details["reason"]

    # On an association that also proposes storage, the request itself is refused.
    ae = AE(ae_title="STRANGER")
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ae.add_requested_context(DigitalXRayImageStorageForPresentation)
    assoc = ae.associate("127.0.0.1", port, ae_title="OVERREAD")
    assert assoc.is_established
    try:
        responses = list(
            assoc.send_c_find(
                _identifier("STUDY", StudyInstanceUID=""),
                StudyRootQueryRetrieveInformationModelFind,
            )
        )
    finally:
        assoc.release()
    assert [int(s.Status) for s, _ in responses] == [0x0124]
    (refusal,) = _audited(service.database, AuditAction.QUERY_REFUSED)
    assert refusal.actor == "ae:STRANGER"

    allowed = _findscu(port, tmp_path / "viewer", "QueryRetrieveLevel=STUDY", "StudyInstanceUID")
    assert allowed.returncode == 0, allowed.stderr
    assert len(_responses(tmp_path / "viewer")) == 1
