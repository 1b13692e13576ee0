"""The findings vocabulary shared by phantoms, datasets, models and reports.

The 14 labels and their order are CheXpert's (Irvin et al., AAAI 2019), which
MIMIC-CXR-JPG also uses; keeping that order everywhere means a label vector means
the same thing in a CSV, a model output and a report. Each label's code
(:data:`FINDING_CODES`) is here too, so that model packages, structured reports
and FHIR resources code a finding the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Finding(StrEnum):
    """A chest X-ray finding, named exactly as in CheXpert's label columns."""

    NO_FINDING = "No Finding"
    ENLARGED_CARDIOMEDIASTINUM = "Enlarged Cardiomediastinum"
    CARDIOMEGALY = "Cardiomegaly"
    LUNG_OPACITY = "Lung Opacity"
    LUNG_LESION = "Lung Lesion"
    EDEMA = "Edema"
    CONSOLIDATION = "Consolidation"
    PNEUMONIA = "Pneumonia"
    ATELECTASIS = "Atelectasis"
    PNEUMOTHORAX = "Pneumothorax"
    PLEURAL_EFFUSION = "Pleural Effusion"
    PLEURAL_OTHER = "Pleural Other"
    FRACTURE = "Fracture"
    SUPPORT_DEVICES = "Support Devices"


#: The 14 CheXpert labels in CheXpert's column order.
CHEXPERT_LABELS: tuple[str, ...] = tuple(f.value for f in Finding)

#: Findings that warrant an immediate call by default (configurable in the service).
DEFAULT_CRITICAL: frozenset[str] = frozenset({Finding.PNEUMOTHORAX.value})

#: Private coding scheme designator for concepts without a standard code
#: (PS3.3 8.2: designators beginning with "99" are private).
LOCAL_SCHEME = "99OVERREAD"


@dataclass(frozen=True)
class FindingCode:
    """A finding's coded concept: coding scheme designator, code value and meaning."""

    scheme: str
    value: str
    meaning: str

    @property
    def is_standard(self) -> bool:
        """Whether the code comes from a standard terminology (not :data:`LOCAL_SCHEME`)."""
        return self.scheme != LOCAL_SCHEME


#: The code of every CheXpert finding. A standard code wherever one with the same
#: meaning exists, each checked against a published source (``docs/outputs.md``): the
#: DICOM (``DCM``) and SNOMED CT (``SCT``) codes that DICOM PS3.16 lists (Opacity,
#: pulmonary edema, pneumothorax, pleural effusion) as in :data:`pydicom.sr.codedict.codes`;
#: the other SNOMED CT disorder codes against the Medizininformatik-Initiative FHIR
#: ConceptMap (pneumonia), several independent code tables that agree (cardiomegaly,
#: atelectasis, fracture) and public terminology maps (consolidation). Findings with
#: no standard code use :data:`LOCAL_SCHEME` rather than a guessed code.
FINDING_CODES: dict[str, FindingCode] = {
    Finding.NO_FINDING.value: FindingCode(LOCAL_SCHEME, "NOFINDING", "No finding"),
    Finding.ENLARGED_CARDIOMEDIASTINUM.value: FindingCode(
        LOCAL_SCHEME, "ENLCARDIOMED", "Enlarged cardiomediastinum"
    ),
    Finding.CARDIOMEGALY.value: FindingCode("SCT", "8186001", "Cardiomegaly"),
    # DCM 112001 "Opacity" is PS3.16 CID 6102/6104's radiographic opacity finding.
    Finding.LUNG_OPACITY.value: FindingCode("DCM", "112001", "Opacity"),
    Finding.LUNG_LESION.value: FindingCode(LOCAL_SCHEME, "LUNGLESION", "Lung lesion"),
    Finding.EDEMA.value: FindingCode("SCT", "19242006", "Pulmonary edema"),
    Finding.CONSOLIDATION.value: FindingCode("SCT", "95436008", "Lung consolidation"),
    Finding.PNEUMONIA.value: FindingCode("SCT", "233604007", "Pneumonia"),
    Finding.ATELECTASIS.value: FindingCode("SCT", "46621007", "Atelectasis"),
    Finding.PNEUMOTHORAX.value: FindingCode("SCT", "36118008", "Pneumothorax"),
    Finding.PLEURAL_EFFUSION.value: FindingCode("SCT", "60046008", "Pleural effusion"),
    Finding.PLEURAL_OTHER.value: FindingCode(LOCAL_SCHEME, "PLEURALOTHER", "Pleural other"),
    Finding.FRACTURE.value: FindingCode("SCT", "125605004", "Fracture of bone"),
    Finding.SUPPORT_DEVICES.value: FindingCode(LOCAL_SCHEME, "SUPPORTDEVICES", "Support devices"),
}

__all__ = [
    "CHEXPERT_LABELS",
    "DEFAULT_CRITICAL",
    "FINDING_CODES",
    "LOCAL_SCHEME",
    "Finding",
    "FindingCode",
]
