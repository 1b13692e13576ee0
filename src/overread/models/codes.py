"""Standard codes for the findings a model reports.

Only codes checked against a published terminology table are listed; a finding
without a verified code carries none rather than a guessed one. SNOMED CT codes
below were checked against the Medizininformatik-Initiative FHIR ConceptMap
(pleural effusion, pneumonia, pneumothorax, pulmonary edema) and against several
independent code tables that agree (cardiomegaly, atelectasis, fracture).
"""

from __future__ import annotations

from overread.findings import Finding

SNOMED_CT = "SCT"

#: Finding -> (coding scheme designator, code value, code meaning).
FINDING_CODES: dict[str, tuple[str, str, str]] = {
    Finding.CARDIOMEGALY.value: (SNOMED_CT, "8186001", "Cardiomegaly"),
    Finding.EDEMA.value: (SNOMED_CT, "19242006", "Pulmonary edema"),
    Finding.PNEUMONIA.value: (SNOMED_CT, "233604007", "Pneumonia"),
    Finding.ATELECTASIS.value: (SNOMED_CT, "46621007", "Atelectasis"),
    Finding.PNEUMOTHORAX.value: (SNOMED_CT, "36118008", "Pneumothorax"),
    Finding.PLEURAL_EFFUSION.value: (SNOMED_CT, "60046008", "Pleural effusion"),
    Finding.FRACTURE.value: (SNOMED_CT, "125605004", "Fracture of bone"),
}

__all__ = ["FINDING_CODES", "SNOMED_CT"]
