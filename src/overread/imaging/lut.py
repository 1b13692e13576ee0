"""Grayscale look-up transformations of the DICOM presentation pipeline.

The order is fixed by PS3.4 N.2: stored values -> Modality LUT (PS3.3 C.11.1:
Rescale Slope/Intercept or a Modality LUT Sequence; gives Hounsfield units for
CT) -> VOI LUT (PS3.3 C.11.2: window centre/width with the VOI LUT Function
LINEAR, LINEAR_EXACT or SIGMOID of C.11.2.1.2, or a VOI LUT Sequence) ->
Presentation LUT (MONOCHROME1 inversion). The functions here implement the
first two exactly as the standard's formulas state them, for float32 arrays;
the output of the VOI step is scaled to [0, 1] (``y_min = 0``, ``y_max = 1``)
rather than to a display's bit depth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from overread.errors import InvalidDicomError

VOI_FUNCTIONS = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class LookupTable:
    """A LUT as PS3.3 C.11.1.1.1 describes it (Modality or VOI LUT Sequence item).

    Attributes
    ----------
    first_mapped
        The stored (input) value mapped to the first entry; inputs below it map
        to the first entry, inputs past the last entry to the last entry.
    bits
        Bits per output entry (the descriptor's third value).
    data
        The entries, as float32.
    """

    first_mapped: int
    bits: int
    data: npt.NDArray[np.float32]

    def apply(self, values: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Map ``values`` through the table, clamping at both ends."""
        index = np.clip(
            np.rint(np.asarray(values, dtype=np.float64)) - self.first_mapped,
            0,
            len(self.data) - 1,
        ).astype(np.intp)
        out: npt.NDArray[np.float32] = self.data[index]
        return out


def lut_from_item(item: Any, what: str) -> LookupTable:
    """Build a :class:`LookupTable` from a Modality/VOI LUT Sequence item.

    Raises
    ------
    InvalidDicomError
        If the descriptor or data are missing or inconsistent.
    """
    try:
        descriptor = [int(v) for v in item.LUTDescriptor]
        raw = item["LUTData"]
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise InvalidDicomError(f"{what}: LUT Descriptor or LUT Data missing ({exc})") from None
    if len(descriptor) != 3:
        raise InvalidDicomError(f"{what}: LUT Descriptor must have 3 values, has {len(descriptor)}")
    entries, first, bits = descriptor
    entries = (entries % 65536) or 65536  # C.11.1.1.1: 0 means 2^16; SS reads wrap
    if first > 32767:  # the descriptor's 2nd value is US or SS; US read of a negative SS
        first -= 65536
    if bits not in (8, 16):
        bits = 16 if bits > 8 else 8
    value = raw.value
    if isinstance(value, bytes | bytearray):
        dtype = np.dtype("<u1") if bits == 8 and len(value) == entries else np.dtype("<u2")
        data = np.frombuffer(bytes(value), dtype=dtype).astype(np.float32)
    else:
        data = np.asarray(list(value) if not np.isscalar(value) else [value], dtype=np.float32)
    if data.size < entries:
        raise InvalidDicomError(
            f"{what}: LUT Data has {data.size} entries, descriptor says {entries}"
        )
    return LookupTable(first_mapped=first, bits=bits, data=data[:entries].copy())


def apply_rescale(
    values: npt.NDArray[Any], slope: float, intercept: float
) -> npt.NDArray[np.float32]:
    """PS3.3 C.11.1.1.2: output = slope * stored value + intercept."""
    out = np.asarray(values, dtype=np.float32)
    if slope != 1.0:
        out = out * np.float32(slope)
    if intercept != 0.0:
        out = out + np.float32(intercept)
    return out


def window(
    values: npt.NDArray[Any],
    center: float,
    width: float,
    function: str = "LINEAR",
    *,
    y_min: float = 0.0,
    y_max: float = 1.0,
    inplace: bool = False,
) -> npt.NDArray[np.float32]:
    """Apply a VOI window per PS3.3 C.11.2.1.2 (LINEAR), C.11.2.1.3.2 (LINEAR_EXACT)
    and C.11.2.1.3.1 (SIGMOID).

    LINEAR:
        ``x <= c - 0.5 - (w-1)/2 -> y_min``; ``x > c - 0.5 + (w-1)/2 -> y_max``;
        else ``((x - (c - 0.5)) / (w-1) + 0.5) * (y_max - y_min) + y_min``.
    LINEAR_EXACT:
        ``x <= c - w/2 -> y_min``; ``x > c + w/2 -> y_max``;
        else ``((x - c) / w + 0.5) * (y_max - y_min) + y_min``.
    SIGMOID:
        ``y = (y_max - y_min) / (1 + exp(-4 (x - c) / w)) + y_min``.

    The piecewise LINEAR forms equal a clipped straight line, which is how they
    are computed here (float32). With ``inplace`` a float32 input is overwritten.

    Raises
    ------
    InvalidDicomError
        If the width is not allowed for the function (``w < 1`` for LINEAR,
        ``w <= 0`` otherwise) or the function is unknown.
    """
    function = function.upper().strip()
    x = np.asarray(values, dtype=np.float32)
    span = np.float32(y_max - y_min)
    if function == "LINEAR":
        if width < 1:
            raise InvalidDicomError(f"window width {width} < 1 is not allowed for LINEAR")
        if width == 1:  # (w-1) = 0: a threshold at c - 0.5
            return np.where(x > center - 0.5, np.float32(y_max), np.float32(y_min)).astype(
                np.float32
            )
        out = _affine(x, center - 0.5, 1.0 / (width - 1), inplace and x is values)
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise InvalidDicomError(f"window width {width} <= 0 is not allowed for LINEAR_EXACT")
        out = _affine(x, center, 1.0 / width, inplace and x is values)
    elif function == "SIGMOID":
        if width <= 0:
            raise InvalidDicomError(f"window width {width} <= 0 is not allowed for SIGMOID")
        with np.errstate(over="ignore"):  # exp -> inf far below the centre: y -> 0, as it should
            out = np.float32(1.0) / (
                np.float32(1.0) + np.exp(np.float32(-4.0 / width) * (x - np.float32(center)))
            )
        sig: npt.NDArray[np.float32] = np.asarray(out, dtype=np.float32)
        if span != 1 or y_min != 0:
            sig = (sig * span + np.float32(y_min)).astype(np.float32)
        return sig
    else:
        raise InvalidDicomError(f"unknown VOI LUT Function {function!r}")
    np.clip(out, 0.0, 1.0, out=out)
    if span != 1 or y_min != 0:
        out = out * span + np.float32(y_min)
    return out.astype(np.float32, copy=False)


def _affine(
    x: npt.NDArray[np.float32], offset: float, scale: float, inplace: bool
) -> npt.NDArray[np.float32]:
    """``(x - offset) * scale + 0.5`` in float32, reusing ``x`` when allowed."""
    out = x if inplace else np.empty_like(x)
    np.subtract(x, np.float32(offset), out=out)
    out *= np.float32(scale)
    out += np.float32(0.5)
    return out


def apply_voi_lut_table(values: npt.NDArray[Any], lut: LookupTable) -> npt.NDArray[np.float32]:
    """Map through a VOI LUT Sequence table and scale the output to [0, 1].

    PS3.3 C.11.2.1.1: the output range is 0 to 2^n - 1 with n the descriptor's
    bits per entry.
    """
    out = lut.apply(values)
    top = float(max(2**lut.bits - 1, 1))
    result: npt.NDArray[np.float32] = np.clip(out / np.float32(top), 0.0, 1.0).astype(np.float32)
    return result


__all__ = [
    "VOI_FUNCTIONS",
    "LookupTable",
    "apply_rescale",
    "apply_voi_lut_table",
    "lut_from_item",
    "window",
]
