"""The error hierarchy.

Every error that overread raises on purpose derives from :class:`OverreadError`.
The CLI turns these into a single line on stderr and a non-zero exit status; a
traceback is only shown with ``--debug``. Messages name the file, UID or setting
at fault and, where possible, what to do about it.

Each subclass also derives from the nearest built-in exception (as pydicom does),
so ``except ValueError`` keeps working for callers who do not know our types.
"""

from __future__ import annotations


class OverreadError(Exception):
    """Base class for all errors raised deliberately by overread."""


class ConfigError(OverreadError, ValueError):
    """A setting, a configuration file or a routing rule is invalid."""


class InvalidDicomError(OverreadError, ValueError):
    """A file is not DICOM, or is DICOM that cannot be used as it is."""


class InvalidUidError(InvalidDicomError):
    """A received instance carries a malformed UID the gateway would key on.

    ``keyword`` names the attribute and ``reason`` says what is wrong with it without
    repeating the value; ``sop_class_uid`` and ``sop_instance_uid`` are the instance's
    own UIDs where those are well formed (``""`` otherwise), for a failure report.
    """

    def __init__(
        self,
        message: str,
        *,
        keyword: str,
        reason: str,
        sop_class_uid: str = "",
        sop_instance_uid: str = "",
    ) -> None:
        super().__init__(message)
        self.keyword = keyword
        self.reason = reason
        self.sop_class_uid = sop_class_uid
        self.sop_instance_uid = sop_instance_uid

    @property
    def comment(self) -> str:
        """A short reason for a DICOM Error Comment: ``invalid KEYWORD (REASON)``."""
        return f"invalid {self.keyword} ({self.reason})"


class UnsupportedTransferSyntaxError(InvalidDicomError):
    """Pixel data is encoded in a transfer syntax no installed decoder handles."""


class ImageReadError(OverreadError, ValueError):
    """A non-DICOM image (PNG, JPEG, NIfTI) could not be read."""


class SeriesError(OverreadError, ValueError):
    """Instances cannot be assembled into a consistent volume."""


class DatasetError(OverreadError, ValueError):
    """A dataset's label file or folder layout is invalid."""


class ModelPackageError(OverreadError, ValueError):
    """A model package is missing, malformed, or fails verification."""


class InferenceError(OverreadError, RuntimeError):
    """A model could not be run on an input."""


class EvaluationError(OverreadError, ValueError):
    """Metrics cannot be computed from the given predictions and labels."""


class ServiceError(OverreadError, RuntimeError):
    """The DICOM/HTTP service or one of its peers failed."""


class AuditError(OverreadError, RuntimeError):
    """The audit trail is broken or cannot be written."""


class DatabaseSchemaError(OverreadError, RuntimeError):
    """The database's schema version is not the one this overread runs on."""


__all__ = [
    "AuditError",
    "ConfigError",
    "DatabaseSchemaError",
    "DatasetError",
    "EvaluationError",
    "ImageReadError",
    "InferenceError",
    "InvalidDicomError",
    "InvalidUidError",
    "ModelPackageError",
    "OverreadError",
    "SeriesError",
    "ServiceError",
    "UnsupportedTransferSyntaxError",
]
