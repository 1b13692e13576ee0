"""Media types of DICOMweb answers: reading ``Accept``, writing ``multipart/related``.

WADO-RS answers with the representation the client accepts (PS3.18 §8.7): DICOM
instances as ``multipart/related; type="application/dicom"``, frames as
``multipart/related; type="application/octet-stream"``, metadata and search results
as ``application/dicom+json``, rendered frames as ``image/jpeg`` or ``image/png``.
:func:`choose` picks the first of those an ``Accept`` header allows (``None`` is the
HTTP 406); :func:`multipart_parts` streams the parts so a large study is never held
in memory.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"


class MediaType(enum.StrEnum):
    """The representations the DICOMweb routes produce."""

    DICOM = "application/dicom"
    OCTET_STREAM = "application/octet-stream"
    DICOM_JSON = "application/dicom+json"
    JPEG = "image/jpeg"
    PNG = "image/png"


@dataclass(frozen=True)
class AcceptedType:
    """One entry of an ``Accept`` header."""

    media_range: str
    parameters: dict[str, str] = field(default_factory=dict)
    quality: float = 1.0

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter, if given."""
        return self.parameters.get("transfer-syntax")


@dataclass(frozen=True)
class Choice:
    """What an answer will be: its media type and the transfer syntax asked for."""

    media_type: MediaType
    transfer_syntax: str | None = None
    """None or ``*``: as stored."""


def parse_accept(header: str | None) -> list[AcceptedType]:
    """The entries of an ``Accept`` header, best first (``q=0`` ones dropped)."""
    if header is None or not header.strip():
        return [AcceptedType("*/*")]
    entries: list[AcceptedType] = []
    for raw in _split_outside_quotes(header, ","):
        pieces = _split_outside_quotes(raw, ";")
        media_range = pieces[0].strip().lower()
        if not media_range:
            continue
        parameters: dict[str, str] = {}
        quality = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
            elif name:
                parameters[name] = value
        if quality > 0:
            entries.append(AcceptedType(media_range, parameters, quality))
    return sorted(entries, key=lambda e: -e.quality)  # stable: header order among equals


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def choose(header: str | None, produced: Iterable[MediaType], *, multipart: bool) -> Choice | None:
    """The first of ``produced`` (the route's, default first) that ``header`` accepts.

    With ``multipart`` the route answers ``multipart/related`` bodies whose parts are
    of the produced types: the header must accept ``multipart/related`` (with a
    ``type`` parameter naming the part type, or none for the default) or ``*/*``.
    """
    offered = list(produced)
    for entry in parse_accept(header):
        for media_type in offered:
            if multipart:
                if entry.media_range in ("*/*", "multipart/*"):
                    return Choice(offered[0], entry.transfer_syntax)
                if entry.media_range == "multipart/related":
                    part = entry.parameters.get("type", offered[0].value).lower()
                    if part == media_type.value or part in ("*/*", "application/*"):
                        return Choice(media_type, entry.transfer_syntax)
            else:
                top = media_type.value.split("/", 1)[0]
                if entry.media_range in ("*/*", f"{top}/*", media_type.value) or (
                    media_type is MediaType.DICOM_JSON and entry.media_range == "application/json"
                ):
                    return Choice(media_type, entry.transfer_syntax)
    return None


@dataclass(frozen=True)
class Part:
    """One part of a ``multipart/related`` answer; its bytes are read when sent."""

    content_type: str
    body: Callable[[], bytes]
    location: str = ""


def new_boundary() -> str:
    """A boundary no part contains (random; parts are DICOM and pixel bytes)."""
    return f"overread-{uuid.uuid4().hex}"


def multipart_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The ``Content-Type`` of the whole answer."""
    syntax = f"; transfer-syntax={transfer_syntax}" if transfer_syntax else ""
    return f'multipart/related; type="{part_type}"{syntax}; boundary={boundary}'


def multipart_parts(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The body of a ``multipart/related`` answer, one part at a time."""
    for part in parts:
        head = f"--{boundary}\r\nContent-Type: {part.content_type}\r\n"
        if part.location:
            head += f"Content-Location: {part.location}\r\n"
        yield (head + "\r\n").encode("ascii")
        yield part.body()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


__all__ = [
    "EXPLICIT_VR_LITTLE_ENDIAN",
    "IMPLICIT_VR_LITTLE_ENDIAN",
    "AcceptedType",
    "Choice",
    "MediaType",
    "Part",
    "choose",
    "multipart_parts",
    "multipart_type",
    "new_boundary",
    "parse_accept",
]
