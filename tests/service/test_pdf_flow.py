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
from overread.service.db import Result
from overread.service.outputs import ENCAPSULATED_PDF_STORAGE, encapsulated_pdf_bytes

from .conftest import Storescp, needs_dcmtk, send_and_run
from .outputs.conftest import dciodvfy_errors

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")
pypdf = pytest.importorskip("pypdf")

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


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
