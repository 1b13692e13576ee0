"""HL7 v2 acknowledgements (original mode): building the answer to a received
message and reading the answer to a sent one.

``AA`` means the receiver took the message and will act on it; ``AE`` that it found
an error in it (a required field missing, a value it cannot use); ``AR`` that it
refused it without looking (message type, version or processing ID it does not
support, or text it cannot parse). Error codes are HL7 table 0357's.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass

from overread.service.hl7.encoding import (
    HL7MessageError,
    components,
    escape,
    join_segments,
    message_header,
    segment,
    unescape,
    validated,
)


class AckCode(enum.StrEnum):
    """MSA-1, original acknowledgement mode (HL7 table 0008)."""

    ACCEPT = "AA"
    ERROR = "AE"
    REJECT = "AR"


class ErrorCode(enum.IntEnum):
    """Why a message was not accepted (HL7 table 0357)."""

    SEGMENT_SEQUENCE = 100
    REQUIRED_FIELD_MISSING = 101
    DATA_TYPE = 102
    UNSUPPORTED_MESSAGE_TYPE = 200
    UNSUPPORTED_EVENT = 201
    UNSUPPORTED_VERSION = 203
    UNKNOWN_KEY = 204
    INTERNAL_ERROR = 207


_ERROR_TEXT = {
    ErrorCode.SEGMENT_SEQUENCE: "Segment sequence error",
    ErrorCode.REQUIRED_FIELD_MISSING: "Required field missing",
    ErrorCode.DATA_TYPE: "Data type error",
    ErrorCode.UNSUPPORTED_MESSAGE_TYPE: "Unsupported message type",
    ErrorCode.UNSUPPORTED_EVENT: "Unsupported event code",
    ErrorCode.UNSUPPORTED_VERSION: "Unsupported version id",
    ErrorCode.UNKNOWN_KEY: "Unknown key identifier",
    ErrorCode.INTERNAL_ERROR: "Application internal error",
}


@dataclass(frozen=True)
class ReceivedHeader:
    """What an answer needs of the message it answers (from its MSH)."""

    control_id: str = ""
    sending_application: str = ""
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""
    trigger_event: str = ""


@dataclass(frozen=True)
class Acknowledgement:
    """An answer: its code, the control ID it answers, and any error."""

    code: AckCode
    control_id: str
    text: str = ""
    error: ErrorCode | None = None

    @property
    def accepted(self) -> bool:
        """Whether the receiver took the message (``AA``)."""
        return self.code is AckCode.ACCEPT


def header_of(er7: str) -> ReceivedHeader:
    """The MSH facts of a received message, read from the raw text so that even a
    message the parser refuses gets an answer naming its control ID."""
    first = er7.lstrip().split("\r", 1)[0].split("\n", 1)[0]
    if not first.startswith("MSH") or len(first) < 4:
        return ReceivedHeader()
    fields = first.split(first[3])
    # fields[0] is "MSH", fields[1] the encoding characters: MSH-n is fields[n - 1].

    def field(n: int) -> str:
        return unescape(fields[n - 1].split("^")[0]) if len(fields) >= n else ""

    message_type = fields[8].split("^") if len(fields) >= 9 else []
    return ReceivedHeader(
        control_id=field(10)[:199],
        sending_application=field(3),
        sending_facility=field(4),
        receiving_application=field(5),
        receiving_facility=field(6),
        trigger_event=message_type[1][:3] if len(message_type) > 1 else "",
    )


def build_ack(
    received: ReceivedHeader, code: AckCode, text: str = "", error: ErrorCode | None = None
) -> str:
    """The ACK answering ``received`` (version 2.5, validated before it is returned).

    The answer goes back to the sender (MSH-5/6 are the received MSH-3/4) from the
    application it was addressed to; an ``AE``/``AR`` carries an ERR segment with the
    table 0357 code and the reason in ERR-8.
    """
    if code is not AckCode.ACCEPT and error is None:
        error = ErrorCode.INTERNAL_ERROR
    trigger = received.trigger_event if received.trigger_event.isalnum() else ""
    segments = [
        message_header(
            sending_application=received.receiving_application or "OVERREAD",
            sending_facility=received.receiving_facility,
            receiving_application=received.sending_application,
            receiving_facility=received.sending_facility,
            message_type=f"ACK^{trigger}^ACK" if trigger else "ACK^^ACK",
            control_id=f"A{uuid.uuid4().hex[:19]}",
        ),
        # MSA-2 is required: an explicit null ("") when the control ID could not be read.
        segment("MSA", [code.value, escape(received.control_id) or '""', escape(text[:80])]),
    ]
    if error is not None:
        segments.append(
            segment(
                "ERR",
                [
                    "",
                    "",
                    components(int(error), _ERROR_TEXT[error], "HL70357"),
                    "E",
                    "",
                    "",
                    "",
                    escape(text[:250]),
                ],
            )
        )
    er7 = join_segments(segments)
    validated(er7)
    return er7


def read_ack(er7: str) -> Acknowledgement:
    """Read the answer to a sent message.

    Raises
    ------
    HL7MessageError
        If the answer is not an HL7 message with an MSA segment whose code is one of
        ``AA``/``AE``/``AR`` (or the enhanced-mode ``CA``/``CE``/``CR``, read as these).
    """
    from overread.service.hl7.encoding import parse_received

    message = parse_received(er7)
    msa = next((s for s in message.children if s.name == "MSA"), None)
    if msa is None:
        raise HL7MessageError("the answer has no MSA segment")
    raw = msa.msa_1.to_er7().strip().upper()
    try:
        code = AckCode(raw.replace("C", "A", 1) if raw.startswith("C") else raw)
    except ValueError:
        raise HL7MessageError(f"the answer's MSA-1 {raw!r} is no acknowledgement code") from None
    error: ErrorCode | None = None
    err = next((s for s in message.children if s.name == "ERR"), None)
    if err is not None:
        first = err.to_er7().split("|")
        if len(first) > 3:
            number = first[3].split("^")[0]
            if number.isdigit() and int(number) in set(ErrorCode):
                error = ErrorCode(int(number))
    return Acknowledgement(
        code=code,
        control_id=unescape(msa.msa_2.to_er7()),
        text=unescape(msa.msa_3.to_er7()) if code is not AckCode.ACCEPT else "",
        error=error,
    )


__all__ = [
    "AckCode",
    "Acknowledgement",
    "ErrorCode",
    "ReceivedHeader",
    "build_ack",
    "header_of",
    "read_ack",
]
