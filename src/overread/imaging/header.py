"""Parsing DICOM headers: Part 10 or raw, defensively, into typed metadata.

pydicom parses lazily and forgives a lot; a reader that must never crash on a
hostile file wants the opposite: every element parsed up front (so a wrong VR
or length is reported by its tag), arbitrary bytes that pydicom's ``force``
mode would accept as "DICOM" rejected, large values (pixel data) left on disk
until the caller has checked the declared geometry, and pydicom's warnings and
log records captured rather than printed.

The same typed header serves code that needs tags but not pixels:
:func:`read_metadata` for a stored file, :func:`read_instance` for an instance as
received (checked as ingest needs it, header-only where the layout allows), and
:func:`read_dataset` for code that copies or sends the whole data set. Nothing
outside this package calls pydicom's ``dcmread``.
"""

from __future__ import annotations

import functools
import logging
import mmap
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, TypeVar, cast

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError
from pydicom.tag import BaseTag
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from overread.errors import InvalidDicomError, InvalidUidError
from overread.imaging.image import ImageMetadata
from overread.imaging.uids import uid_problem

T = TypeVar("T")

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
DEFER_BYTES = 4 * 1024 * 1024


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (decoders like multi-line messages)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def is_part10(path: Path) -> bool:
    """True if the file has the 128-byte preamble followed by ``DICM``."""
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


_quiet = threading.local()


class _QuietDuringRead(logging.Filter):
    """Drop pydicom's log records emitted by a thread that is inside a read."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(_quiet, "active", 0)


_QUIET_LOGGERS = ("pydicom", "pylibjpeg", "openjpeg", "libjpeg", "jpeg_ls", "rle")


def _install_log_filter() -> None:
    """Attach the filter to pydicom's and the decoders' loggers (children included:
    a filter on a parent logger does not see records of its children)."""
    names = [
        name
        for name in list(logging.Logger.manager.loggerDict)
        if name.split(".")[0] in _QUIET_LOGGERS
    ]
    for name in {"pydicom", *names}:
        target = logging.getLogger(name)
        if not any(isinstance(f, _QuietDuringRead) for f in target.filters):
            target.addFilter(_QuietDuringRead())


_CAPTURE_LOCK = threading.RLock()


@contextmanager
def collect_warnings(sink: list[str]) -> Iterator[None]:
    """Turn Python warnings raised by pydicom/decoders into image warnings.

    pydicom also *logs* each warning, and logs decoder failures with a
    traceback; while a read is in progress on this thread those records are
    held back (the warnings and our one-line error carry the content), so a
    command-line user sees one line per bad file.

    ``warnings.catch_warnings`` swaps process-wide state; two threads
    interleaving it can leave the filters or ``showwarning`` of the other
    behind for good. A lock makes the capture (and so DICOM reads) one at a
    time per process: correctness over parallel decoding, which the GIL
    mostly prevents anyway.
    """
    _install_log_filter()
    with _CAPTURE_LOCK:
        _quiet.active = getattr(_quiet, "active", 0) + 1
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:
            _quiet.active -= 1
    for w in caught:
        text = " ".join(str(w.message).split())
        if text not in sink:
            sink.append(text)


@functools.cache
def _tag(keyword: str) -> BaseTag | None:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    return None if tag is None else BaseTag(tag)


def _raw_value(ds: Dataset, keyword: str) -> Any:
    """An attribute's value, or None when absent.

    Looked up by tag with :meth:`~pydicom.dataset.Dataset.get_item`, not by keyword:
    pydicom's keyword lookup costs more than the read itself, and ingest reads a
    header per received instance.
    """
    tag = _tag(keyword)
    element = ds.get_item(tag) if tag is not None else None
    if element is None:
        return None
    if not isinstance(element, DataElement):  # not converted yet
        element = ds[tag]
    return element.value


def header_value(ds: Dataset, keyword: str, convert: Callable[[Any], T], default: T) -> T:
    """Read one attribute defensively: a malformed value gives ``default``."""
    try:
        value = _raw_value(ds, keyword)
        if value is None or value == "":
            return default
        return convert(value)
    except Exception:  # malformed values raise anything from ValueError to struct.error
        return default


def as_text(value: Any) -> str:
    return str(value).strip()


NO_FLOATS: tuple[float, ...] = ()


def _floats(value: Any) -> tuple[float, ...]:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        value = [value]
    return tuple(float(v) for v in value)


def first_item(ds: Dataset, *path: str) -> Dataset | None:
    """Follow first items of nested sequences (functional groups), or None."""
    node: Any = ds
    for keyword in path:
        try:
            seq = _raw_value(node, keyword)
        except Exception:
            return None
        if not seq:
            return None
        try:
            node = seq[0]
        except (IndexError, TypeError):
            return None
    return node if isinstance(node, Dataset) else None


def functional_group(ds: Dataset, macro: str) -> Dataset | None:
    """A functional-group macro item: shared first, then the first frame's."""
    return first_item(ds, "SharedFunctionalGroupsSequence", macro) or first_item(
        ds, "PerFrameFunctionalGroupsSequence", macro
    )


