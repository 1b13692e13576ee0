"""HL7 through the running gateway: an order arrives by HL7 (ORM^O01 to the MLLP
listener), the study by C-STORE, and the ORU^R01 goes out by MLLP to a RIS (hl7apy's
MLLP server) with the same accession number, retried until the RIS answers ``AA``."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from sqlalchemy import select

from overread.audit.schema import AuditEvent
from overread.harness import storescu
from overread.service.db import HL7Order, Job, OrderMatch
from overread.service.hl7 import read_ack
from overread.service.hl7.encoding import FrameReader, frame, unescape

from ..conftest import make_dx, needs_dcmtk, wait_until
from .conftest import RisPeer
from .test_messages import ORM

pytestmark = [pytest.mark.service, pytest.mark.slow, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")

#: The service tests' patient (make_dx): SVC001, accession ACC1.
ORDER = ORM.replace("PAT-7", "SVC001").replace("ZDS|1.2.3.4^100^Application^DICOM\r", "")


def _order(port: int, text: str) -> Any:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(frame(text))
        answer = FrameReader(sock).read()
    assert answer is not None
    return read_ack(answer.decode())


def _hl7_job(service: Any) -> Job | None:
    with service.database.session() as session:
        return session.scalar(select(Job).where(Job.destination.like("hl7:%")))


def _hl7_audits(service: Any) -> list[dict[str, Any]]:
    with service.database.session() as session:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "export").order_by(AuditEvent.seq)
        ).all()
        return [
            r.details
            for r in rows
            if r.details.get("destination_kind") == "hl7" and r.details["outcome"] != "sending"
        ]


def test_order_then_study_then_result_with_the_same_accession(
    start_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    ris = RisPeer(codes=["AE"])  # the first delivery is refused: retried
    try:
        service = start_gateway(
            hl7_listen_port=0, hl7_listen_host="127.0.0.1", hl7_endpoints=[f"ris={ris.address}"]
        )
        assert service.hl7_port is not None
        assert _order(service.hl7_port, ORDER).accepted

        storescu(service.dicom_port, [make_dx(tmp_path / "dx.dcm", size=256)])
        wait_until(lambda: (j := _hl7_job(service)) is not None and j.state == "succeeded")
        job = _hl7_job(service)
        assert job is not None and job.attempts == 2 and job.destination == "hl7:ris"
        assert ris.answered == ["AE", "AA"]

        # What the RIS got parses at hl7apy's strict level and names the order.
        message = parse_message(
            ris.received[-1], validation_level=VALIDATION_LEVEL.STRICT, find_groups=True
        )
        message.validate()
        result = message.oru_r01_patient_result
        assert result.oru_r01_patient.pid.pid_3.to_er7().split("^")[0] == "SVC001"
        obr = result.oru_r01_order_observation.obr
        assert unescape(obr.obr_18.to_er7()) == "ACC1"
        assert obr.obr_2.to_er7() == "PL1" and obr.obr_3.to_er7() == "FL1"
        assert obr.obr_4.to_er7() == "36643-5^XR Chest 2V^LN" and obr.obr_25.to_er7() == "P"
        observations = [o.obx for o in result.oru_r01_order_observation.oru_r01_observation]
        assert {o.obx_11.to_er7() for o in observations} == {"P"}
        # 14 findings, each a decision, a probability and a threshold at least.
        assert len({o.obx_4.to_er7() for o in observations} - {""}) == 14

        audits = _hl7_audits(service)
        assert [(a["outcome"], a["ack"]) for a in audits] == [("failed", "AE"), ("stored", "AA")]
        assert all(a["accession_number"] == "ACC1" for a in audits)
        assert audits[-1]["order_match"] == "matched"
        with service.database.session() as session:
            order = session.scalar(select(HL7Order))
            assert order is not None and order.match == OrderMatch.MATCHED
            assert order.study_instance_uid == job.study_instance_uid
    finally:
        ris.close()


def test_order_of_another_patient_is_never_linked_nor_reported(
    start_gateway: Callable[..., Any], tmp_path: Path
) -> None:
    ris = RisPeer()
    try:
        service = start_gateway(
            hl7_listen_port=0, hl7_listen_host="127.0.0.1", hl7_endpoints=[ris.address]
        )
        # The order for accession ACC1 names patient PAT-7; the study is SVC001's.
        assert _order(
            service.hl7_port, ORM.replace("ZDS|1.2.3.4^100^Application^DICOM\r", "")
        ).accepted
        storescu(service.dicom_port, [make_dx(tmp_path / "dx.dcm", size=256)])
        wait_until(lambda: (j := _hl7_job(service)) is not None and j.state == "dead_lettered")
        assert ris.received == []
        with service.database.session() as session:
            order = session.scalar(select(HL7Order))
            assert order is not None and order.match == OrderMatch.MISMATCH
            assert order.study_instance_uid is None and "PAT-7" in order.match_note
        [audit] = _hl7_audits(service)
        assert audit["outcome"] == "failed" and "PAT-7" in audit["error"]
    finally:
        ris.close()
