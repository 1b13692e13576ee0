"""The PDF report of a study, and its DICOM Encapsulated PDF wrapping.

The report is rendered by the real builder from a realistic prediction on real
images, read back with pypdf (text, images) and the DICOM instance checked by
dicom3tools' dciodvfy and pydicom.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from overread.errors import ServiceError
from overread.harness import write_chest_dx
from overread.models import bundled_dir, load_package
from overread.models.card import ModelCardSummary
from overread.results import GateVerdict, ModelRef, Prediction
from overread.service.outputs import (
    ENCAPSULATED_PDF_STORAGE,
    ReportContext,
    build_overlays,
    build_pdf_report,
    encapsulate_pdf,
    encapsulated_pdf_bytes,
    overlay_labels,
    overlay_thumbnails,
    render_report_pdf,
)

from .conftest import dciodvfy_errors, make_prediction

pypdf = pytest.importorskip("pypdf")


@pytest.fixture(scope="module")
def chest(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    """A small chest DX of a named patient, with pixels."""
    path = tmp_path_factory.mktemp("pdf") / "chest.dcm"
    write_chest_dx(
        path,
        size=256,
        seed=3,
        patient_id="PDF-4711",
        patient_name="Doe^Jane",
        birth_date="19610203",
        accession="ACC-PDF-1",
    )
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def card() -> ModelCardSummary:
    return ModelCardSummary.from_package(load_package(bundled_dir() / "cxr-default"))


def _text(pdf: bytes) -> str:
    reader = pypdf.PdfReader(BytesIO(pdf))
    return "\n".join(page.extract_text() or "" for page in reader.pages)


def _flat(text: str) -> str:
    return " ".join(text.split())


def test_report_names_the_patient_findings_model_and_that_it_is_unverified(
    chest: Dataset, card: ModelCardSummary
) -> None:
    prediction = make_prediction()
    pdf = render_report_pdf([prediction], chest, ReportContext(card, {"Pneumothorax"}))
    assert pdf.startswith(b"%PDF-")
    text = _flat(_text(pdf))
    assert "DOE, Jane" in text
    assert "PDF-4711" in text
    assert "ACC-PDF-1" in text
    assert "1961-02-03" in text
    assert str(chest.StudyInstanceUID) in text
    assert "AI RESULT - NOT VERIFIED BY A RADIOLOGIST - NOT FOR DIAGNOSIS" in text
    assert "cxr-default 1.0.0" in text
    assert card.intended_use in text
    # Each decision as the prediction made it, with its operating point.
    assert "Pneumothorax positive 0.93 balanced @ 0.50 0.03 - CRITICAL" in text
    assert "Cardiomegaly positive 0.62" in text
    assert "Lung Opacity negative 0.35 balanced @ 0.40" in text
    # Only the critical label is flagged.
    assert text.count("CRITICAL") == 1


def test_indeterminate_and_trust_score_are_shown(chest: Dataset) -> None:
    base = make_prediction(with_heatmaps=False)
    findings = [
        f.with_values(decision="indeterminate", trust_score=0.71)
        if f.label == "Pleural Effusion"
        else f
        for f in base.findings
    ]
    prediction = Prediction(path="", ok=True, model=base.model, findings=findings)
    text = _flat(_text(render_report_pdf([prediction], chest)))
    assert "Pleural Effusion indeterminate 0.55 balanced @ 0.45 0.09 0.71" in text
    assert "Too close to call, for a radiologist to judge: pleural effusion" in text


def test_not_for_diagnosis_follows_the_model_card(chest: Dataset) -> None:
    clinical = ModelCardSummary.of(
        "cxr-cleared", "2.0", "Triage of adult chest radiographs for a radiologist's review."
    )
    assert not clinical.not_for_diagnosis
    text = _flat(_text(render_report_pdf([make_prediction(False)], chest, ReportContext(clinical))))
    assert "AI RESULT - NOT VERIFIED BY A RADIOLOGIST" in text
    assert "NOT FOR DIAGNOSIS" not in text
    assert "Triage of adult chest radiographs" in text


def test_overlay_thumbnails_are_embedded(chest: Dataset, card: ModelCardSummary) -> None:
    prediction = make_prediction()
    labels = overlay_labels(prediction)
    overlays = build_overlays(prediction, chest, labels)
    thumbnails = overlay_thumbnails(prediction, overlays, labels, "PA")
    assert [t.finding.label for t in thumbnails] == ["Pneumothorax", "Cardiomegaly"]
    pdf = render_report_pdf([prediction], chest, ReportContext(card, thumbnails=thumbnails))
    reader = pypdf.PdfReader(BytesIO(pdf))
    images = [image for page in reader.pages for image in page.images]
    assert len(images) == 2
    text = _flat(_text(pdf))
    assert "Pneumothorax (PA): p=0.93, positive" in text


def test_not_analysed_study_says_why(chest: Dataset, card: ModelCardSummary) -> None:
    refused = Prediction(
        path="",
        ok=False,
        model=ModelRef("cxr-default", "1.0.0", "3f" * 32),
        error="refused by the input gate",
        gate=GateVerdict(status="refuse", reasons=("body part ABDOMEN is not CHEST",)),
    )
    text = _flat(_text(render_report_pdf([refused], chest, ReportContext(card))))
    assert "did not analyse this study" in text
    assert "Not analysed: body part ABDOMEN is not CHEST." in text
    assert "Findings" not in text
    assert "PDF-4711" in text


def test_encapsulated_pdf_is_a_valid_unverified_doc_instance_in_the_study(
    chest: Dataset, card: ModelCardSummary, tmp_path: Path
) -> None:
    prediction = make_prediction()
    dataset = build_pdf_report([(prediction, chest)], ReportContext(card))
    path = tmp_path / "report.dcm"
    dataset.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []

    back = pydicom.dcmread(path)
    assert back.SOPClassUID == ENCAPSULATED_PDF_STORAGE
    assert back.Modality == "DOC"
    assert back.VerificationFlag == "UNVERIFIED"
    assert back.MIMETypeOfEncapsulatedDocument == "application/pdf"
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "StudyInstanceUID"):
        assert back[keyword].value == chest[keyword].value
    assert back.AccessionNumber == "ACC-PDF-1"
    assert back.SeriesInstanceUID != chest.SeriesInstanceUID
    [reference] = back.SourceInstanceSequence
    assert reference.ReferencedSOPInstanceUID == chest.SOPInstanceUID
    pdf = encapsulated_pdf_bytes(back)
    assert pdf.startswith(b"%PDF-") and pdf.rstrip().endswith(b"%%EOF")
    assert len(pdf) == back.EncapsulatedDocumentLength
    assert len(pypdf.PdfReader(BytesIO(pdf)).pages) >= 1
    assert "PDF-4711" in _text(pdf)


def test_animal_patient_gets_its_type_2c_attributes(tmp_path: Path, dx_chest: Dataset) -> None:
    # The real DX is a veterinary study: species present, so Patient Sex Neutered
    # and the breed attributes are required.
    dataset = build_pdf_report([(make_prediction(False), dx_chest)])
    path = tmp_path / "animal.dcm"
    dataset.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []


def test_refuses_what_is_not_a_pdf_or_spans_studies(chest: Dataset) -> None:
    model = ModelRef("cxr-default", "1.0.0")
    with pytest.raises(ServiceError, match="%PDF"):
        encapsulate_pdf(b"<html>", [chest], model=model)
    other = Dataset()
    other.SOPClassUID = chest.SOPClassUID
    other.SOPInstanceUID = generate_uid()
    other.StudyInstanceUID = generate_uid()
    with pytest.raises(ServiceError, match="one study"):
        encapsulate_pdf(b"%PDF-1.7\n%%EOF", [chest, other], model=model)


def test_artifact_builder_adds_the_report_with_thumbnails_and_refused_images(
    chest: Dataset, card: ModelCardSummary
) -> None:
    from overread.service.runtime import OutputsArtifactBuilder

    refused = Prediction(
        path="",
        ok=False,
        model=ModelRef("cxr-default", "1.0.0", "3f" * 32),
        error="refused by the input gate",
        gate=GateVerdict(status="refuse", reasons=("body part ABDOMEN is not CHEST",)),
    )
    builder = OutputsArtifactBuilder()
    built = builder.build_study(
        [(make_prediction(), chest), (refused, chest)], pdf_report=ReportContext(card)
    )
    modalities = [str(ds.Modality) for ds in built]
    assert modalities == ["SR", "OT", "OT", "DOC"]
    pdf = encapsulated_pdf_bytes(built[-1])
    reader = pypdf.PdfReader(BytesIO(pdf))
    assert sum(len(page.images) for page in reader.pages) == 2
    text = _flat(_text(pdf))
    assert "Not analysed: body part ABDOMEN is not CHEST." in text

    only_refused = builder.build_study([(refused, chest)], pdf_report=ReportContext(card))
    assert [str(ds.Modality) for ds in only_refused] == ["SR", "DOC"]
    assert "did not analyse this study" in _flat(_text(encapsulated_pdf_bytes(only_refused[1])))
    assert [str(ds.Modality) for ds in builder.build_study([(refused, chest)])] == ["SR"]
