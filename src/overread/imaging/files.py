"""Reading NIfTI volumes and PNG/JPEG pictures into :class:`Image`.

Public chest X-ray datasets (CheXpert, NIH ChestX-ray14, MIMIC-CXR-JPG) ship as
8- or 16-bit PNG/JPEG, and segmentation work uses NIfTI, so the same pipeline
must accept them. They carry no DICOM header: the metadata holds what the file
itself says (size, bit depth, voxel spacing and affine for NIfTI) and nothing
is guessed.
"""

from __future__ import annotations

import gzip
from pathlib import Path
from typing import Any

import numpy as np

from overread.errors import ImageReadError
from overread.imaging.header import one_line
from overread.imaging.image import Image, ImageMetadata

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
NIFTI_SUFFIXES = (".nii", ".nii.gz", ".img", ".hdr")


def sniff_format(path: Path) -> str | None:
    """Guess the container from the first bytes (and the name for NIfTI).

    Returns ``"png"``, ``"jpeg"``, ``"nifti"`` or ``None`` (maybe DICOM).
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(352)
    except OSError:
        return None
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(JPEG_MAGIC):
        return "jpeg"
    name = path.name.lower()
    if head[344:348] in (b"n+1\x00", b"ni1\x00", b"n+2\x00") or head[4:8] in (b"n+2\x00",):
        return "nifti"
    if name.endswith(NIFTI_SUFFIXES) and head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as gz:
                inner = gz.read(352)
        except (OSError, EOFError):
            return None
        if inner[344:348] in (b"n+1\x00", b"ni1\x00") or inner[4:8] == b"n+2\x00":
            return "nifti"
    return None


def read_picture(path: Path, *, max_pixels: int) -> Image:
    """Read a PNG or JPEG (8- or 16-bit grey, RGB, palette) as float32 pixels.

    Raises
    ------
    ImageReadError
        If Pillow cannot open or decode the file, or it exceeds ``max_pixels``.
    """
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as pic:
            width, height = pic.size
            if width * height * len(pic.getbands()) > max_pixels:
                raise ImageReadError(
                    f"{path}: {width}x{height} picture exceeds the limit of {max_pixels} "
                    "values (imaging.max_pixels)"
                )
            mode = pic.mode
            fmt = pic.format or "?"
            pic.load()
            decoded: PILImage.Image = pic
            if mode in ("P", "PA", "LA", "RGBA", "CMYK", "YCbCr", "La", "RGBa"):
                decoded = pic.convert("RGB" if mode not in ("LA", "La") else "L")
            elif mode == "1":
                decoded = pic.convert("L")
            arr: np.ndarray[Any, Any] = np.asarray(decoded)
    except ImageReadError:
        raise
    except (PILImage.DecompressionBombError, MemoryError):
        raise ImageReadError(f"{path}: picture too large to decode") from None
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError...
        raise ImageReadError(f"{path}: cannot decode picture ({one_line(exc)})") from None
    if arr.ndim == 3 and arr.shape[2] != 3:
        raise ImageReadError(f"{path}: picture with {arr.shape[2]} channels is not supported")
    bits = 8 if arr.dtype == np.uint8 else 16 if arr.dtype in (np.uint16, np.int32) else 32
    if arr.dtype == np.int32 and arr.size and int(arr.max()) > 65535:
        bits = 32
    samples = 3 if arr.ndim == 3 else 1
    meta = ImageMetadata(
        source_path=str(path),
        source_format=fmt.lower(),
        photometric_interpretation="RGB" if samples == 3 else "MONOCHROME2",
        samples_per_pixel=samples,
        bits_allocated=bits,
        bits_stored=bits,
        pixel_representation=0,
        rows=int(arr.shape[0]),
        columns=int(arr.shape[1]),
        frames=1,
    )
    return Image(
        pixels=np.ascontiguousarray(arr, dtype=np.float32),
        metadata=meta,
        provenance=[f"read {fmt} {mode}: {arr.shape[0]}x{arr.shape[1]}, {bits}-bit"],
    )


def read_nifti(path: Path, *, max_pixels: int, max_frames: int) -> Image:
    """Read a NIfTI-1/2 volume as (slices, rows, cols) float32 with its affine.

    NIfTI stores ``data[i, j, k]`` with i along columns of a slice, j along rows
    and k across slices; the array is transposed to ``(k, j, i)`` so it matches
    DICOM's (frames, rows, cols), and the affine's columns are permuted to match
    (it maps (col, row, slice) indices to RAS+ millimetres, as nibabel gives).

    Raises
    ------
    ImageReadError
        If nibabel cannot read the file, the data is not 2-D/3-D, or it is too large.
    """
    import nibabel as nib

    try:
        nii: Any = nib.load(str(path))
        shape = tuple(int(s) for s in nii.shape)
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read NIfTI ({one_line(exc)})") from None
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) not in (2, 3):
        raise ImageReadError(f"{path}: NIfTI with shape {shape} is not a 2-D or 3-D image")
    total = int(np.prod(shape))
    slices = shape[2] if len(shape) == 3 else 1
    if total > max_pixels or slices > max_frames:
        raise ImageReadError(
            f"{path}: NIfTI shape {shape} exceeds the limits (imaging.max_pixels / max_frames)"
        )
    try:
        data = np.asarray(nii.dataobj, dtype=np.float32).reshape(shape)
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot decode NIfTI data ({one_line(exc)})") from None
    zooms = tuple(float(z) for z in nii.header.get_zooms()[:3])
    affine = np.asarray(nii.affine, dtype=np.float64)
    if data.ndim == 3:
        pixels = np.ascontiguousarray(np.transpose(data, (2, 1, 0)))
    else:
        pixels = np.ascontiguousarray(data.T)
    rows, cols = pixels.shape[-2], pixels.shape[-1]
    meta = ImageMetadata(
        source_path=str(path),
        source_format="nifti",
        photometric_interpretation="MONOCHROME2",
        samples_per_pixel=1,
        rows=int(rows),
        columns=int(cols),
        frames=int(slices),
        pixel_spacing=(zooms[1], zooms[0]) if len(zooms) >= 2 else None,
        slice_thickness=zooms[2] if len(zooms) >= 3 else None,
        affine=tuple(tuple(float(v) for v in row) for row in affine),
    )
    return Image(
        pixels=pixels,
        metadata=meta,
        provenance=[f"read NIfTI {shape} -> (slices, rows, cols) {pixels.shape}"],
    )


__all__ = ["read_nifti", "read_picture", "sniff_format"]
