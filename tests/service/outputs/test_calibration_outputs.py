"""Which calibration the service applied (a site's or the package's global one) is said
in every output a reader sees: the SR (a text item, valid TID 1500 read back with
highdicom and checked by dciodvfy), the PDF report and the FHIR DiagnosticReport."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import highdicom as hd
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from pydicom.dataset import Dataset

from overread.results import ResultSummary, StudyHeader, calibration_statement
from overread.service.outputs import ReportContext, build_study_sr, render_report_pdf
from overread.service.outputs import codes as oc
from overread.service.outputs.fhir import CALIBRATION_EXTENSION, fhir_report_for_result
from overread.service.runtime import OutputsArtifactBuilder

from .conftest import dciodvfy_errors, make_prediction

SITE = {
    "site": "Northgate",
    "source": "station",
    "calibration": "site",
    "package_site": "Northgate",
    "method": "temperature",
    "fallback": {"Fracture": "12 labelled studies, fewer than the 30 required"},
}
GLOBAL = {
    "site": "LKC-DX04",
    "source": "station",
    "calibration": "global",
    "reason": "site 'LKC-DX04' is not calibrated in cxr-default 1.1.0+sites "
    "(calibrated: Northgate, Riverside)",
}


def test_the_statement_names_the_site_the_method_and_any_fallback() -> None:
    text = calibration_statement(SITE)
    assert text.startswith("Site calibration applied: site 'Northgate' (from the station name)")
    assert "temperature scaling" in text and "operating-point thresholds" in text
    assert "Global calibration kept for Fracture: 12 labelled studies" in text
    text = calibration_statement(GLOBAL)
    assert text.startswith("Global calibration applied to site 'LKC-DX04' (from the station name)")
    assert "is not calibrated in cxr-default 1.1.0+sites" in text
    empty = {"site": "", "source": "calling_ae", "calibration": "global", "reason": "no site found"}
    assert calibration_statement(empty) == "Global calibration applied: no site found."
    assert calibration_statement(None) == ""


def _calibration_items(sr: Dataset) -> list[Any]:
    found = []

    def walk(items: Any) -> None:
        for item in items:
            name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
            if name is not None and name.CodeValue == oc.CALIBRATION_APPLIED.value:
                found.append(item)
            walk(item.get("ContentSequence", []))

    walk(sr.get("ContentSequence", []))
    return found


@pytest.mark.parametrize("calibration", [SITE, GLOBAL])
def test_the_sr_states_the_calibration_in_a_valid_document(
    calibration: dict[str, Any], dx_chest_header: Dataset, tmp_path: Path
) -> None:
    sr = build_study_sr([(make_prediction(False), dx_chest_header)], calibration=calibration)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    reread = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(path))
    [item] = _calibration_items(reread)
    assert item.ValueType == "TEXT" and item.RelationshipType == "CONTAINS"
    assert item.TextValue == calibration_statement(calibration)
    scheme = item.ConceptNameCodeSequence[0].CodingSchemeDesignator
    assert scheme in {s.CodingSchemeDesignator for s in reread.CodingSchemeIdentificationSequence}
    # Without a recorded calibration nothing is said.
    assert _calibration_items(build_study_sr([(make_prediction(False), dx_chest_header)])) == []


def _pdf_text(pdf: bytes) -> str:
    pypdf = pytest.importorskip("pypdf")
    reader = pypdf.PdfReader(BytesIO(pdf))
    return " ".join(" ".join(page.extract_text() or "" for page in reader.pages).split())


def test_the_pdf_states_the_calibration_under_the_findings(dx_chest_header: Dataset) -> None:
    prediction = make_prediction(False)
    text = _pdf_text(
        render_report_pdf([prediction], dx_chest_header, ReportContext(calibration=SITE))
    )
    assert "Site calibration applied: site 'Northgate'" in text
    assert text.index("Calibration") > text.index("Pneumothorax")
    plain = _pdf_text(render_report_pdf([prediction], dx_chest_header, ReportContext()))
    assert "calibration applied" not in plain


def test_the_artifact_builder_carries_the_calibration_into_sr_and_pdf(
    dx_chest_header: Dataset,
) -> None:
    pytest.importorskip("pypdf")
    built = OutputsArtifactBuilder().build_study(
        [(make_prediction(False), dx_chest_header)],
        pdf_report=ReportContext(),
        calibration=GLOBAL,
    )
    sr = next(d for d in built if d.Modality == "SR")
    [item] = _calibration_items(sr)
    assert "Global calibration applied to site 'LKC-DX04'" in item.TextValue
    pdf = next(d for d in built if d.Modality == "DOC")
    assert "Global calibration applied to site 'LKC-DX04'" in _pdf_text(
        bytes(pdf.EncapsulatedDocument).rstrip(b"\0")
    )


def _result(calibration: dict[str, Any] | None) -> Any:
    summary = ResultSummary(
        alias="cxr-default",
        instances=(make_prediction(False),),
        sop_instance_uids=("1.2.3",),
        study=StudyHeader(study_instance_uid="1.2.826.0.1.3680043.8.498.1", patient_id="PAT-7"),
        calibration=calibration,
    )
    return SimpleNamespace(
        id=7,
        study_instance_uid="1.2.826.0.1.3680043.8.498.1",
        model_name="cxr-default",
        model_version="1.1.0",
        summary=summary.to_dict(),
        artifacts=[],
    )


def _report(bundle: dict[str, Any]) -> dict[str, Any]:
    return next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "DiagnosticReport"
    )


def test_the_fhir_report_carries_the_calibration_as_an_extension() -> None:
    bundle = fhir_report_for_result(_result(SITE))
    Bundle.model_validate(json.loads(json.dumps(bundle)))  # still valid R4B
    [extension] = [e for e in _report(bundle)["extension"] if e["url"] == CALIBRATION_EXTENSION]
    parts = {p["url"]: p.get("valueString", p.get("valueCode")) for p in extension["extension"]}
    assert parts["calibration"] == "site"
    assert parts["site"] == "Northgate" and parts["siteSource"] == "station"
    assert parts["method"] == "temperature"
    assert parts["statement"] == calibration_statement(SITE)
    assert any(
        p["url"] == "fallback" and p["valueString"].startswith("Fracture: ")
        for p in extension["extension"]
    )
    fallback = fhir_report_for_result(_result(GLOBAL))
    [extension] = _report(fallback)["extension"]
    parts = {p["url"]: p.get("valueString", p.get("valueCode")) for p in extension["extension"]}
    assert parts["calibration"] == "global" and "not calibrated" in parts["reason"]
    assert "extension" not in _report(fhir_report_for_result(_result(None)))
