"""Order intake: the HL7 listener's handler for ORM^O01 / OMI^O23 messages.

Each message is read, kept (:func:`~overread.service.hl7.orders.store_order`) and
audited in one transaction, and only then answered ``AA``, as the DICOM listener
answers a C-STORE only once the object is safe. Anything else is answered without
storing:

* text that is no HL7 message (no MSH) -> ``AR`` (error 100);
* a segment the message's version does not define (Z-segments are fine) -> ``AE``
  (error 100); a field the parser cannot read -> ``AE`` (error 102);
* another message type -> ``AR`` (error 200);
* an order without patient ID or accession number -> ``AE`` (error 101);
* a failure to store -> ``AE`` (error 207): the sender keeps the order and resends.

Every refusal is audited (``receive-refused``) with the reason.
"""

from __future__ import annotations

import logging
from typing import Any

from overread.audit import AuditAction, record_event
from overread.service.db import Database
from overread.service.hl7.acks import AckCode, ErrorCode, build_ack, header_of
from overread.service.hl7.encoding import HL7MessageError, UnknownSegmentError
from overread.service.hl7.orders import OrderRefusedError, read_order, store_order

logger = logging.getLogger(__name__)


class OrderIntake:
    """Answers each received HL7 message; keeps the orders among them."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def __call__(self, text: str, peer_host: str) -> str:
        """Handle one message's text from ``peer_host``; return the ACK to send back."""
        header = header_of(text)
        actor = f"hl7:{header.sending_application or 'unknown'}"
        details: dict[str, Any] = {
            "protocol": "hl7",
            "peer_host": peer_host,
            "control_id": header.control_id,
        }
        try:
            order = read_order(text)
        except OrderRefusedError as exc:
            code = AckCode.REJECT if exc.reject else AckCode.ERROR
            return self._refuse(header, code, exc.code, str(exc), actor, details)
        except UnknownSegmentError as exc:
            return self._refuse(
                header, AckCode.ERROR, ErrorCode.SEGMENT_SEQUENCE, str(exc), actor, details
            )
        except HL7MessageError as exc:
            if not text.lstrip().startswith("MSH"):
                return self._refuse(
                    header, AckCode.REJECT, ErrorCode.SEGMENT_SEQUENCE, str(exc), actor, details
                )
            return self._refuse(
                header, AckCode.ERROR, ErrorCode.DATA_TYPE, str(exc), actor, details
            )
        details.update(
            message_type=order.message_type.value,
            order_control=order.order_control,
            accession_number=order.accession_number,
        )
        try:
            with self.database.session() as session:
                row = store_order(session, order)
                details["order_id"] = row.id
                details["match"] = row.match
                record_event(
                    session,
                    actor=actor,
                    role="ris",
                    action=AuditAction.RECEIVE,
                    object_uids=[u for u in (order.study_instance_uid,) if u],
                    details=details,
                )
        except Exception as exc:
            logger.exception("HL7 order %s not stored", order.accession_number)
            return self._refuse(
                header,
                AckCode.ERROR,
                ErrorCode.INTERNAL_ERROR,
                f"the order could not be stored: {type(exc).__name__}",
                actor,
                details,
            )
        logger.info(
            "HL7 %s %s for accession %s from %s",
            order.message_type.value,
            order.order_control or "-",
            order.accession_number,
            peer_host,
        )
        return build_ack(header, AckCode.ACCEPT)

    def _refuse(
        self,
        header: Any,
        code: AckCode,
        error: ErrorCode,
        reason: str,
        actor: str,
        details: dict[str, Any],
    ) -> str:
        logger.warning("HL7 message %r refused (%s): %s", header.control_id, code.value, reason)
        try:
            with self.database.session() as session:
                record_event(
                    session,
                    actor=actor,
                    role="ris",
                    action=AuditAction.RECEIVE_REFUSED,
                    details={
                        **details,
                        "ack": code.value,
                        "error": int(error),
                        "reason": reason[:500],
                    },
                )
        except Exception:
            logger.exception("refusal of HL7 message %r not audited", header.control_id)
        return build_ack(header, code, reason, error)


__all__ = ["OrderIntake"]
