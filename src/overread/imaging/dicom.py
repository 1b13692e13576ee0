"""Reading DICOM files into :class:`~overread.imaging.image.Image`.

Accepts Part 10 files and raw datasets without File Meta Information (implicit
or explicit VR, little or big endian), deflated datasets, and every compressed
transfer syntax for which pydicom has an installed decoder plugin (pylibjpeg,
pyjpegls, Pillow). Before any pixel is decoded the declared geometry is checked
against the limits in :class:`overread.config.ImagingSettings` and against the
length of the stored pixel data, so a hostile or broken header cannot make us
allocate gigabytes or spin: such files are refused with one line naming the
problem.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import shutil
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError as PydicomInvalidDicomError
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import apply_color_lut
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from overread.errors import InvalidDicomError, UnsupportedTransferSyntaxError
from overread.imaging.image import Image, ImageMetadata
from overread.imaging.lut import apply_rescale, lut_from_item

logger = logging.getLogger(__name__)

T = TypeVar("T")

PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
DEFER_BYTES = 4 * 1024 * 1024
UNDEFINED_LENGTH = 0xFFFFFFFF
NATIVE_SYNTAXES = {
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    UID("1.2.840.10008.1.2.1.99"),  # Deflated Explicit VR Little Endian
    UID("1.2.840.10008.1.2.1.98"),  # Encapsulated Uncompressed Explicit VR Little Endian
}
DEFLATED = UID("1.2.840.10008.1.2.1.99")


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


@contextmanager
def collect_warnings(sink: list[str]) -> Iterator[None]:
    """Turn Python warnings raised by pydicom/decoders into image warnings.

    pydicom also *logs* each warning, and logs decoder failures with a
    traceback; while a read is in progress on this thread those records are
    held back (the warnings and our one-line error carry the content), so a
    command-line user sees one line per bad file.
    """
    _install_log_filter()
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


def _get(ds: Dataset, keyword: str, convert: Callable[[Any], T], default: T) -> T:
    """Read one attribute defensively: a malformed value gives ``default``."""
    try:
        value = ds.get(keyword)
        if value is None or value == "":
            return default
        return convert(value)
    except Exception:  # malformed values raise anything from ValueError to struct.error
        return default


def _text(value: Any) -> str:
    return str(value).strip()


NO_FLOATS: tuple[float, ...] = ()


def _floats(value: Any) -> tuple[float, ...]:
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        value = [value]
    return tuple(float(v) for v in value)


def _first_item(ds: Dataset, *path: str) -> Dataset | None:
    """Follow first items of nested sequences (functional groups), or None."""
    node: Any = ds
    for keyword in path:
        try:
            seq = node.get(keyword)
        except Exception:
            return None
        if not seq:
            return None
        try:
            node = seq[0]
        except (IndexError, TypeError):
            return None
    return node if isinstance(node, Dataset) else None


def _functional(ds: Dataset, macro: str) -> Dataset | None:
    """A functional-group macro item: shared first, then the first frame's."""
    return _first_item(ds, "SharedFunctionalGroupsSequence", macro) or _first_item(
        ds, "PerFrameFunctionalGroupsSequence", macro
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
    plane = _functional(ds, "PlanePositionSequence")
    orient = _functional(ds, "PlaneOrientationSequence")
    measures = _functional(ds, "PixelMeasuresSequence")
    transform = _functional(ds, "PixelValueTransformationSequence")
    voi = _functional(ds, "FrameVOILUTSequence")
    position = _get(ds, "ImagePositionPatient", _floats, NO_FLOATS)
    if not position and plane is not None:
        position = _get(plane, "ImagePositionPatient", _floats, NO_FLOATS)
    orientation = _get(ds, "ImageOrientationPatient", _floats, NO_FLOATS)
    if not orientation and orient is not None:
        orientation = _get(orient, "ImageOrientationPatient", _floats, NO_FLOATS)
    spacing = _get(ds, "PixelSpacing", _floats, NO_FLOATS)
    if not spacing and measures is not None:
        spacing = _get(measures, "PixelSpacing", _floats, NO_FLOATS)
    if not spacing:
        spacing = _get(ds, "ImagerPixelSpacing", _floats, NO_FLOATS)
    thickness = _get(ds, "SliceThickness", float, None)
    if thickness is None and measures is not None:
        thickness = _get(measures, "SliceThickness", float, None)
    rescale_src = ds if "RescaleSlope" in ds or transform is None else transform
    voi_src = ds if "WindowCenter" in ds or voi is None else voi
    tsuid = transfer_syntax_of(ds)
    return ImageMetadata(
        source_path=str(path) if path is not None else None,
        source_format="dicom",
        patient_id=_get(ds, "PatientID", _text, None),
        patient_sex=_get(ds, "PatientSex", _text, None),
        patient_age=_get(ds, "PatientAge", _text, None),
        study_instance_uid=_get(ds, "StudyInstanceUID", _text, None),
        series_instance_uid=_get(ds, "SeriesInstanceUID", _text, None),
        sop_instance_uid=_get(ds, "SOPInstanceUID", _text, None),
        sop_class_uid=_get(ds, "SOPClassUID", _text, None),
        modality=_get(ds, "Modality", _text, None),
        body_part=_get(ds, "BodyPartExamined", _text, None),
        view_position=_get(ds, "ViewPosition", _text, None),
        laterality=_get(ds, "ImageLaterality", _text, None) or _get(ds, "Laterality", _text, None),
        study_date=_get(ds, "StudyDate", _text, None),
        accession_number=_get(ds, "AccessionNumber", _text, None),
        manufacturer=_get(ds, "Manufacturer", _text, None),
        series_number=_get(ds, "SeriesNumber", int, None),
        instance_number=_get(ds, "InstanceNumber", int, None),
        photometric_interpretation=_get(ds, "PhotometricInterpretation", _text, None),
        stored_photometric_interpretation=_get(ds, "PhotometricInterpretation", _text, None),
        samples_per_pixel=_get(ds, "SamplesPerPixel", int, 1),
        bits_allocated=_get(ds, "BitsAllocated", int, None),
        bits_stored=_get(ds, "BitsStored", int, None),
        pixel_representation=_get(ds, "PixelRepresentation", int, None),
        pixel_spacing=(spacing[0], spacing[1]) if len(spacing) >= 2 else None,
        slice_thickness=thickness,
        image_position=(position[0], position[1], position[2]) if len(position) >= 3 else None,
        image_orientation=_orientation(orientation),
        rows=_get(ds, "Rows", int, 0),
        columns=_get(ds, "Columns", int, 0),
        frames=max(_get(ds, "NumberOfFrames", int, 1), 1),
        transfer_syntax=str(tsuid) if tsuid else None,
        rescale_slope=_get(rescale_src, "RescaleSlope", float, None),
        rescale_intercept=_get(rescale_src, "RescaleIntercept", float, None),
        rescale_type=_get(rescale_src, "RescaleType", _text, None),
        window_center=_get(voi_src, "WindowCenter", _floats, NO_FLOATS),
        window_width=_get(voi_src, "WindowWidth", _floats, NO_FLOATS),
        window_explanation=_get(
            voi_src,
            "WindowCenterWidthExplanation",
            lambda v: tuple(_text(x) for x in (v if isinstance(v, list | tuple) else [v])),
            (),
        ),
        voi_lut_function=_get(voi_src, "VOILUTFunction", _text, None),
        has_voi_lut_sequence="VOILUTSequence" in ds,
        burned_in_annotation=_get(ds, "BurnedInAnnotation", _text, None),
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


def declared_geometry(ds: Dataset, path: Path | str) -> tuple[int, int, int, int, int]:
    """Rows, columns, frames, samples and bits allocated, validated.

    Raises
    ------
    InvalidDicomError
        If a required Image Pixel module attribute is missing or absurd.
    """

    def need(keyword: str) -> int:
        if keyword not in ds:
            raise InvalidDicomError(f"{path}: Pixel Data present but {keyword} is missing")
        try:
            return int(ds[keyword].value)
        except (TypeError, ValueError):
            raise InvalidDicomError(
                f"{path}: {keyword} has an unusable value {ds[keyword].value!r}"
            ) from None

    rows, columns = need("Rows"), need("Columns")
    bits = need("BitsAllocated")
    samples = _get(ds, "SamplesPerPixel", int, 1)
    frames_raw = ds.get("NumberOfFrames", 1)
    try:
        frames = int(frames_raw) if frames_raw not in (None, "") else 1
    except (TypeError, ValueError):
        raise InvalidDicomError(
            f"{path}: Number of Frames has an unusable value {frames_raw!r}"
        ) from None
    if rows <= 0 or columns <= 0:
        raise InvalidDicomError(f"{path}: image has {rows} rows and {columns} columns")
    if frames <= 0:
        raise InvalidDicomError(f"{path}: Number of Frames is {frames}")
    if samples not in (1, 3):
        raise InvalidDicomError(f"{path}: Samples per Pixel is {samples}; only 1 or 3 are valid")
    if bits not in (1, 8, 16, 32, 64):
        raise InvalidDicomError(f"{path}: Bits Allocated is {bits}; expected 1, 8, 16, 32 or 64")
    stored = _get(ds, "BitsStored", int, bits)
    if not 1 <= stored <= bits:
        raise InvalidDicomError(f"{path}: Bits Stored {stored} does not fit Bits Allocated {bits}")
    return rows, columns, frames, samples, bits


def check_budget(
    ds: Dataset, path: Path | str, *, max_pixels: int, max_frames: int, tsuid: UID | None
) -> tuple[int, int, int, int, int]:
    """Refuse, before decoding, anything that would be too big or is inconsistent.

    Checks the declared frame and sample count against the configured limits and,
    for native (uncompressed) pixel data, the stored byte length against what the
    header declares.
    """
    rows, columns, frames, samples, bits = declared_geometry(ds, path)
    if frames > max_frames:
        raise InvalidDicomError(
            f"{path}: declares {frames} frames, more than the limit of {max_frames} "
            "(imaging.max_frames)"
        )
    total = rows * columns * frames * samples
    if total > max_pixels:
        raise InvalidDicomError(
            f"{path}: declares {rows}x{columns}x{frames} frames x{samples} samples = {total} "
            f"values, more than the limit of {max_pixels} (imaging.max_pixels)"
        )
    keyword = pixel_keyword(ds)
    actual = _stored_length(ds, keyword, path) if keyword else None
    if actual is not None and (tsuid is None or tsuid in NATIVE_SYNTAXES):
        if actual == UNDEFINED_LENGTH:
            name = tsuid.name if tsuid else "unknown"
            raise InvalidDicomError(
                f"{path}: pixel data is encapsulated but the transfer syntax ({name}) is native"
            )
        expected = math.ceil(total * bits / 8)
        if samples == 3 and _get(ds, "PhotometricInterpretation", _text, "") == "YBR_FULL_422":
            expected = expected * 2 // 3  # chroma subsampled 2:1 horizontally (C.7.6.3.1.2)
        if actual is not None and actual < expected:
            raise InvalidDicomError(
                f"{path}: Pixel Data holds {actual} bytes but {rows} rows x {columns} columns x "
                f"{frames} frames x {samples} samples x {bits} bits need {expected}"
            )
    return rows, columns, frames, samples, bits


def _stored_length(ds: Dataset, keyword: str, path: Path | str) -> int | None:
    """Bytes of a pixel data element actually present, without loading a deferred value.

    A deferred element's declared length can exceed what a truncated file holds,
    so the length is capped by the bytes left in the file after the value starts.
    """
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None:
        return None
    raw = ds.get_item(tag)
    if raw is None:
        return None
    if isinstance(raw, RawDataElement):
        if raw.length == UNDEFINED_LENGTH:
            return UNDEFINED_LENGTH
        if raw.value is not None:
            return len(raw.value)
        if transfer_syntax_of(ds) == DEFLATED or raw.value_tell is None:
            value = ds[tag].value  # inflated in memory: positions are not file offsets
            return len(value) if isinstance(value, bytes | bytearray) else None
        try:
            left = Path(path).stat().st_size - int(raw.value_tell)
        except OSError:
            return int(raw.length)
        return max(0, min(int(raw.length), left))
    if getattr(raw, "is_undefined_length", False):
        return UNDEFINED_LENGTH
    value = raw.value
    return len(value) if isinstance(value, bytes | bytearray) else None


def codec_availability() -> dict[str, str]:
    """Each compressed transfer syntax pydicom knows, and whether it can be decoded here.

    Returns
    -------
    dict
        Transfer syntax name -> ``"available (plugins)"`` or ``"unavailable: why"``.
    """
    from pydicom.pixels.decoders import base

    out: dict[str, str] = {}
    for uid in sorted(base._PIXEL_DATA_DECODERS, key=str):  # registry of known decoders
        decoder = get_decoder(uid)
        name = UID(uid).name
        if decoder.is_available:
            plugins = ", ".join(sorted(decoder.available_plugins)) or "native"
            out[name] = f"available ({plugins})"
        else:
            missing = "; ".join(decoder.missing_dependencies)
            out[name] = f"unavailable: {missing or 'no plugin installed'}"
    return out


def _require_decoder(tsuid: UID, path: Path | str) -> None:
    try:
        decoder = get_decoder(tsuid)
    except NotImplementedError:
        raise UnsupportedTransferSyntaxError(
            f"{path}: no pixel data decoder exists for transfer syntax {tsuid} ({tsuid.name})"
        ) from None
    if not decoder.is_available:
        missing = "; ".join(f"{v}" for v in decoder.missing_dependencies) or "none installed"
        raise UnsupportedTransferSyntaxError(
            f"{path}: transfer syntax {tsuid.name} needs a decoder plugin ({missing})"
        )


# DCMTK command-line decompressors: an independent decoder used only when every
# pydicom plugin fails (for example 12-bit lossy JPEG streams that libjpeg refuses).
DCMTK_DECODERS: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "dcmdjpeg",
    "1.2.840.10008.1.2.4.51": "dcmdjpeg",
    "1.2.840.10008.1.2.4.57": "dcmdjpeg",
    "1.2.840.10008.1.2.4.70": "dcmdjpeg",
    "1.2.840.10008.1.2.4.80": "dcmdjpls",
    "1.2.840.10008.1.2.4.81": "dcmdjpls",
    "1.2.840.10008.1.2.5": "dcmdrle",
}
DCMTK_TIMEOUT_S = 60


def decode_with_dcmtk(path: Path, tsuid: UID, why: str) -> tuple[npt.NDArray[Any], str]:
    """Decompress with DCMTK into a temporary native file and decode that.

    Returns the stored pixel array and a note for the provenance and warnings.

    Raises
    ------
    InvalidDicomError
        Naming pydicom's failure (``why``) and DCMTK's, when no DCMTK tool is
        installed for the syntax or it fails too.
    """
    message = f"{path}: pixel data cannot be decoded ({tsuid.name}): {why}"
    tool = DCMTK_DECODERS.get(str(tsuid))
    executable = shutil.which(tool) if tool else None
    if tool is None or executable is None or not is_part10(path):
        raise InvalidDicomError(message)
    with tempfile.TemporaryDirectory(prefix="overread-dcmtk-") as tmp:
        target = Path(tmp) / "native.dcm"
        try:
            done = subprocess.run(
                [executable, str(path), str(target)],
                capture_output=True,
                text=True,
                timeout=DCMTK_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise InvalidDicomError(f"{message}; DCMTK {tool}: {one_line(exc)}") from None
        if done.returncode != 0 or not target.is_file():
            detail = " ".join(done.stderr.split())[:200] or f"exit status {done.returncode}"
            raise InvalidDicomError(f"{message}; DCMTK {tool}: {detail}")
        try:
            native = pydicom.dcmread(target)
            raw = native.pixel_array
        except Exception as exc:
            raise InvalidDicomError(
                f"{message}; DCMTK output unreadable: {one_line(exc)}"
            ) from None
    return raw, f"decoded by DCMTK {tool} (pydicom plugins failed: {why[:120]})"


def _modality_lut(
    ds: Dataset, pixels: npt.NDArray[Any], frames: int, path: Path | str
) -> tuple[npt.NDArray[np.float32], str]:
    """Apply PS3.3 C.11.1 (or its functional-group form) and say what was done."""
    if "ModalityLUTSequence" in ds and ds.ModalityLUTSequence:
        lut = lut_from_item(ds.ModalityLUTSequence[0], f"{path}: Modality LUT Sequence")
        return lut.apply(pixels), f"Modality LUT Sequence ({len(lut.data)} entries)"
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if frames > 1 and per_frame and len(per_frame) == frames and "RescaleSlope" not in ds:
        shared = _first_item(
            ds, "SharedFunctionalGroupsSequence", "PixelValueTransformationSequence"
        )
        slopes: list[float] = []
        intercepts: list[float] = []
        for fg in per_frame:
            item = _first_item(fg, "PixelValueTransformationSequence") or shared
            slopes.append(_get(item, "RescaleSlope", float, 1.0) if item is not None else 1.0)
            intercepts.append(
                _get(item, "RescaleIntercept", float, 0.0) if item is not None else 0.0
            )
        if len(set(slopes)) > 1 or len(set(intercepts)) > 1:
            out = pixels.astype(np.float32)
            for i, (m, b) in enumerate(zip(slopes, intercepts, strict=True)):
                out[i] = apply_rescale(pixels[i], m, b)
            return out, "per-frame Rescale Slope/Intercept"
    meta_src: Dataset | None = ds
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        meta_src = _functional(ds, "PixelValueTransformationSequence")
    if meta_src is None or ("RescaleSlope" not in meta_src and "RescaleIntercept" not in meta_src):
        return pixels.astype(np.float32), "no Modality LUT (identity)"
    slope = _get(meta_src, "RescaleSlope", float, 1.0)
    intercept = _get(meta_src, "RescaleIntercept", float, 0.0)
    if not math.isfinite(slope) or not math.isfinite(intercept) or slope == 0:
        raise InvalidDicomError(f"{path}: unusable Rescale Slope {slope} / Intercept {intercept}")
    unit = _get(meta_src, "RescaleType", _text, None) or (
        "HU" if _get(ds, "Modality", _text, "") == "CT" else "US"
    )
    return (
        apply_rescale(pixels, slope, intercept),
        f"Rescale slope {slope:g} intercept {intercept:g} -> {unit}",
    )


def read_dicom(path: Path, *, max_pixels: int, max_frames: int) -> Image:
    """Read a DICOM file into an :class:`Image` (modality LUT applied).

    Raises
    ------
    InvalidDicomError
        Not DICOM, no pixel data, inconsistent or over-limit geometry, or pixel
        data that fails to decode.
    UnsupportedTransferSyntaxError
        No installed decoder handles the transfer syntax.
    """
    image_warnings: list[str] = []
    with collect_warnings(image_warnings):
        ds = read_header(path)
        keyword = pixel_keyword(ds)
        if keyword is None:
            sop = _get(ds, "SOPClassUID", lambda v: UID(str(v)).name, "no SOP Class UID")
            raise InvalidDicomError(f"{path}: no Pixel Data element, nothing to display ({sop})")
        tsuid = transfer_syntax_of(ds)
        meta_ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
        if tsuid is None:
            raise InvalidDicomError(f"{path}: transfer syntax unknown and cannot be inferred")
        if not meta_ts:
            if not isinstance(getattr(ds, "file_meta", None), FileMetaDataset):
                ds.file_meta = FileMetaDataset()
            ds.file_meta.TransferSyntaxUID = tsuid
            image_warnings.append(
                f"no Transfer Syntax UID in File Meta; inferred {tsuid.name} from the encoding"
            )
        rows, columns, frames, samples, _bits = check_budget(
            ds, path, max_pixels=max_pixels, max_frames=max_frames, tsuid=tsuid
        )
        if keyword == "PixelData" and tsuid not in NATIVE_SYNTAXES:
            _require_decoder(tsuid, path)
        photometric = _get(ds, "PhotometricInterpretation", _text, "")
        if not photometric:
            image_warnings.append("Photometric Interpretation missing; assumed MONOCHROME2")
            ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
            photometric = str(ds.PhotometricInterpretation)
        fallback: str | None = None
        try:
            raw = ds.pixel_array
        except MemoryError:
            raise InvalidDicomError(f"{path}: pixel data too large to decode") from None
        except Exception as exc:  # decoders raise ValueError, RuntimeError, OSError...
            raw, fallback = decode_with_dcmtk(path, tsuid, one_line(exc))
            image_warnings.append(fallback)
        steps = [f"read DICOM {tsuid.name}: {rows}x{columns}, {frames} frame(s), {photometric}"]
        if fallback:
            steps.append(fallback)
        lut_bits: int | None = None
        if photometric == "PALETTE COLOR":
            try:
                raw = apply_color_lut(raw, ds)
            except Exception as exc:
                raise InvalidDicomError(
                    f"{path}: Palette Color LUT cannot be applied: {one_line(exc)}"
                ) from None
            samples = 3
            lut_bits = 16 if raw.dtype.itemsize > 1 else 8
            steps.append(f"Palette Color LUT -> {lut_bits}-bit RGB")
            pixels = raw.astype(np.float32)
            new_photometric = "RGB"
        elif samples == 3:
            pixels = raw.astype(np.float32)
            new_photometric = "RGB"
            if photometric != "RGB":
                steps.append(f"{photometric} -> RGB (PS3.3 C.7.6.3.1.2)")
        else:
            pixels, step = _modality_lut(ds, raw, frames, path)
            steps.append(f"Modality LUT: {step}")
            new_photometric = photometric
        expected_ndim = (3 if frames > 1 else 2) + (1 if samples == 3 else 0)
        if pixels.ndim != expected_ndim:
            raise InvalidDicomError(
                f"{path}: decoded pixel array has shape {pixels.shape}, header declares "
                f"{frames} frame(s) of {rows}x{columns}x{samples}"
            )
        if raw.dtype.kind == "f" and not np.all(np.isfinite(pixels)):
            image_warnings.append("pixel data contains NaN or infinite values")
        meta = metadata_from_dataset(ds, path)
        if lut_bits is not None:  # RGB values now have the LUT's depth, not the indices'
            meta = dataclasses.replace(meta, bits_allocated=lut_bits, bits_stored=lut_bits)
        meta = dataclasses.replace(
            meta,
            photometric_interpretation=new_photometric,
            samples_per_pixel=samples,
            modality_lut_applied=steps[-1] if samples == 1 else None,
        )
    # Keep the header, not the (possibly large) encoded pixel data.
    for kw in PIXEL_KEYWORDS:
        if kw in ds:
            del ds[kw]
    return Image(
        pixels=np.ascontiguousarray(pixels, dtype=np.float32),
        metadata=meta,
        provenance=steps,
        warnings=image_warnings,
        dataset=ds,
    )


__all__ = [
    "check_budget",
    "codec_availability",
    "collect_warnings",
    "declared_geometry",
    "is_part10",
    "metadata_from_dataset",
    "one_line",
    "pixel_keyword",
    "read_dicom",
    "read_header",
    "transfer_syntax_of",
]