def _has_functional_groups(ds: Dataset) -> bool:
    return _raw_value(ds, "SharedFunctionalGroupsSequence") is not None or (
        _raw_value(ds, "PerFrameFunctionalGroupsSequence") is not None
    )


def transfer_syntax_of(ds: Dataset) -> UID | None:
    """The dataset's transfer syntax, from File Meta or the encoding used to read it."""
    meta = getattr(ds, "file_meta", None)
    tsuid = meta.get("TransferSyntaxUID") if meta is not None else None
    if tsuid:
        return UID(str(tsuid))
    encoding = getattr(ds, "original_encoding", None)
    if not encoding or encoding[0] is None:
        return None
    implicit, little = encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _orientation(
    values: tuple[float, ...],
) -> tuple[float, float, float, float, float, float] | None:
    if len(values) < 6:
        return None
    r0, r1, r2, c0, c1, c2 = values[:6]
    return (r0, r1, r2, c0, c1, c2)


def metadata_from_dataset(ds: Dataset, path: Path | str | None = None) -> ImageMetadata:
    """Pull the typed fields of :class:`ImageMetadata` out of a header.

    Values that cannot be parsed are left as ``None`` rather than failing the
    read: a bad Patient Age must not stop a chest film from being reported.
    """
    plane = orient = measures = transform = voi = None
    if _has_functional_groups(ds):  # enhanced multi-frame objects only
        plane = functional_group(ds, "PlanePositionSequence")
        orient = functional_group(ds, "PlaneOrientationSequence")
        measures = functional_group(ds, "PixelMeasuresSequence")
        transform = functional_group(ds, "PixelValueTransformationSequence")
        voi = functional_group(ds, "FrameVOILUTSequence")
    position = header_value(ds, "ImagePositionPatient", _floats, NO_FLOATS)
    if not position and plane is not None:
        position = header_value(plane, "ImagePositionPatient", _floats, NO_FLOATS)
    orientation = header_value(ds, "ImageOrientationPatient", _floats, NO_FLOATS)
    if not orientation and orient is not None:
        orientation = header_value(orient, "ImageOrientationPatient", _floats, NO_FLOATS)
    spacing = header_value(ds, "PixelSpacing", _floats, NO_FLOATS)
    if not spacing and measures is not None:
        spacing = header_value(measures, "PixelSpacing", _floats, NO_FLOATS)
    if not spacing:
        spacing = header_value(ds, "ImagerPixelSpacing", _floats, NO_FLOATS)
    thickness = header_value(ds, "SliceThickness", float, None)
    if thickness is None and measures is not None:
        thickness = header_value(measures, "SliceThickness", float, None)
    rescale_src = ds if "RescaleSlope" in ds or transform is None else transform
    voi_src = ds if "WindowCenter" in ds or voi is None else voi
    tsuid = transfer_syntax_of(ds)
    return ImageMetadata(
        source_path=str(path) if path is not None else None,
        source_format="dicom",
        patient_id=header_value(ds, "PatientID", as_text, None),
        patient_name=header_value(ds, "PatientName", as_text, None),
        patient_birth_date=header_value(ds, "PatientBirthDate", as_text, None),
        patient_sex=header_value(ds, "PatientSex", as_text, None),
        patient_age=header_value(ds, "PatientAge", as_text, None),
        issuer_of_patient_id=header_value(ds, "IssuerOfPatientID", as_text, None),
        study_instance_uid=header_value(ds, "StudyInstanceUID", as_text, None),
        series_instance_uid=header_value(ds, "SeriesInstanceUID", as_text, None),
        sop_instance_uid=header_value(ds, "SOPInstanceUID", as_text, None),
        sop_class_uid=header_value(ds, "SOPClassUID", as_text, None),
        modality=header_value(ds, "Modality", as_text, None),
        body_part=header_value(ds, "BodyPartExamined", as_text, None),
        view_position=header_value(ds, "ViewPosition", as_text, None),
        laterality=header_value(ds, "ImageLaterality", as_text, None)
        or header_value(ds, "Laterality", as_text, None),
        study_date=header_value(ds, "StudyDate", as_text, None),
        accession_number=header_value(ds, "AccessionNumber", as_text, None),
        study_description=header_value(ds, "StudyDescription", as_text, None),
        series_description=header_value(ds, "SeriesDescription", as_text, None),
        derivation_description=header_value(ds, "DerivationDescription", as_text, None),
        institution_name=header_value(ds, "InstitutionName", as_text, None),
        institutional_department_name=header_value(
            ds, "InstitutionalDepartmentName", as_text, None
        ),
        requesting_service=header_value(ds, "RequestingService", as_text, None),
        manufacturer=header_value(ds, "Manufacturer", as_text, None),
        series_number=header_value(ds, "SeriesNumber", int, None),
        instance_number=header_value(ds, "InstanceNumber", int, None),
        photometric_interpretation=header_value(ds, "PhotometricInterpretation", as_text, None),
        stored_photometric_interpretation=header_value(
            ds, "PhotometricInterpretation", as_text, None
        ),
        samples_per_pixel=header_value(ds, "SamplesPerPixel", int, 1),
        bits_allocated=header_value(ds, "BitsAllocated", int, None),
        bits_stored=header_value(ds, "BitsStored", int, None),
        pixel_representation=header_value(ds, "PixelRepresentation", int, None),
        pixel_spacing=(spacing[0], spacing[1]) if len(spacing) >= 2 else None,
        slice_thickness=thickness,
        image_position=(position[0], position[1], position[2]) if len(position) >= 3 else None,
        image_orientation=_orientation(orientation),
        rows=header_value(ds, "Rows", int, 0),
        columns=header_value(ds, "Columns", int, 0),
        frames=max(header_value(ds, "NumberOfFrames", int, 1), 1),
        transfer_syntax=str(tsuid) if tsuid else None,
        rescale_slope=header_value(rescale_src, "RescaleSlope", float, None),
        rescale_intercept=header_value(rescale_src, "RescaleIntercept", float, None),
        rescale_type=header_value(rescale_src, "RescaleType", as_text, None),
        window_center=header_value(voi_src, "WindowCenter", _floats, NO_FLOATS),
        window_width=header_value(voi_src, "WindowWidth", _floats, NO_FLOATS),
        window_explanation=header_value(
            voi_src,
            "WindowCenterWidthExplanation",
            lambda v: tuple(as_text(x) for x in (v if isinstance(v, list | tuple) else [v])),
            (),
        ),
        voi_lut_function=header_value(voi_src, "VOILUTFunction", as_text, None),
        has_voi_lut_sequence="VOILUTSequence" in ds,
        presentation_lut_shape=header_value(ds, "PresentationLUTShape", as_text, None),
        burned_in_annotation=header_value(ds, "BurnedInAnnotation", as_text, None),
    )


