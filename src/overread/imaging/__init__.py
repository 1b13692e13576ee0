"""The imaging core: read medical images and prepare their pixels.

:func:`read` is the one entry point (DICOM Part 10 or raw, NIfTI, PNG/JPEG);
it returns an :class:`Image` with float32 pixels (Modality LUT applied),
typed :class:`ImageMetadata`, provenance and warnings. Code that needs only tags
reads the same :class:`ImageMetadata` without the pixels: :func:`read_metadata`
for a file, :func:`read_instance` for a received instance (checked as ingest
needs); :func:`read_dataset` gives the pydicom data set itself to code that copies
or sends it whole. Everything after reading is a transform from
:mod:`overread.imaging.transforms`, composed into chains that training and
serving share. Series assembly lives in
:mod:`overread.imaging.series`, de-identification in :mod:`overread.imaging.deid`,
the per-file report behind ``overread inspect`` in :mod:`overread.imaging.inspection`.
"""

from __future__ import annotations

from overread.imaging.codecs import codec_availability
from overread.imaging.deid import Deidentifier, deidentify_file
from overread.imaging.header import (
    metadata_from_dataset,
    read_dataset,
    read_instance,
    read_metadata,
)
from overread.imaging.image import Image, ImageMetadata
from overread.imaging.inspection import Inspection, inspect
from overread.imaging.reader import read
from overread.imaging.series import SeriesLoad, Volume, assemble_volume, load_series
from overread.imaging.uids import is_valid_uid, uid_problem

__all__ = [
    "Deidentifier",
    "Image",
    "ImageMetadata",
    "Inspection",
    "SeriesLoad",
    "Volume",
    "assemble_volume",
    "codec_availability",
    "deidentify_file",
    "inspect",
    "is_valid_uid",
    "load_series",
    "metadata_from_dataset",
    "read",
    "read_dataset",
    "read_instance",
    "read_metadata",
    "uid_problem",
]
