"""Imaging orders received by HL7 v2: read them, keep them, and link them to studies.

A RIS announces each examination it schedules with an ORM^O01 (HL7 2.3-2.4, IHE
Scheduled Workflow) or an OMI^O23 (HL7 2.5 and later). The gateway keeps one row per
accession number (:class:`~overread.service.db.HL7Order`), so that the ORU^R01 it
sends for the study carries the order's placer and filler numbers and service.

Where the accession number is read from, first found wins: IPC-1 (OMI), OBR-18
(placer field 1, where IHE Scheduled Workflow's ORM puts it), ORC-3/OBR-3 (the filler
order number). The Study Instance UID, when the RIS assigned one, comes from IPC-3 or
ZDS-1.

A study and an order are linked only when the accession number *and* the patient ID
agree: a study whose accession names an order of another patient is flagged
(``mismatch``, audited) and never linked.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from overread.service.db import HL7Order, OrderMatch, utcnow
from overread.service.hl7.acks import ErrorCode
from overread.service.hl7.encoding import HL7MessageError, parse_received, unescape


class OrderMessageType(enum.StrEnum):
    """The order messages the gateway takes."""

    ORM_O01 = "ORM^O01"
    OMI_O23 = "OMI^O23"


class OrderControl(enum.StrEnum):
    """ORC-1 values acted on (HL7 table 0119); any other is kept as a new/changed order."""

    NEW = "NW"
    CANCEL = "CA"
    DISCONTINUE = "DC"


class OrderRefusedError(HL7MessageError):
    """A readable order message the gateway does not take; ``code`` says why."""

    def __init__(self, message: str, code: ErrorCode, *, reject: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.reject = reject


@dataclass(frozen=True)
class PlacedOrder:
    """What an order message says of the examination ordered."""

    message_type: OrderMessageType
    control_id: str
    sending_application: str
    sending_facility: str
    order_control: str
    accession_number: str
    patient_id: str
    issuer_of_patient_id: str
    patient_name: str
    placer_order_number: str
    filler_order_number: str
    service_code: str
    study_instance_uid: str

    @property
    def cancelled(self) -> bool:
        """Whether the message withdraws the order (ORC-1 ``CA`` or ``DC``)."""
        return self.order_control in (OrderControl.CANCEL, OrderControl.DISCONTINUE)


def _value(element: Any) -> str:
    """The first component of a field (its first repetition), unescaped."""
    if element is None:
        return ""
    try:
        text = str(element.to_er7())
    except (AttributeError, IndexError):
        return ""
    return unescape(text.split("~")[0].split("^")[0]).strip()


def _field(segment: Any, number: int) -> Any:
    name = f"{segment.name.lower()}_{number}"
    try:
        fields = segment.children.get(name)
    except Exception:
        return None
    return fields[0] if fields else None


def _raw(segment: Any, number: int) -> str:
    field = _field(segment, number)
    return "" if field is None else str(field.to_er7()).split("~")[0]


def read_order(er7: str) -> PlacedOrder:
    """Read an ORM^O01 or OMI^O23.

    Raises
    ------
    HL7MessageError
        If the text is no readable HL7 message (a segment the version does not
        define, no MSH).
    OrderRefusedError
        If it is another message type (``reject``: answered ``AR``), or lacks the
        patient ID or any accession number (answered ``AE``).
    """
    message = parse_received(er7)
    segments = list(message.children)
    msh = segments[0] if segments and segments[0].name == "MSH" else None
    if msh is None:
        raise HL7MessageError("the message does not start with MSH")
    type_parts = str(msh.msh_9.to_er7()).split("^")
    kind = "^".join(type_parts[:2])
    try:
        message_type = OrderMessageType(kind)
    except ValueError:
        raise OrderRefusedError(
            f"message type {kind or '(none)'} is not taken here (ORM^O01 or OMI^O23 only)",
            ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
            reject=True,
        ) from None
    first: dict[str, Any] = {}
    for seg in segments:
        first.setdefault(seg.name, seg)
    pid, orc, obr = first.get("PID"), first.get("ORC"), first.get("OBR")
    ipc, zds = first.get("IPC"), first.get("ZDS")
    if pid is None or obr is None:
        missing = " and ".join(n for n, s in (("PID", pid), ("OBR", obr)) if s is None)
        raise OrderRefusedError(f"the order has no {missing} segment", ErrorCode.SEGMENT_SEQUENCE)
    patient = _field(pid, 3)
    patient_id = _value(patient)
    issuer = ""
    if patient is not None:
        parts = str(patient.to_er7()).split("~")[0].split("^")
        issuer = unescape(parts[3].split("&")[0]) if len(parts) > 3 else ""
    filler = (_value(_field(orc, 3)) if orc is not None else "") or _value(_field(obr, 3))
    placer = (_value(_field(orc, 2)) if orc is not None else "") or _value(_field(obr, 2))
    accession = (
        (_value(_field(ipc, 1)) if ipc is not None else "") or _value(_field(obr, 18)) or filler
    )
    if not patient_id:
        raise OrderRefusedError(
            "the order has no patient ID (PID-3)", ErrorCode.REQUIRED_FIELD_MISSING
        )
    if not accession:
        raise OrderRefusedError(
            "the order has no accession number (IPC-1, OBR-18 or the filler order number)",
            ErrorCode.REQUIRED_FIELD_MISSING,
        )
    study_uid = (_value(_field(ipc, 3)) if ipc is not None else "") or (
        _value(_field(zds, 1)) if zds is not None else ""
    )
    return PlacedOrder(
        message_type=message_type,
        control_id=_value(msh.msh_10),
        sending_application=_value(msh.msh_3),
        sending_facility=_value(msh.msh_4),
        order_control=_value(_field(orc, 1)).upper() if orc is not None else "",
        accession_number=accession[:64],
        patient_id=patient_id[:64],
        issuer_of_patient_id=issuer[:64],
        patient_name=unescape(_raw(pid, 5))[:256],
        placer_order_number=placer[:64],
        filler_order_number=filler[:64],
        service_code=_raw(obr, 4)[:256],
        study_instance_uid=study_uid[:64],
    )


def store_order(session: Session, order: PlacedOrder) -> HL7Order:
    """Keep ``order`` (a new row, or the accession's row updated), in ``session``.

    A cancel marks the row ``cancelled``; a new or changed order of a cancelled or
    waiting row makes it ``waiting`` again. A row already linked to a study keeps its
    link unless the order now names another patient.
    """
    row = session.scalar(
        select(HL7Order).where(HL7Order.accession_number == order.accession_number)
    )
    if row is None:
        row = HL7Order(accession_number=order.accession_number, match_note="")
        session.add(row)
    patient_changed = row.patient_id is not None and row.patient_id != order.patient_id
    row.patient_id = order.patient_id
    row.issuer_of_patient_id = order.issuer_of_patient_id
    row.patient_name = order.patient_name
    row.placer_order_number = order.placer_order_number
    row.filler_order_number = order.filler_order_number
    row.order_control = order.order_control[:4]
    row.service_code = order.service_code
    row.message_type = order.message_type.value
    row.control_id = order.control_id[:199]
    row.sending_application = order.sending_application[:128]
    row.sending_facility = order.sending_facility[:128]
    row.received_at = utcnow()
    if order.cancelled:
        row.match = OrderMatch.CANCELLED.value
    elif row.match != OrderMatch.MATCHED.value or patient_changed:
        row.match = OrderMatch.WAITING.value
        row.study_instance_uid = order.study_instance_uid or None
        row.match_note = ""
        row.matched_at = None
    session.flush()
    return row


@dataclass(frozen=True)
class OrderLink:
    """The order a study's result is reported against, or why there is none."""

    order: HL7Order | None
    match: OrderMatch | None
    note: str = ""

    @property
    def refused(self) -> bool:
        """Whether the study must not be reported against its accession (another
        patient's order carries it)."""
        return self.match is OrderMatch.MISMATCH


def link_study(
    session: Session, *, study_instance_uid: str, accession_number: str, patient_id: str
) -> OrderLink:
    """Find the order of a study by accession number and link the two if the patient
    IDs agree (in ``session``).

    Returns no order when the study has no accession number or no order carries it,
    or the order was cancelled; a ``mismatch`` link (never the order) when
    the order names another patient, or was already linked to another study.
    """
    if not accession_number:
        return OrderLink(None, None)
    row = session.scalar(select(HL7Order).where(HL7Order.accession_number == accession_number))
    if row is None:
        return OrderLink(None, None)
    if row.match == OrderMatch.CANCELLED.value:
        return OrderLink(None, OrderMatch.CANCELLED, "the order was cancelled")
    note = ""
    if row.patient_id.strip() != patient_id.strip():
        note = (
            f"accession {accession_number}: the order names patient {row.patient_id!r}, "
            f"study {study_instance_uid} patient {patient_id!r}"
        )
    elif row.study_instance_uid and row.study_instance_uid != study_instance_uid:
        note = (
            f"accession {accession_number}: the order is for study {row.study_instance_uid}, "
            f"not {study_instance_uid}"
        )
    if note:
        if row.match != OrderMatch.MATCHED.value:
            row.match = OrderMatch.MISMATCH.value
            row.match_note = note
        return OrderLink(None, OrderMatch.MISMATCH, note)
    row.match = OrderMatch.MATCHED.value
    row.study_instance_uid = study_instance_uid
    row.match_note = ""
    if row.matched_at is None:
        row.matched_at = utcnow()
    return OrderLink(row, OrderMatch.MATCHED)


__all__ = [
    "OrderControl",
    "OrderLink",
    "OrderMessageType",
    "OrderRefusedError",
    "PlacedOrder",
    "link_study",
    "read_order",
    "store_order",
]
