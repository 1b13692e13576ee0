"""The finding vocabulary's codes."""

from __future__ import annotations

import re

from overread.findings import CHEXPERT_LABELS, FINDING_CODES
from overread.service.outputs import finding_concept
from overread.service.outputs.codes import FHIR_SYSTEMS, LOCAL_SCHEME


def test_every_chexpert_label_has_a_concept() -> None:
    concepts = [finding_concept(label) for label in CHEXPERT_LABELS]
    assert len({(c.scheme, c.value) for c in concepts}) == len(CHEXPERT_LABELS)
    for concept in concepts:
        assert concept.scheme in FHIR_SYSTEMS
        assert 0 < len(concept.value) <= 16  # VR SH
        if concept.scheme == "SCT":
            assert concept.value.isdigit()  # SNOMED CT identifiers are numeric


def test_standard_codes_for_findings_that_have_one() -> None:
    assert (finding_concept("Pneumothorax").scheme, finding_concept("Pneumothorax").value) == (
        "SCT",
        "36118008",
    )
    assert finding_concept("Lung Opacity").value == "112001"
    assert finding_concept("Support Devices").scheme == LOCAL_SCHEME


def test_other_labels_get_distinct_valid_local_codes() -> None:
    left = finding_concept("Pleural thickening, left")
    right = finding_concept("Pleural thickening, right")
    assert left.value != right.value
    for concept in (left, right, finding_concept("Tube malposition"), finding_concept("???")):
        assert concept.scheme == LOCAL_SCHEME
        assert re.fullmatch(r"[A-Z0-9_]{1,16}", concept.value)
    assert finding_concept("Tube malposition").value == "TUBEMALPOSITION"
    assert finding_concept("Nodule", [("SCT", "27925004", "Nodule")]).value == "27925004"
    # A model code in an unknown scheme is not trusted.
    assert finding_concept("Nodule", [("XYZ", "1", "Nodule")]).scheme == LOCAL_SCHEME


def test_report_concepts_come_from_the_one_finding_code_table() -> None:
    for label in CHEXPERT_LABELS:
        concept, code = finding_concept(label), FINDING_CODES[label]
        assert (concept.scheme, concept.value, concept.meaning) == (
            code.scheme,
            code.value,
            code.meaning,
        )
    assert finding_concept("Consolidation").value == "95436008"
