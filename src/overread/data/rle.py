"""SIIM-ACR pneumothorax run-length encoding.

The SIIM-ACR Pneumothorax Segmentation challenge (2019) encodes each mask as
pairs ``offset length``: the offset of a run is counted from the end of the
previous run (the first from pixel 0), not from the start of the image, and
pixels are numbered down the columns (column-major, i.e. over the transposed
image), on the 1024x1024 images. ``-1`` means "no pneumothorax". This is the
challenge's ``mask_functions.py`` (``rle2mask(rle, 1024, 1024).T``), which
torchxrayvision's SIIM dataset also uses.

Other Kaggle challenges use absolute, 1-based starts; :func:`decode_rle` takes
``relative=False`` for those.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from overread.errors import DatasetError

#: Size of the SIIM-ACR images (rows, columns).
SIIM_SHAPE: tuple[int, int] = (1024, 1024)


def rle_runs(
    encoded: str,
    shape: tuple[int, int] = SIIM_SHAPE,
    *,
    relative: bool = True,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Validate an RLE string and return its runs as 0-based (starts, ends).

    Positions index the column-major flattened image; ``-1`` or an empty string
    gives no runs. Cheap enough to check every row of a file without building
    masks.

    Raises
    ------
    DatasetError
        If the string is not integer pairs, or a run leaves the image.
    """
    rows, cols = shape
    text = encoded.strip()
    empty = np.zeros(0, dtype=np.int64)
    if text in ("", "-1"):
        return empty, empty
    try:
        numbers = np.array(text.split(), dtype=np.int64)
    except ValueError as exc:
        raise DatasetError(f"RLE is not a list of integers: {text[:40]!r}") from exc
    if numbers.size % 2:
        raise DatasetError(f"RLE has an odd number of values ({numbers.size})")
    offsets, lengths = numbers[0::2], numbers[1::2]
    if (lengths <= 0).any():
        raise DatasetError("RLE has a run of non-positive length")
    if relative:
        if (offsets < 0).any():
            raise DatasetError("relative RLE has a negative offset")
        starts = np.cumsum(offsets + lengths) - lengths
    else:
        starts = offsets - 1
        if (starts < 0).any():
            raise DatasetError("absolute RLE starts are 1-based; found a start below 1")
    ends = starts + lengths
    if int(ends.max()) > rows * cols:
        raise DatasetError(f"RLE runs past the end of a {rows}x{cols} image")
    return starts, ends


def decode_rle(
    encoded: str,
    shape: tuple[int, int] = SIIM_SHAPE,
    *,
    relative: bool = True,
) -> npt.NDArray[np.uint8]:
    """Decode one RLE string to a (rows, columns) uint8 mask of 0/1.

    Parameters
    ----------
    encoded
        Space-separated integer pairs; ``-1`` or an empty string is an empty mask.
    shape
        (rows, columns) of the image the mask belongs to.
    relative
        True for SIIM's relative offsets (0-based from the end of the previous
        run); False for absolute 1-based starts.

    Raises
    ------
    DatasetError
        If the string is not integer pairs or a run leaves the image.
    """
    rows, cols = shape
    starts, ends = rle_runs(encoded, shape, relative=relative)
    flat = np.zeros(rows * cols, dtype=np.uint8)
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        flat[start:end] = 1
    # Column-major: pixel k is row k % rows, column k // rows.
    return flat.reshape(cols, rows).T.copy()


def encode_rle(mask: npt.NDArray[np.generic], *, relative: bool = True) -> str:
    """Encode a 2-D mask (non-zero = inside) the way :func:`decode_rle` reads it.

    An empty mask encodes as ``-1``, as in the SIIM files.
    """
    if mask.ndim != 2:
        raise DatasetError(f"RLE encodes 2-D masks; got shape {mask.shape}")
    flat = (np.asarray(mask).T.reshape(-1) != 0).astype(np.int8)
    edges = np.diff(np.concatenate(([0], flat, [0])))
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    if starts.size == 0:
        return "-1"
    lengths = ends - starts
    if relative:
        previous_end = np.concatenate(([0], ends[:-1]))
        first = starts - previous_end
    else:
        first = starts + 1
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2], pairs[1::2] = first, lengths
    return " ".join(map(str, pairs.tolist()))


__all__ = ["SIIM_SHAPE", "decode_rle", "encode_rle", "rle_runs"]
