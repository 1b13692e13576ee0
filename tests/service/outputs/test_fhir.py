"""The FHIR bundle: valid against the R4B models, right codes, links that resolve."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle
from pydicom.dataset import Dataset

from overread.errors import ServiceError
from overread.results import Decision, Prediction
from overread.service.outputs import build_fhir_report


def _resources(bundle: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_bundle_validates_as_fhir_r4b(prediction: Prediction, dx_chest_header: Dataset) -> None:
    bundle = build_fhir_report(prediction, dx_chest_header, sr_sop_instance_uid="1.2.3.4")
    parsed = Bundle.model_validate(json.loads(json.dumps(bundle)))
    assert parsed.type == "transaction"
    kinds = [entry.resource.get_resource_type() for entry in parsed.entry]
    assert kinds.count("Observation") == 14
    assert kinds.count("DiagnosticReport") == 1
    assert kinds.count("Device") == 1


def test_diagnostic_report_fields(prediction: Prediction, dx_chest_header: Dataset) -> None:
    bundle = build_fhir_report(prediction, dx_chest_header, sr_sop_instance_uid="1.2.3.4")
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["status"] == "preliminary"
    assert report["category"][0]["coding"][0]["code"] == "RAD"
    assert report["code"]["coding"][0] == {
        "system": "http://loinc.org",
        "code": "36554-4",
        "display": "XR Chest Single view",
    }
    study = report["imagingStudy"][0]["identifier"]
    assert study == {
        "system": "urn:dicom:uid",
        "value": f"urn:oid:{dx_chest_header.StudyInstanceUID}",
    }
    assert report["subject"]["identifier"]["value"] == dx_chest_header.PatientID
    assert report["conclusion"].startswith(
        "AI second read (cxr-default 1.0.0): possible pneumothorax"
    )
    assert report["effectiveDateTime"] == "2020-02-09"
    assert report["identifier"][0]["value"] == "urn:oid:1.2.3.4"
    conclusion_codes = {c["coding"][0]["code"] for c in report["conclusionCode"]}
    assert conclusion_codes == {"36118008", "8186001", "60046008"}  # positives with SNOMED codes
    observation_urls = {
        e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Observation"
    }
    assert {r["reference"] for r in report["result"]} == observation_urls


def test_observations_carry_probability_decision_and_device(
    prediction: Prediction, dx_chest_header: Dataset
) -> None:
    bundle = build_fhir_report(prediction, dx_chest_header)
    (device_entry,) = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Device"]
    device = device_entry["resource"]
    assert device["deviceName"][0] == {"name": "cxr-default", "type": "model-name"}
    assert device["version"][0]["value"] == "1.0.0"
    assert device["identifier"][0]["value"] == "3f" * 32
    by_label = {o["code"]["text"]: o for o in _resources(bundle, "Observation")}
    for finding in prediction.findings:
        obs = by_label[finding.label]
        assert obs["valueQuantity"]["value"] == pytest.approx(finding.probability)
        assert obs["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert obs["interpretation"][0]["coding"][0]["code"] == (
            "POS" if finding.positive else "NEG"
        )
        assert obs["device"]["reference"] == device_entry["fullUrl"]
        assert obs["component"][0]["valueQuantity"]["value"] == pytest.approx(finding.threshold)
    assert by_label["Pneumothorax"]["code"]["coding"][0]["system"] == "http://snomed.info/sct"
    assert by_label["Pneumothorax"]["code"]["coding"][0]["code"] == "36118008"
    assert by_label["Support Devices"]["code"]["coding"][0]["system"] == "urn:overread:codes"


def test_two_views_use_the_two_view_code(prediction: Prediction, dx_chest_header: Dataset) -> None:
    bundle = build_fhir_report(prediction, dx_chest_header, additional_sources=[dx_chest_header])
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["code"]["coding"][0]["code"] == "36643-5"


def test_missing_identifiers_are_refused(prediction: Prediction, dx_chest_header: Dataset) -> None:
    anonymous = copy.deepcopy(dx_chest_header)
    del anonymous.PatientID
    with pytest.raises(ServiceError, match="Patient ID"):
        build_fhir_report(prediction, anonymous)
    no_study = copy.deepcopy(dx_chest_header)
    del no_study.StudyInstanceUID
    with pytest.raises(ServiceError, match="Study Instance UID"):
        build_fhir_report(prediction, no_study)


def test_referred_finding_is_indeterminate(
    prediction: Prediction, dx_chest_header: Dataset
) -> None:
    prediction.findings = [
        f.__class__(f.label, 0.51, True, 0.97, 0.5, Decision.INDETERMINATE)
        if f.label == "Pneumothorax"
        else f
        for f in prediction.findings
    ]
    bundle = build_fhir_report(prediction, dx_chest_header)
    Bundle.model_validate(bundle)
    by_label = {o["code"]["text"]: o for o in _resources(bundle, "Observation")}
    assert by_label["Pneumothorax"]["interpretation"][0]["coding"][0]["code"] == "IND"
    (report,) = _resources(bundle, "DiagnosticReport")
    assert "36118008" not in {c["coding"][0]["code"] for c in report["conclusionCode"]}


def test_patient_display_uses_the_alphabetic_name(
    prediction: Prediction, dx_chest_header: Dataset
) -> None:
    # A deep copy: setting an element on a Dataset.update() copy would change the
    # shared DataElement, i.e. the session fixture.
    multilingual = copy.deepcopy(dx_chest_header)
    multilingual.SpecificCharacterSet = "ISO_IR 192"
    multilingual.PatientName = "Müller^Jürgen=山田^太郎"
    bundle = build_fhir_report(prediction, multilingual)
    (report,) = _resources(bundle, "DiagnosticReport")
    assert report["subject"]["display"] == "Jürgen Müller"
    Bundle.model_validate(bundle)
