"""HL7 v2 encoding: ER7 text (escaping, segments, timestamps), validation by the
parser, and MLLP framing.

Every message the gateway builds is assembled here from escaped field values and then
parsed back with hl7apy at its strictest (:func:`validated`): a message the parser
rejects is never sent. Received text is parsed with hl7apy too; field values are read
with :func:`unescape` so ``Smith\\T\\Jones`` reads as ``Smith&Jones``.

MLLP (HL7 v2 Minimal Lower Layer Protocol, release 2) frames each message as
``<VT> message <FS><CR>``; :class:`FrameReader` takes frames off a byte stream one at
a time, so one bad frame never ends the stream.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.exceptions import HL7apyException, InvalidName
from hl7apy.parser import parse_message

from overread.errors import ServiceError

#: The HL7 version of every message built here.
HL7_VERSION = "2.5"
#: MSH-1 and MSH-2: the field separator and the encoding characters.
FIELD_SEPARATOR = "|"
ENCODING_CHARACTERS = "^~\\&"
#: Segments end with a carriage return.
SEGMENT_TERMINATOR = "\r"

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"

#: The largest frame accepted (a runaway sender cannot exhaust memory).
MAX_FRAME_BYTES = 1024 * 1024

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))
_UNESCAPE = re.compile(r"\\([EFSTR])\\")
_UNESCAPED = {"E": "\\", "F": "|", "S": "^", "T": "&", "R": "~"}


class HL7MessageError(ServiceError, ValueError):
    """A message that is not valid HL7 v2 (built here or received)."""


class UnknownSegmentError(HL7MessageError):
    """A received message with a segment its version does not define (not a Z-segment)."""


def escape(value: object) -> str:
    """``value`` as text safe inside one component (delimiters escaped, line breaks
    as ``\\.br\\``; other control characters dropped)."""
    text = str(value)
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    text = text.replace("\r\n", "\\.br\\").replace("\n", "\\.br\\").replace("\r", "\\.br\\")
    return "".join(c for c in text if c >= " " or c == "\t")


def unescape(value: str) -> str:
    """Read an escaped value back (``\\T\\`` is ``&``, ``\\.br\\`` a line break)."""
    return _UNESCAPE.sub(lambda m: _UNESCAPED[m.group(1)], value.replace("\\.br\\", "\n"))


def components(*values: object) -> str:
    """One field of several components, each escaped (trailing empty ones dropped)."""
    return "^".join(escape(v) for v in values).rstrip("^")


def segment(name: str, fields: Sequence[str]) -> str:
    """One segment: ``name`` and its already-encoded fields (trailing empty ones dropped)."""
    items = list(fields)
    while items and not items[-1]:
        items.pop()
    return FIELD_SEPARATOR.join([name, *items])


def message_header(
    *,
    sending_application: str,
    sending_facility: str,
    receiving_application: str,
    receiving_facility: str,
    message_type: str,
    control_id: str,
    when: datetime | None = None,
) -> str:
    """The MSH segment (version 2.5, processing ID ``P``, original acknowledgement mode).

    ``message_type`` is already encoded (``ORU^R01^ORU_R01``).
    """
    fields = [
        escape(sending_application),
        escape(sending_facility),
        escape(receiving_application),
        escape(receiving_facility),
        timestamp(when or datetime.now(UTC)),
        "",
        message_type,
        escape(control_id),
        "P",
        HL7_VERSION,
    ]
    return f"MSH{FIELD_SEPARATOR}{ENCODING_CHARACTERS}{FIELD_SEPARATOR}" + segment("", fields)[1:]


def timestamp(when: datetime) -> str:
    """An HL7 DTM to the second, in UTC with its offset (``20261205013000+0000``)."""
    return when.astimezone(UTC).strftime("%Y%m%d%H%M%S+0000")


def hl7_date(dicom_date: str) -> str:
    """A DICOM DA (``YYYYMMDD``) as an HL7 date, or ``""`` when it is not one."""
    return dicom_date if len(dicom_date) == 8 and dicom_date.isdigit() else ""


def join_segments(segments: Sequence[str]) -> str:
    """The message text: segments each ended by a carriage return."""
    return "".join(s + SEGMENT_TERMINATOR for s in segments)


def validated(er7: str) -> Any:
    """Parse a message built here at hl7apy's strict level and validate its structure.

    Returns the parsed hl7apy ``Message``.

    Raises
    ------
    HL7MessageError
        If the parser refuses the text or the message breaks its structure (a required
        segment or field missing, a value of the wrong type).
    """
    try:
        message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        message.validate()
    except (HL7apyException, ValueError, TypeError) as exc:
        raise HL7MessageError(f"HL7 message fails validation: {exc}") from None
    return message


def parse_received(er7: str) -> Any:
    """Parse a received message tolerantly, segment by segment (no grouping).

    Raises
    ------
    HL7MessageError
        If the text has no readable MSH or a segment the message's version does not
        define (Z-segments are accepted).
    """
    if not er7.lstrip().startswith("MSH"):
        raise HL7MessageError("not an HL7 v2 message: it does not start with MSH")
    try:
        return parse_message(er7, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    except InvalidName as exc:
        raise UnknownSegmentError(f"unknown segment: {exc}") from None
    except (HL7apyException, ValueError, TypeError, IndexError, KeyError) as exc:
        raise HL7MessageError(f"not a readable HL7 v2 message: {exc}") from None


def frame(er7: str) -> bytes:
    """The message in an MLLP frame."""
    return START_BLOCK + er7.encode("utf-8") + END_BLOCK + CARRIAGE_RETURN


class FrameReader:
    """Reads MLLP frames off a connected socket, one message at a time.

    Bytes before a start block are skipped; a frame longer than
    :data:`MAX_FRAME_BYTES` ends the connection (raises).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    def read(self) -> bytes | None:
        """The next frame's content (without the framing); ``None`` at end of stream."""
        while True:
            start = self._buffer.find(START_BLOCK)
            if start >= 0:
                end = self._buffer.find(END_BLOCK + CARRIAGE_RETURN, start)
                if end >= 0:
                    content = self._buffer[start + 1 : end]
                    self._buffer = self._buffer[end + 2 :]
                    return content
                self._buffer = self._buffer[start:]
            else:
                self._buffer = b""
            if len(self._buffer) > MAX_FRAME_BYTES:
                raise HL7MessageError(f"MLLP frame longer than {MAX_FRAME_BYTES} bytes")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self._buffer += chunk


__all__ = [
    "HL7_VERSION",
    "MAX_FRAME_BYTES",
    "FrameReader",
    "HL7MessageError",
    "UnknownSegmentError",
    "components",
    "escape",
    "frame",
    "hl7_date",
    "join_segments",
    "message_header",
    "parse_received",
    "segment",
    "timestamp",
    "unescape",
    "validated",
]