def read_header(path: Path) -> Dataset:
    """Parse a DICOM file (Part 10 or raw) without touching pixel data.

    Raises
    ------
    InvalidDicomError
        If the file is not DICOM or its header cannot be parsed.
    """
    part10 = is_part10(path)
    try:
        # Large values (pixel data) stay on disk until asked for, so the budget
        # checks run before a multi-gigabyte file is pulled into memory.
        ds = pydicom.dcmread(path, force=not part10, defer_size=DEFER_BYTES)
    except PydicomInvalidDicomError as exc:
        raise InvalidDicomError(f"{path}: not a DICOM file ({one_line(exc)})") from None
    except MemoryError:
        raise InvalidDicomError(f"{path}: header declares a value too large to read") from None
    except Exception as exc:  # pydicom raises many types on corrupt headers
        raise InvalidDicomError(f"{path}: cannot parse DICOM header ({one_line(exc)})") from None
    if not part10:
        _check_raw_dataset(ds, path)
    _convert_elements(ds, path)
    return ds


def read_metadata(path: Path | str) -> ImageMetadata:
    """The typed header of a DICOM file, read without its pixel data.

    For code that only needs tags (the worklist, export, the web pages): parsing stops
    before Pixel Data, so the cost does not grow with the image.

    Raises
    ------
    InvalidDicomError
        If the file is not DICOM or its header cannot be parsed.
    OSError
        If the file cannot be opened.
    """
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except OSError:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt headers
        raise InvalidDicomError(f"{path}: cannot parse DICOM header ({one_line(exc)})") from None
    return metadata_from_dataset(ds, path)


