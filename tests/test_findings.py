"""The findings vocabulary and its one table of codes."""

from __future__ import annotations

from pydicom.sr.codedict import codes

from overread.findings import CHEXPERT_LABELS, FINDING_CODES, LOCAL_SCHEME, Finding


def test_every_chexpert_finding_has_a_code() -> None:
    assert set(FINDING_CODES) == set(CHEXPERT_LABELS)
    for label in CHEXPERT_LABELS:
        code = FINDING_CODES[label]
        assert code.scheme and code.value and code.meaning
        assert code.is_standard == (code.scheme != LOCAL_SCHEME)
    assert len({(c.scheme, c.value) for c in FINDING_CODES.values()}) == len(CHEXPERT_LABELS)


def test_consolidation_is_snomed_lung_consolidation() -> None:
    code = FINDING_CODES[Finding.CONSOLIDATION]
    assert (code.scheme, code.value, code.meaning) == ("SCT", "95436008", "Lung consolidation")


def test_codes_that_dicom_lists_are_the_standards_own() -> None:
    for label, standard in (
        (Finding.LUNG_OPACITY, codes.DCM.Opacity),
        (Finding.EDEMA, codes.SCT.PulmonaryEdema),
        (Finding.PNEUMOTHORAX, codes.SCT.Pneumothorax),
        (Finding.PLEURAL_EFFUSION, codes.SCT.PleuralEffusion),
    ):
        code = FINDING_CODES[label]
        assert (code.scheme, code.value, code.meaning) == (
            standard.scheme_designator,
            standard.value,
            standard.meaning,
        )
