"""Datasets: label files in, patient-level splits and PyTorch datasets out.

Readers for CheXpert, NIH ChestX-ray14, MIMIC-CXR-JPG, SIIM-ACR, a generic
folder + CSV and overread's phantom cohorts all return a :class:`LabelTable`;
:class:`LabelPolicy` decides what uncertain and blank labels become;
:func:`patient_split` and :func:`patient_kfold` keep each patient in one split;
:class:`CxrDataset` feeds images through the imaging core's transform chain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from overread.data.policy import (
    BlankMode,
    LabelPolicy,
    UncertainMode,
    UncertainRule,
    apply_policy,
)
from overread.data.readers import (
    DATASETS,
    NIH_LABELS,
    NIH_TO_OVERREAD,
    read_chexpert,
    read_folder,
    read_labels,
    read_mimic,
    read_nih,
    read_nih_bboxes,
    read_phantom,
    read_siim,
    siim_mask,
)
from overread.data.rle import decode_rle, encode_rle
from overread.data.splits import (
    PatientLeakageError,
    check_leakage,
    patient_kfold,
    patient_split,
    patient_strata,
    site_split,
)
from overread.data.stats import label_stats
from overread.data.table import LabelTable, SkippedRow

if TYPE_CHECKING:
    from overread.data.cache import ImageCache
    from overread.data.dataset import CxrDataset, make_loader

# The PyTorch dataset is imported on first use, so that reading label files
# (``overread labels stats``) does not pay for importing torch.
_LAZY = {
    "CxrDataset": "overread.data.dataset",
    "make_loader": "overread.data.dataset",
    "ImageCache": "overread.data.cache",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DATASETS",
    "NIH_LABELS",
    "NIH_TO_OVERREAD",
    "BlankMode",
    "CxrDataset",
    "ImageCache",
    "LabelPolicy",
    "LabelTable",
    "PatientLeakageError",
    "SkippedRow",
    "UncertainMode",
    "UncertainRule",
    "apply_policy",
    "check_leakage",
    "decode_rle",
    "encode_rle",
    "label_stats",
    "make_loader",
    "patient_kfold",
    "patient_split",
    "patient_strata",
    "read_chexpert",
    "read_folder",
    "read_labels",
    "read_mimic",
    "read_nih",
    "read_nih_bboxes",
    "read_phantom",
    "read_siim",
    "siim_mask",
    "site_split",
]