def read_dataset(path: Path | str, *, pixels: bool = True) -> Dataset:
    """The pydicom data set of a stored file, for code that copies or renders it.

    Builders of derived objects (SR, SEG, overlays) copy attributes the typed
    header does not carry, and a C-STORE send passes the data set on whole; for
    tags alone use :func:`read_metadata`. ``pixels=False`` stops before Pixel Data.

    Raises
    ------
    InvalidDicomError
        If the file is not DICOM.
    OSError
        If the file cannot be opened.
    """
    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except PydicomInvalidDicomError as exc:
        raise InvalidDicomError(f"{path}: not a DICOM file ({one_line(exc)})") from None


_REQUIRED_UIDS = ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")


def read_instance(data: bytes | mmap.mmap, *, source: str = "payload") -> ImageMetadata:
    """Check a received DICOM Part 10 byte string and return its typed header.

    This is what ingest calls for every instance before storing it (C-STORE,
    STOW-RS), so it is header-only where it can be. Every element is decoded, so a
    truncated or corrupt payload is refused here rather than discovered by a worker
    later. The common case, uncompressed little endian Pixel Data as the last
    element, is checked without copying the pixels: the header is parsed up to Pixel
    Data and the element's length is compared with the bytes that follow it and
    with Rows x Columns x samples x frames x bits. Anything else (encapsulated or
    big endian pixels, elements after Pixel Data) is parsed in full.

    The four identifying UIDs (SOP Instance, SOP Class, Study, Series) are present
    and well-formed UIDs in the returned header (:func:`~overread.imaging.uids.uid_problem`):
    the gateway keys rows, object keys, routes and outgoing SRs on them.

    ``data`` may also be a file mapped read-only (an instance written to disk as it
    arrived): it is then read in place, not copied.

    Raises
    ------
    InvalidUidError
        If one of those UIDs is malformed (a path, a quote, a leading zero, too long).
    InvalidDicomError
        If the bytes are not a readable DICOM data set or lack a required UID.
    """
    try:
        if isinstance(data, mmap.mmap):
            data.seek(0)
            stream = cast(BinaryIO, data)  # read in place, not copied
        else:
            stream = BytesIO(data)
        ds = pydicom.dcmread(stream, stop_before_pixels=True)
        for element in ds.iterall():  # force every element to decode
            _ = element.value
        short = _pixel_shortfall_in_place(ds, data, stream.tell())
        if short is None:  # not the simple layout: parse everything
            ds = pydicom.dcmread(BytesIO(data))
            for element in ds.iterall():
                _ = element.value
            short = _native_pixel_shortfall(ds)
    except (PydicomInvalidDicomError, EOFError, ValueError, TypeError, KeyError) as exc:
        raise InvalidDicomError(f"{source}: not a readable DICOM data set ({exc})") from None
    except Exception as exc:  # pydicom raises assorted types on corrupt input
        raise InvalidDicomError(f"{source}: not a readable DICOM data set ({exc!r})") from None
    header = metadata_from_dataset(ds)
    uids = (
        header.sop_instance_uid,
        header.sop_class_uid,
        header.study_instance_uid,
        header.series_instance_uid,
    )
    missing = [keyword for keyword, uid in zip(_REQUIRED_UIDS, uids, strict=True) if not uid]
    if missing:
        raise InvalidDicomError(f"{source}: missing required attribute(s) {', '.join(missing)}")
    for keyword, uid in zip(_REQUIRED_UIDS, uids, strict=True):
        reason = uid_problem(uid or "")
        if reason is not None:
            sop_instance, sop_class = (u or "" for u in uids[:2])
            raise InvalidUidError(
                f"{source}: {keyword} {(uid or '')[:80]!r} is not a valid UID ({reason})",
                keyword=keyword,
                reason=reason,
                sop_class_uid="" if uid_problem(sop_class) else sop_class,
                sop_instance_uid="" if uid_problem(sop_instance) else sop_instance,
            )
    if short:
        raise InvalidDicomError(f"{source}: Pixel Data is truncated ({short} bytes missing)")
    return header


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian
_LONG_VRS = {b"OB", b"OW", b"OD", b"OF", b"OL", b"OV", b"UN"}


