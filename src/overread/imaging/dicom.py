"""Reading DICOM files into :class:`~overread.imaging.image.Image`.

Accepts Part 10 files and raw datasets without File Meta Information (implicit
or explicit VR, little or big endian), deflated datasets, and every compressed
transfer syntax for which pydicom has an installed decoder plugin (pylibjpeg,
pyjpegls, Pillow), with DCMTK as a fallback. Before any pixel is decoded the
declared geometry is checked against the limits in
:class:`overread.config.ImagingSettings` and against the length of the stored
pixel data, so a hostile or broken header cannot make us allocate gigabytes or
spin: such files are refused with one line naming the problem.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels.processing import apply_color_lut
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from overread.errors import InvalidDicomError
from overread.imaging.codecs import codec_availability, decode_with_dcmtk, require_decoder
from overread.imaging.header import (
    PIXEL_KEYWORDS,
    as_text,
    collect_warnings,
    first_item,
    functional_group,
    header_value,
    is_part10,
    metadata_from_dataset,
    one_line,
    pixel_keyword,
    read_header,
    transfer_syntax_of,
)
from overread.imaging.image import Image, ImageMetadata
from overread.imaging.lut import apply_rescale, lut_from_item

logger = logging.getLogger(__name__)

UNDEFINED_LENGTH = 0xFFFFFFFF
DEFLATED = UID("1.2.840.10008.1.2.1.99")
# Syntaxes whose Pixel Data is stored as plain values (length checkable up front).
NATIVE_SYNTAXES = {
    ImplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    DEFLATED,
}


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
    samples = header_value(ds, "SamplesPerPixel", int, 1)
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
    stored = header_value(ds, "BitsStored", int, bits)
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
            f"{path}: declares {rows}x{columns} pixels x {frames} frame(s) x {samples} "
            f"sample(s) = {total} values, more than the limit of {max_pixels} "
            "(imaging.max_pixels)"
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
        if (
            samples == 3
            and header_value(ds, "PhotometricInterpretation", as_text, "") == "YBR_FULL_422"
        ):
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
    raw = ds.get_item(tag, keep_deferred=True)
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


def _modality_lut(
    ds: Dataset, pixels: npt.NDArray[Any], frames: int, path: Path | str
) -> tuple[npt.NDArray[np.float32], str]:
    """Apply PS3.3 C.11.1 (or its functional-group form) and say what was done."""
    if "ModalityLUTSequence" in ds and ds.ModalityLUTSequence:
        lut = lut_from_item(ds.ModalityLUTSequence[0], f"{path}: Modality LUT Sequence")
        return lut.apply(pixels), f"Modality LUT Sequence ({len(lut.data)} entries)"
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if frames > 1 and per_frame and len(per_frame) == frames and "RescaleSlope" not in ds:
        shared = first_item(
            ds, "SharedFunctionalGroupsSequence", "PixelValueTransformationSequence"
        )
        slopes: list[float] = []
        intercepts: list[float] = []
        for fg in per_frame:
            item = first_item(fg, "PixelValueTransformationSequence") or shared
            slopes.append(
                header_value(item, "RescaleSlope", float, 1.0) if item is not None else 1.0
            )
            intercepts.append(
                header_value(item, "RescaleIntercept", float, 0.0) if item is not None else 0.0
            )
        if len(set(slopes)) > 1 or len(set(intercepts)) > 1:
            out = pixels.astype(np.float32)
            for i, (m, b) in enumerate(zip(slopes, intercepts, strict=True)):
                out[i] = apply_rescale(pixels[i], m, b)
            return out, "per-frame Rescale Slope/Intercept"
    rescale = _single_rescale(ds, path)
    if rescale is None:
        return pixels.astype(np.float32), "no Modality LUT (identity)"
    slope, intercept, step = rescale
    return apply_rescale(pixels, slope, intercept), step


def _single_rescale(ds: Dataset, path: Path | str) -> tuple[float, float, str] | None:
    """Rescale Slope/Intercept for the whole image (or its shared functional group).

    ``None`` when the header has neither (the identity Modality LUT).
    """
    meta_src: Dataset | None = ds
    if "RescaleSlope" not in ds and "RescaleIntercept" not in ds:
        meta_src = functional_group(ds, "PixelValueTransformationSequence")
    if meta_src is None or ("RescaleSlope" not in meta_src and "RescaleIntercept" not in meta_src):
        return None
    slope = header_value(meta_src, "RescaleSlope", float, 1.0)
    intercept = header_value(meta_src, "RescaleIntercept", float, 0.0)
    if not math.isfinite(slope) or not math.isfinite(intercept) or slope == 0:
        raise InvalidDicomError(f"{path}: unusable Rescale Slope {slope} / Intercept {intercept}")
    unit = header_value(meta_src, "RescaleType", as_text, None) or (
        "HU" if header_value(ds, "Modality", as_text, "") == "CT" else "US"
    )
    return slope, intercept, f"Rescale slope {slope:g} intercept {intercept:g} -> {unit}"


@dataclass(frozen=True)
class _Header:
    """A parsed, checked header: what both readers need before touching pixels."""

    dataset: Dataset
    keyword: str
    transfer_syntax: UID
    photometric: str
    rows: int
    columns: int
    frames: int
    samples: int
    bits: int


def _open(path: Path, max_pixels: int, max_frames: int, image_warnings: list[str]) -> _Header:
    """Parse and check the header (limits, stored length, decoder) without decoding."""
    ds = read_header(path)
    keyword = pixel_keyword(ds)
    if keyword is None:
        sop = header_value(ds, "SOPClassUID", lambda v: UID(str(v)).name, "no SOP Class UID")
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
    rows, columns, frames, samples, bits = check_budget(
        ds, path, max_pixels=max_pixels, max_frames=max_frames, tsuid=tsuid
    )
    if keyword == "PixelData" and tsuid not in NATIVE_SYNTAXES:
        require_decoder(tsuid, path)
    photometric = header_value(ds, "PhotometricInterpretation", as_text, "")
    if not photometric:
        image_warnings.append("Photometric Interpretation missing; assumed MONOCHROME2")
        ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
        photometric = str(ds.PhotometricInterpretation)
    return _Header(ds, keyword, tsuid, photometric, rows, columns, frames, samples, bits)


#: Transfer syntaxes whose stored values can be used in place (little endian, not deflated).
IN_PLACE_SYNTAXES = {ImplicitVRLittleEndian, ExplicitVRLittleEndian}


@dataclass
class StoredPixels:
    """A grey single-frame image's stored values, not yet decoded to float.

    ``values`` is a read-only view (a memory map of the file or a view of the
    bytes already read), so a 3000 x 3000 film costs no copy until a transform
    reduces it; ``slope`` and ``intercept`` are its Modality LUT (PS3.3
    C.11.1.1.2). The other fields are what :func:`read_dicom` would give the
    :class:`Image`.
    """

    values: npt.NDArray[Any]
    slope: float
    intercept: float
    metadata: ImageMetadata
    provenance: list[str]
    warnings: list[str]
    dataset: Dataset


def read_stored(path: Path, *, max_pixels: int, max_frames: int) -> StoredPixels | None:
    """The stored values of a native little-endian grey image, without a copy.

    Returns ``None`` when the file is not such an image (compressed, big
    endian or deflated, colour, multi-frame, a Modality LUT Sequence, 1- or
    32-bit samples, signed values with unused high bits): the caller then
    reads it with :func:`read_dicom`. Raises what :func:`read_dicom` raises
    for a broken or over-limit header.
    """
    image_warnings: list[str] = []
    with collect_warnings(image_warnings):
        header = _open(path, max_pixels, max_frames, image_warnings)
        ds = header.dataset
        representation = header_value(ds, "PixelRepresentation", int, 0)
        stored_bits = header_value(ds, "BitsStored", int, header.bits)
        if (
            header.keyword != "PixelData"
            or header.transfer_syntax not in IN_PLACE_SYNTAXES
            or header.frames != 1
            or header.samples != 1
            or header.bits not in (8, 16)
            or header.photometric not in ("MONOCHROME1", "MONOCHROME2")
            or ("ModalityLUTSequence" in ds and ds.ModalityLUTSequence)
            or representation not in (0, 1)
            or (representation == 1 and stored_bits != header.bits)
        ):
            return None
        dtype = np.dtype(f"<{'i' if representation else 'u'}{header.bits // 8}")
        shape = (header.rows, header.columns)
        values = _stored_view(ds, path, dtype, shape)
        if values is None:
            return None
        rescale = _single_rescale(ds, path)
        slope, intercept, step = rescale if rescale is not None else (1.0, 0.0, "")
        steps = [
            f"read DICOM {header.transfer_syntax.name}: {header.rows}x{header.columns}, "
            f"1 frame(s), {header.photometric}",
            f"Modality LUT: {step or 'no Modality LUT (identity)'}",
        ]
        meta = dataclasses.replace(
            metadata_from_dataset(ds, path),
            photometric_interpretation=header.photometric,
            samples_per_pixel=1,
            modality_lut_applied=steps[-1],
        )
    for kw in PIXEL_KEYWORDS:
        if kw in ds:
            del ds[kw]
    return StoredPixels(values, slope, intercept, meta, steps, image_warnings, ds)


def _stored_view(
    ds: Dataset, path: Path, dtype: np.dtype[Any], shape: tuple[int, int]
) -> npt.NDArray[Any] | None:
    """A read-only ``shape`` view of Pixel Data: a memory map when the value was deferred."""
    tag = pydicom.datadict.tag_for_keyword("PixelData")
    raw = ds.get_item(tag, keep_deferred=True) if tag is not None else None
    count = shape[0] * shape[1]
    if isinstance(raw, RawDataElement) and raw.value is None and raw.value_tell is not None:
        if raw.length == UNDEFINED_LENGTH:
            return None
        mapped = np.memmap(path, dtype=dtype, mode="r", offset=int(raw.value_tell), shape=(count,))
        return np.asarray(mapped).reshape(shape)
    value = ds.PixelData
    if not isinstance(value, bytes | bytearray) or len(value) < count * dtype.itemsize:
        return None
    return np.frombuffer(value, dtype=dtype, count=count).reshape(shape)


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
        header = _open(path, max_pixels, max_frames, image_warnings)
        ds, tsuid, photometric = header.dataset, header.transfer_syntax, header.photometric
        rows, columns, frames, samples = header.rows, header.columns, header.frames, header.samples
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
    "StoredPixels",
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
    "read_stored",
    "transfer_syntax_of",
]
