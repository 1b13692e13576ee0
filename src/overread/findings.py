"""The findings vocabulary shared by phantoms, datasets, models and reports.

The 14 labels and their order are CheXpert's (Irvin et al., AAAI 2019), which
MIMIC-CXR-JPG also uses; keeping that order everywhere means a label vector means
the same thing in a CSV, a model output and a report.
"""

from __future__ import annotations

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

__all__ = ["CHEXPERT_LABELS", "DEFAULT_CRITICAL", "Finding"]
