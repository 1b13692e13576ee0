"""The ORU^R01 of a stored result, against the study's order where one is linked.

The export job calls :func:`result_message_for` on each attempt: it looks the
study's order up by accession number (linking the two when the patient IDs agree)
and builds the message. A study whose accession names another patient's order is not
reported by HL7 at all: the job fails for good (dead-lettered, visible), since an ORU
on that accession would file the result under the wrong patient's order.
"""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy.orm import Session

from overread.errors import ServiceError
from overread.results import ResultSummary, StudyHeader
from overread.service.config import Hl7Endpoint
from overread.service.db import Result
from overread.service.hl7.orders import OrderLink, link_study
from overread.service.hl7.oru import OrderReference, ResultMessage, build_result_message
from overread.service.verification import verification_of


class OrderMismatchError(ServiceError):
    """The study's accession number belongs to an order of another patient or study."""


def result_message_for(
    session: Session,
    result: Result,
    endpoint: Hl7Endpoint,
    *,
    control_id: str,
    sending_facility: str,
    critical: Mapping[str, float],
) -> tuple[ResultMessage, OrderLink]:
    """Link the result's study to its order (in ``session``) and build its ORU^R01.

    Raises
    ------
    OrderMismatchError
        If the order with the study's accession number names another patient.
    ServiceError
        If the result cannot be reported (no prediction, no patient ID).
    """
    study = ResultSummary.from_dict(result.summary).study or StudyHeader()
    link = link_study(
        session,
        study_instance_uid=str(result.study_instance_uid),
        accession_number=study.accession_number,
        patient_id=study.patient_id,
    )
    if link.refused:
        raise OrderMismatchError(f"not reported by HL7: {link.note}")
    reference = None
    if link.order is not None:
        reference = OrderReference(
            placer_order_number=link.order.placer_order_number,
            filler_order_number=link.order.filler_order_number,
            service_code=link.order.service_code,
        )
    message = build_result_message(
        result,
        control_id=control_id,
        order=reference,
        critical=critical,
        sending_facility=sending_facility,
        receiving_application=endpoint.receiving_application,
        receiving_facility=endpoint.receiving_facility,
        verification=verification_of(session, result.id),
    )
    return message, link


__all__ = ["OrderMismatchError", "result_message_for"]
