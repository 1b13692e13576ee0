"""Coded concepts used in the results, each traceable to its source.

A structured report is only useful to a PACS or a registry if its codes mean what
they say, so every standard code here was checked against a published source (see
``docs/outputs.md`` for the list and where each was verified):

* DICOM (``DCM``) and SNOMED CT (``SCT``) codes that DICOM PS3.16 uses are taken from
  :data:`pydicom.sr.codedict.codes`, which is generated from the standard;
* SNOMED CT disorder codes for the CheXpert findings that PS3.16 does not list were
  checked against several public terminology mappings;
* LOINC codes for the DiagnosticReport follow the IHE Radiology *Imaging Diagnostic
  Report* implementation guide's chest X-ray examples.

Concepts with no standard code (for example CheXpert's "Enlarged Cardiomediastinum",
"Pleural Other", "Support Devices", "No Finding", and our operating-point threshold)
use the private coding scheme :data:`LOCAL_SCHEME` (``99OVERREAD``) rather than a
guessed code; the SR declares that scheme in its Coding Scheme Identification
Sequence.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from overread.findings import FINDING_CODES, LOCAL_SCHEME

#: FHIR ``system`` for the same local concepts.
LOCAL_FHIR_SYSTEM = "urn:overread:codes"

#: FHIR code system URIs for the coding schemes used here.
FHIR_SYSTEMS: dict[str, str] = {
    "SCT": "http://snomed.info/sct",
    "DCM": "http://dicom.nema.org/resources/ontology/DCM",
    "LN": "http://loinc.org",
    "UCUM": "http://unitsofmeasure.org",
    LOCAL_SCHEME: LOCAL_FHIR_SYSTEM,
}


@dataclass(frozen=True)
class Concept:
    """A coded concept: value, coding scheme designator and meaning."""

    value: str
    scheme: str
    meaning: str

    def to_dicom(self) -> hd.sr.CodedConcept:
        """Return the concept as a highdicom :class:`~highdicom.sr.CodedConcept`."""
        return hd.sr.CodedConcept(
            value=self.value, scheme_designator=self.scheme, meaning=self.meaning
        )

    def to_fhir(self) -> dict[str, Any]:
        """Return the concept as a FHIR ``Coding``."""
        return {"system": FHIR_SYSTEMS[self.scheme], "code": self.value, "display": self.meaning}

    @property
    def is_local(self) -> bool:
        """Whether the concept uses the private ``99OVERREAD`` scheme."""
        return self.scheme == LOCAL_SCHEME


def _from_pydicom(code: Any) -> Concept:
    return Concept(
        value=str(code.value), scheme=str(code.scheme_designator), meaning=str(code.meaning)
    )


# ---- Findings ---------------------------------------------------------------------------

#: The concept for each CheXpert finding, from the one table of finding codes
#: (:data:`overread.findings.FINDING_CODES`): standard codes where one exists with the
#: same meaning; the local scheme otherwise.
FINDING_CONCEPTS: dict[str, Concept] = {
    label: Concept(value=code.value, scheme=code.scheme, meaning=code.meaning)
    for label, code in FINDING_CODES.items()
}

_NOT_CODE_CHARS = re.compile(r"[^A-Z0-9]+")


def finding_concept(label: str, model_codes: Sequence[Sequence[str]] = ()) -> Concept:
    """Return the coded concept of a finding label.

    CheXpert labels use the verified table :data:`FINDING_CONCEPTS`. Other labels
    (models with other heads) use the first ``(scheme, value, meaning)`` code their
    model package declares, else a local code derived from the label (at most 16
    characters, VR SH; a digest of the label is added when it had to be shortened or
    changed, so distinct labels never share a code), so every finding stays codable
    without inventing a standard code.
    """
    known = FINDING_CONCEPTS.get(label)
    if known is not None:
        return known
    for code in model_codes:
        if len(code) == 3 and all(code) and str(code[0]) in FHIR_SYSTEMS:
            return Concept(value=str(code[1]), scheme=str(code[0]), meaning=str(code[2]))
    value = _NOT_CODE_CHARS.sub("", label.upper()) or "FINDING"
    if len(value) > 16 or value != label.upper().replace(" ", ""):
        # Shortened or altered: add a digest of the label so that two labels
        # never share a code ("PLEURALTHICK" + left/right would otherwise collide).
        digest = hashlib.sha1(label.encode("utf-8")).hexdigest()[:5].upper()
        value = f"{value[:10]}_{digest}"
    return Concept(value, LOCAL_SCHEME, label)


# ---- Report structure ---------------------------------------------------------------------

#: Procedure reported (TID 1500 row 4): SNOMED CT "Plain X-ray of chest".
PROCEDURE_CHEST_XRAY = Concept("399208008", "SCT", "Plain chest X-ray")
#: Body site of every finding: SCT "Chest" (as in PS3.16 CID 4031).
BODY_SITE_CHEST = _from_pydicom(codes.SCT.Chest)
#: DCM 122157 "Probability": the numeric measurement of each finding.
PROBABILITY = _from_pydicom(codes.DCM.Probability)
#: UCUM "{ratio}": a probability in [0, 1] is a dimensionless ratio.
UNIT_RATIO = _from_pydicom(codes.UCUM.Ratio)
#: CID 240 "Present-Absent": the decision at the operating point.
PRESENT = _from_pydicom(codes.SCT.Present)
ABSENT = _from_pydicom(codes.SCT.Absent)
#: CID 240's third value, for findings the model refers to a human (too close to call).
UNDETERMINED = Concept("373068000", "SCT", "Undetermined")
#: TID 1500 "Qualitative Evaluations" container (UMLS C0034375).
QUALITATIVE_EVALUATIONS = Concept("C0034375", "UMLS", "Qualitative Evaluations")
#: DCM 121111 "Summary": the plain-language summary text item.
SUMMARY = _from_pydicom(codes.DCM.Summary)
#: DCM 121106 "Comment": a warning of the model's run (one text item each).
COMMENT = _from_pydicom(codes.DCM.Comment)
#: Local: the probability threshold of the operating point the decision used.
OPERATING_THRESHOLD = Concept("OPTHRESHOLD", LOCAL_SCHEME, "Operating point threshold")
#: Local: how close the probability lies to the threshold (1 at it, 0 far from it).
THRESHOLD_PROXIMITY = Concept("THRPROXIMITY", LOCAL_SCHEME, "Threshold proximity")
#: UCUM "bit": the unit of predictive entropy and mutual information.
UNIT_BIT = Concept("bit", "UCUM", "bit")
#: Local: the explanation trust score in [0, 1] (docs/outputs.md, "Explanation trust").
TRUST_SCORE = Concept("TRUSTSCORE", LOCAL_SCHEME, "Explanation trust score")
#: Local: how concentrated the heatmap is (the Gini coefficient of its values, [0, 1]).
MAP_CONCENTRATION = Concept("MAPCONCENTR", LOCAL_SCHEME, "Heatmap concentration")
#: Local: relative fall of the probability with the heatmap's top region removed.
DELETION_DROP = Concept("DELETIONDROP", LOCAL_SCHEME, "Deletion probability drop")
#: Local: predictive entropy of the probability, in bits.
PREDICTIVE_ENTROPY = Concept("PREDENTROPY", LOCAL_SCHEME, "Predictive entropy")
#: Local: the epistemic part of the entropy (mutual information), in bits.
MUTUAL_INFORMATION = Concept("MUTUALINFO", LOCAL_SCHEME, "Mutual information")
#: Local: the split-conformal prediction set of the finding, and its four values.
CONFORMAL_SET = Concept("CONFORMALSET", LOCAL_SCHEME, "Conformal prediction set")
CONFORMAL_SET_VALUES: dict[str, Concept] = {
    "positive": Concept("CONFSETPOS", LOCAL_SCHEME, "Present only"),
    "negative": Concept("CONFSETNEG", LOCAL_SCHEME, "Absent only"),
    "both": Concept("CONFSETBOTH", LOCAL_SCHEME, "Present or absent"),
    "empty": Concept("CONFSETEMPTY", LOCAL_SCHEME, "Empty set"),
}

#: What the input gate said of the study's images (a refusal, a flag, an override).
INPUT_GATE = Concept("INPUTGATE", LOCAL_SCHEME, "Input gate verdict")
#: A reader's verification of the AI result: who, when, what they changed, their note.
READER_REVIEW = Concept("READERREVIEW", LOCAL_SCHEME, "Reader review")
#: Which probability calibration decided the findings: a site's or the package's global one.
CALIBRATION_APPLIED = Concept("CALIBAPPLIED", LOCAL_SCHEME, "Probability calibration applied")
#: The input gate's verdict on a study the model did not read.
NOT_ANALYSED = Concept("NOTANALYSED", LOCAL_SCHEME, "Not analysed by the model")

#: Everything in :data:`LOCAL_SCHEME`, for the SR's Coding Scheme Identification.
LOCAL_SCHEME_NAME = "overread local concepts"
LOCAL_SCHEME_ORGANIZATION = "overread project"


def declare_local_scheme(dataset: Dataset) -> None:
    """Add :data:`LOCAL_SCHEME` to ``dataset``'s Coding Scheme Identification Sequence.

    PS3.3 C.12.1.1.5 asks instances that use a private coding scheme to identify it
    there; receivers then know the codes are local, not a typo of a standard scheme.
    """
    existing = list(getattr(dataset, "CodingSchemeIdentificationSequence", []))
    if any(getattr(e, "CodingSchemeDesignator", None) == LOCAL_SCHEME for e in existing):
        return
    item = Dataset()
    item.CodingSchemeDesignator = LOCAL_SCHEME
    item.CodingSchemeName = LOCAL_SCHEME_NAME
    item.CodingSchemeResponsibleOrganization = LOCAL_SCHEME_ORGANIZATION
    existing.append(item)
    dataset.CodingSchemeIdentificationSequence = existing


# ---- FHIR ---------------------------------------------------------------------------------

#: DiagnosticReport.code: LOINC "XR Chest Single view" (one frontal image reported).
LOINC_XR_CHEST_SINGLE_VIEW = Concept("36554-4", "LN", "XR Chest Single view")
#: LOINC "XR Chest 2 Views", used when two or more images were read.
LOINC_XR_CHEST_2_VIEWS = Concept("36643-5", "LN", "XR Chest 2 Views")
#: HL7 v2 table 0074 "Diagnostic Service Section ID": RAD = Radiology.
FHIR_CATEGORY_RAD = {
    "system": "http://terminology.hl7.org/CodeSystem/v2-0074",
    "code": "RAD",
    "display": "Radiology",
}
#: Observation category "imaging".
FHIR_OBSERVATION_IMAGING = {
    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
    "code": "imaging",
    "display": "Imaging",
}
#: v3 ObservationInterpretation: POS / NEG.
FHIR_INTERPRETATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
FHIR_POSITIVE = {"system": FHIR_INTERPRETATION_SYSTEM, "code": "POS", "display": "Positive"}
FHIR_NEGATIVE = {"system": FHIR_INTERPRETATION_SYSTEM, "code": "NEG", "display": "Negative"}
FHIR_INDETERMINATE = {
    "system": FHIR_INTERPRETATION_SYSTEM,
    "code": "IND",
    "display": "Indeterminate",
}

__all__ = [
    "ABSENT",
    "BODY_SITE_CHEST",
    "CALIBRATION_APPLIED",
    "COMMENT",
    "CONFORMAL_SET",
    "CONFORMAL_SET_VALUES",
    "DELETION_DROP",
    "FHIR_CATEGORY_RAD",
    "FHIR_INDETERMINATE",
    "FHIR_NEGATIVE",
    "FHIR_OBSERVATION_IMAGING",
    "FHIR_POSITIVE",
    "FHIR_SYSTEMS",
    "FINDING_CONCEPTS",
    "LOCAL_FHIR_SYSTEM",
    "LOCAL_SCHEME",
    "LOINC_XR_CHEST_2_VIEWS",
    "LOINC_XR_CHEST_SINGLE_VIEW",
    "MAP_CONCENTRATION",
    "MUTUAL_INFORMATION",
    "OPERATING_THRESHOLD",
    "PREDICTIVE_ENTROPY",
    "PRESENT",
    "PROBABILITY",
    "PROCEDURE_CHEST_XRAY",
    "QUALITATIVE_EVALUATIONS",
    "READER_REVIEW",
    "SUMMARY",
    "THRESHOLD_PROXIMITY",
    "TRUST_SCORE",
    "UNDETERMINED",
    "UNIT_BIT",
    "UNIT_RATIO",
    "Concept",
    "declare_local_scheme",
    "finding_concept",
]
