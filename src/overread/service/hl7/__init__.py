"""HL7 v2 over MLLP: results out as ORU^R01, orders in as ORM^O01 / OMI^O23.

* :mod:`~overread.service.hl7.encoding` - ER7 text, validation by hl7apy, MLLP frames;
* :mod:`~overread.service.hl7.acks` - acknowledgements (AA/AE/AR), built and read;
* :mod:`~overread.service.hl7.oru` - a stored result as an ORU^R01;
* :mod:`~overread.service.hl7.orders` - orders read, kept and linked to studies;
* :mod:`~overread.service.hl7.reporting` - the ORU of a result against its order;
* :mod:`~overread.service.hl7.intake` - the listener's handler for orders;
* :mod:`~overread.service.hl7.mllp` - the MLLP client and listener.

The export job that sends each ORU is :class:`overread.service.exporters.Hl7Exporter`.
"""

from overread.service.hl7.acks import AckCode, Acknowledgement, ErrorCode, build_ack, read_ack
from overread.service.hl7.encoding import HL7MessageError, validated
from overread.service.hl7.intake import OrderIntake
from overread.service.hl7.mllp import AcknowledgementError, MllpListener, send_message
from overread.service.hl7.orders import PlacedOrder, link_study, read_order, store_order
from overread.service.hl7.oru import OrderReference, ResultMessage, build_result_message
from overread.service.hl7.reporting import OrderMismatchError, result_message_for

__all__ = [
    "AckCode",
    "Acknowledgement",
    "AcknowledgementError",
    "ErrorCode",
    "HL7MessageError",
    "MllpListener",
    "OrderIntake",
    "OrderMismatchError",
    "OrderReference",
    "PlacedOrder",
    "ResultMessage",
    "build_ack",
    "build_result_message",
    "link_study",
    "read_ack",
    "read_order",
    "result_message_for",
    "send_message",
    "store_order",
    "validated",
]
