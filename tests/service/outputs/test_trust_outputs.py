"""Explanation trust and uncertainty in the SR (still a valid IOD) and the FHIR bundle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import pytest
from fhir.resources.R4B.bundle import Bundle
from pydicom.dataset import Dataset

from overread.results import Prediction
from overread.service.outputs import build_fhir_report, build_sr, finding_concept
from overread.service.outputs.codes import LOCAL_SCHEME

from .conftest import dciodvfy_errors, make_prediction

#: What the made-up prediction's positive findings carry.
EVIDENCE: dict[str, dict[str, Any]] = {
    "Pneumothorax": {
        "trust_score": 0.81,
        "map_concentration": 0.72,
        "deletion_drop": 0.91,
        "entropy": 0.37,
        "mutual_information": 0.05,
        "conformal_set": "positive",
    },
    # Trust only: the uncertainty estimates were not computed.
    "Cardiomegaly": {"trust_score": 0.12, "map_concentration": 0.4, "deletion_drop": 0.036},
    # Uncertainty only, an ambiguous conformal set.
    "Pleural Effusion": {"entropy": 0.99, "mutual_information": 0.2, "conformal_set": "both"},
}


@pytest.fixture
def evidenced() -> Prediction:
    prediction = make_prediction(with_heatmaps=False)
    prediction.findings = [
        f.with_values(**EVIDENCE[f.label]) if f.label in EVIDENCE else f
        for f in prediction.findings
    ]
    return prediction


def test_sr_carries_trust_and_uncertainty_and_stays_valid(
    tmp_path: Path, evidenced: Prediction, dx_chest_header: Dataset
) -> None:
    path = tmp_path / "sr.dcm"
    build_sr(evidenced, [dx_chest_header]).save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    sr = hd.sr.srread(path)
    groups = {g.finding_type.value: g for g in sr.content.get_image_measurement_groups()}
    names = {
        "trust_score": "Explanation trust score",
        "map_concentration": "Heatmap concentration",
        "deletion_drop": "Deletion probability drop",
        "entropy": "Predictive entropy",
        "mutual_information": "Mutual information",
    }
    for finding in evidenced.findings:
        group = groups[finding_concept(finding.label).value]
        values = {m.name.meaning: m for m in group.get_measurements()}
        for key, name in names.items():
            expected = EVIDENCE.get(finding.label, {}).get(key)
            if expected is None:
                assert name not in values, (finding.label, name)
                continue
            assert values[name].value == pytest.approx(expected)
            assert values[name].name.scheme_designator == LOCAL_SCHEME
            unit = "bit" if key in ("entropy", "mutual_information") else "{ratio}"
            assert values[name].unit.value == unit
        evaluations = {e.name.meaning: e.value for e in group.get_qualitative_evaluations()}
        conformal = EVIDENCE.get(finding.label, {}).get("conformal_set")
        if conformal is None:
            assert "Conformal prediction set" not in evaluations
        else:
            value = evaluations["Conformal prediction set"]
            assert value.value == {"positive": "CONFSETPOS", "both": "CONFSETBOTH"}[conformal]


def test_fhir_observations_carry_trust_and_uncertainty_components(
    evidenced: Prediction, dx_chest_header: Dataset
) -> None:
    bundle = build_fhir_report(evidenced, dx_chest_header)
    Bundle.model_validate(json.loads(json.dumps(bundle)))
    observations = {
        e["resource"]["code"]["text"]: e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Observation"
    }
    codes = {
        "trust_score": "TRUSTSCORE",
        "map_concentration": "MAPCONCENTR",
        "deletion_drop": "DELETIONDROP",
        "entropy": "PREDENTROPY",
        "mutual_information": "MUTUALINFO",
    }
    for label, observation in observations.items():
        components = {c["code"]["coding"][0]["code"]: c for c in observation["component"]}
        evidence = EVIDENCE.get(label, {})
        for key, code in codes.items():
            if key not in evidence:
                assert code not in components, (label, code)
                continue
            quantity = components[code]["valueQuantity"]
            assert quantity["value"] == pytest.approx(evidence[key])
            assert quantity["code"] == ("bit" if key in ("entropy", "mutual_information") else "1")
        if "conformal_set" in evidence:
            concept = components["CONFORMALSET"]["valueCodeableConcept"]
            assert concept["text"] == evidence["conformal_set"]
            assert concept["coding"][0]["system"] == "urn:overread:codes"
        else:
            assert "CONFORMALSET" not in components
