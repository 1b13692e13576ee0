"""The PDF report out of the gateway: with ``pdf_report`` on, the PACS receives an
Encapsulated PDF of the study beside the SR, in the same patient and study."""

from __future__ import annotations

from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from sqlalchemy import select

from overread.gateway import Gateway
from overread.harness import storescu
from overread.service.db import Job, Result
from overread.service.outputs import ENCAPSULATED_PDF_STORAGE, encapsulated_pdf_bytes

from .conftest import Storescp, needs_dcmtk, send_and_run, wait_until
from .outputs.conftest import dciodvfy_errors

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")
pypdf = pytest.importorskip("pypdf")

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _jobs(service: Gateway) -> list[Job]:
    with service.database.session() as session:
        return list(session.scalars(select(Job).order_by(Job.id)).all())


def test_pacs_receives_the_pdf_report_beside_the_sr(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"], pdf_report=True)
    image = dx_factory(size=256)
    send_and_run(service, [image])
    received = {pydicom.dcmread(p).SOPClassUID: p for p in storescp.files()}
    assert set(received) == {COMPREHENSIVE_SR, ENCAPSULATED_PDF_STORAGE}
    pdf_path = received[ENCAPSULATED_PDF_STORAGE]
    assert dciodvfy_errors(pdf_path) == []
    document = pydicom.dcmread(pdf_path)
    sr = pydicom.dcmread(received[COMPREHENSIVE_SR])
    source = pydicom.dcmread(image, stop_before_pixels=True)
    for keyword in ("PatientID", "PatientName", "StudyInstanceUID", "AccessionNumber"):
        assert document[keyword].value == source[keyword].value == sr[keyword].value
    assert document.Modality == "DOC"
    assert document.VerificationFlag == sr.VerificationFlag == "UNVERIFIED"
    assert document.SeriesInstanceUID not in (sr.SeriesInstanceUID, source.SeriesInstanceUID)

    text = " ".join(
        " ".join((page.extract_text() or "").split())
        for page in pypdf.PdfReader(BytesIO(encapsulated_pdf_bytes(document))).pages
    )
    assert "NOT VERIFIED BY A RADIOLOGIST" in text
    assert "NOT FOR DIAGNOSIS" in text  # the bundled model's card says so
    assert "SVC001" in text and "SERVICE, Test" in text
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        findings = result.summary["instances"][0]["findings"]
        modalities = sorted(a["modality"] for a in result.artifacts)
    assert modalities == ["DOC", "SR"]
    # Every finding the result stored is in the report with its decision.
    for finding in findings:
        assert f"{finding['label']} {finding['decision']} {finding['probability']:.2f}" in text, (
            text
        )


def test_no_pdf_report_unless_asked(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"])
    send_and_run(service, [dx_factory(size=256)])
    assert {pydicom.dcmread(p).SOPClassUID for p in storescp.files()} == {COMPREHENSIVE_SR}


def test_a_deidentifying_destination_gets_no_pdf_report(
    make_service: Callable[..., Gateway],
    storescp: Storescp,
    dx_factory: Callable[..., Path],
    tmp_path: Path,
) -> None:
    # The PDF names the patient in its text: no header change de-identifies it.
    salt = tmp_path / "deid.salt"
    salt.write_text("site-secret\n", encoding="utf-8")
    service = make_service(
        destinations=[
            {
                "name": "RESEARCH",
                "ae_title": "PACSAE",
                "host": "127.0.0.1",
                "port": storescp.port,
                "deidentify": ["retain-device-identity"],
            }
        ],
        deid_salt_file=salt,
        pdf_report=True,
    )
    send_and_run(service, [dx_factory(size=256)])
    assert {pydicom.dcmread(p).SOPClassUID for p in storescp.files()} == {COMPREHENSIVE_SR}
    with service.database.session() as session:
        [result] = session.scalars(select(Result)).all()
        assert sorted(a["modality"] for a in result.artifacts) == ["DOC", "SR"]


def _report_text(path: Path) -> tuple[pydicom.Dataset, str, int]:
    """The instance, its PDF's text (whitespace collapsed) and its number of images."""
    document = pydicom.dcmread(path)
    reader = pypdf.PdfReader(BytesIO(encapsulated_pdf_bytes(document)))
    text = " ".join(" ".join((p.extract_text() or "").split()) for p in reader.pages)
    return document, text, sum(len(page.images) for page in reader.pages)


def test_with_explain_the_report_shows_the_overlays_sent(
    make_service: Callable[..., Gateway], storescp: Storescp, dx_factory: Callable[..., Path]
) -> None:
    service = make_service(
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"], pdf_report=True, explain=True
    )
    storescu(service.dicom_port or 0, [dx_factory(size=256)])
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    classes = {
        p: str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in storescp.files()
    }
    [pdf_path] = [p for p, c in classes.items() if c == ENCAPSULATED_PDF_STORAGE]
    overlays = [
        p for p, c in classes.items() if c not in (ENCAPSULATED_PDF_STORAGE, COMPREHENSIVE_SR)
    ]
    _, text, images = _report_text(pdf_path)
    assert overlays and images == len(overlays)
    assert "Where the model looked" in text


def test_a_study_not_analysed_gets_a_report_saying_why(
    make_service: Callable[..., Gateway], storescp: Storescp
) -> None:
    ct = Path(pydicom.data.get_testdata_file("CT_small.dcm"))  # bundled with pydicom
    routes = [
        {"name": "ct", "modality": ["CT"], "models": ["cxr-default"], "complete_on_release": True}
    ]
    service = make_service(
        routes=routes,
        destinations=[f"PACS=PACSAE@127.0.0.1:{storescp.port}"],
        pdf_report=True,
    )
    storescu(service.dicom_port or 0, [ct])
    wait_until(lambda: [j.state for j in _jobs(service)] == ["succeeded", "succeeded"])
    received = {pydicom.dcmread(p).SOPClassUID: p for p in storescp.files()}
    assert set(received) == {COMPREHENSIVE_SR, ENCAPSULATED_PDF_STORAGE}
    assert dciodvfy_errors(received[ENCAPSULATED_PDF_STORAGE]) == []
    document, text, _ = _report_text(received[ENCAPSULATED_PDF_STORAGE])
    source = pydicom.dcmread(ct, stop_before_pixels=True)
    assert document.StudyInstanceUID == source.StudyInstanceUID
    assert document.PatientID == source.PatientID
    assert "did not analyse this study" in text
    assert "modality CT is not accepted" in text
