"""Which decoders can decode what, and DCMTK as the decoder of last resort.

pydicom's decoders are plugins (pylibjpeg, pyjpegls, Pillow) that each say
whether they are installed; :func:`codec_availability` reports them so an
operator sees at once why a transfer syntax is refused. When every plugin
fails on a stream and DCMTK's command-line tools are installed,
:func:`decode_with_dcmtk` decompresses the file with them instead.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy.typing as npt
import pydicom
from pydicom.pixels.decoders.base import get_decoder
from pydicom.uid import UID

from overread.errors import InvalidDicomError, UnsupportedTransferSyntaxError
from overread.imaging.header import is_part10, one_line


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


def require_decoder(tsuid: UID, path: Path | str) -> None:
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


__all__ = [
    "DCMTK_DECODERS",
    "codec_availability",
    "decode_with_dcmtk",
    "require_decoder",
]
