"""The imaging core: read medical images and prepare their pixels.

:func:`read` is the one entry point (DICOM Part 10 or raw, NIfTI, PNG/JPEG);
it returns an :class:`Image` with float32 pixels (Modality LUT applied),
typed :class:`ImageMetadata`, provenance and warnings. Everything after that
is a transform from :mod:`overread.imaging.transforms`, composed into chains
that training and serving share. Series assembly lives in
:mod:`overread.imaging.series`, de-identification in :mod:`overread.imaging.deid`.
"""

from __future__ import annotations

from overread.imaging.dicom import codec_availability
from overread.imaging.image import Image, ImageMetadata
from overread.imaging.reader import read

__all__ = ["Image", "ImageMetadata", "codec_availability", "read"]