def _pixel_bytes_expected(ds: Dataset) -> int:
    """Bytes of uncompressed Pixel Data the geometry declares (AttributeError if it does not)."""
    return (
        int(ds.Rows)
        * int(ds.Columns)
        * int(ds.get("SamplesPerPixel", 1) or 1)
        * int(ds.get("NumberOfFrames", 1) or 1)
        * int(ds.BitsAllocated)
        + 7
    ) // 8


def _pixel_shortfall_in_place(ds: Dataset, data: bytes | mmap.mmap, offset: int) -> int | None:
    """Missing Pixel Data bytes, read from the element header at ``offset`` of ``data``.

    ``offset`` is where a ``stop_before_pixels`` parse stopped. Returns ``0`` when
    the data set ended there (no pixels), ``None`` when the layout is not the simple
    one (the caller then parses everything).
    """
    if offset == len(data):
        return 0
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None)
    if (
        syntax is None
        or syntax.is_compressed
        or syntax.is_deflated
        or not syntax.is_little_endian
        or data[offset : offset + 4] != _PIXEL_DATA_TAG
    ):
        return None
    if syntax.is_implicit_VR:
        start, length = offset + 8, int.from_bytes(data[offset + 4 : offset + 8], "little")
    else:
        if data[offset + 4 : offset + 6] not in _LONG_VRS:
            return None
        start, length = offset + 12, int.from_bytes(data[offset + 8 : offset + 12], "little")
    if length == 0xFFFFFFFF or start + length < len(data):
        return None  # undefined length, or elements after Pixel Data
    available = min(length, max(0, len(data) - start))
    try:
        expected = _pixel_bytes_expected(ds)
    except (AttributeError, TypeError, ValueError):
        return max(0, length - available)
    return max(0, expected - available, length - available)


def _native_pixel_shortfall(ds: Dataset) -> int:
    """Bytes missing from uncompressed Pixel Data (pydicom reads a cut-off value silently)."""
    if "PixelData" not in ds:
        return 0
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or syntax.is_compressed:
        return 0  # encapsulated: pydicom itself fails on a missing delimiter
    try:
        expected = _pixel_bytes_expected(ds)
    except (AttributeError, TypeError, ValueError):
        return 0
    return max(0, expected - len(ds.PixelData))


def _convert_elements(ds: Dataset, path: Path) -> None:
    """Parse every top-level element now, so a malformed one fails here, named.

    pydicom converts raw bytes lazily; without this a wrong VR or length would
    surface later as an arbitrary exception deep inside pixel handling.
    """
    for tag in list(ds.keys()):
        if tag in PIXEL_TAGS:
            continue  # checked against the declared geometry, decoded later
        try:
            ds[tag]
        except Exception as exc:
            name = pydicom.datadict.keyword_for_tag(tag) or "private or unknown"
            raise InvalidDicomError(
                f"{path}: malformed element {tag} {name}: {one_line(exc)}"
            ) from None


def _check_raw_dataset(ds: Dataset, path: Path) -> None:
    """Reject arbitrary bytes that pydicom parsed, with ``force``, into noise."""
    try:
        tags = list(ds.keys())
        if not tags:
            raise InvalidDicomError(f"{path}: not a DICOM file (no data elements)")
        known = sum(1 for t in tags if pydicom.datadict.dictionary_has_tag(t) or t.is_private)
        groups_ok = all(t.group % 2 == 0 or t.group > 8 for t in tags[:5])
        for t in tags:
            ds[t]
    except InvalidDicomError:
        raise
    except Exception as exc:
        raise InvalidDicomError(f"{path}: not a DICOM file ({one_line(exc)})") from None
    first_group = tags[0].group
    if known < max(1, len(tags) // 2) or not groups_ok or first_group not in (0x0002, 0x0008):
        raise InvalidDicomError(f"{path}: not a DICOM file (no recognisable data elements)")


def pixel_keyword(ds: Dataset) -> str | None:
    """Which pixel data element the dataset carries, if any."""
    for keyword in PIXEL_KEYWORDS:
        if keyword in ds:
            return keyword
    return None


__all__ = [
    "DEFER_BYTES",
    "PIXEL_KEYWORDS",
    "PIXEL_TAGS",
    "as_text",
    "collect_warnings",
    "first_item",
    "functional_group",
    "header_value",
    "is_part10",
    "metadata_from_dataset",
    "one_line",
    "pixel_keyword",
    "read_dataset",
    "read_header",
    "read_instance",
    "read_metadata",
    "transfer_syntax_of",
]
