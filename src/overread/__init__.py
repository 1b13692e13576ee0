"""overread: an open-source AI second reader for radiology.

Studies arrive over DICOM or files, are read by :mod:`overread.imaging`, run
through model packages by :mod:`overread.inference`, and results go back to
where radiologists work.
"""

from overread.errors import (
    ConfigError,
    InvalidDicomError,
    ModelPackageError,
    OverreadError,
    UnsupportedTransferSyntaxError,
)

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "InvalidDicomError",
    "ModelPackageError",
    "OverreadError",
    "UnsupportedTransferSyntaxError",
    "__version__",
]
