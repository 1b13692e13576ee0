"""MLLP on loopback: sending to hl7apy's MLLP server, and the gateway's order listener
taking a stream of good and bad messages, answering each and carrying on."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from overread.audit.schema import AuditEvent
from overread.service.db import Database, HL7Order, OrderMatch
from overread.service.hl7 import (
    AckCode,
    AcknowledgementError,
    ErrorCode,
    MllpListener,
    OrderIntake,
    link_study,
    read_ack,
    send_message,
)
from overread.service.hl7.encoding import FrameReader, frame

from .conftest import RisPeer
from .test_messages import OMI, ORM

ORU = "MSH|^~\\&|OVERREAD|SITE|RIS|HOSP|20261205010000||ORU^R01^ORU_R01|C1|P|2.5\rPID|1||P||N\r"

pytestmark = pytest.mark.service


def test_accepted_message_returns_its_ack(ris: RisPeer) -> None:
    ack = send_message("127.0.0.1", ris.port, ORU, "C1", timeout=10)
    assert ack.accepted and ack.control_id == "C1"
    assert ris.received == [ORU]


def test_error_answer_raises_with_the_ack(ris: RisPeer) -> None:
    ris.codes = ["AE", "AR"]
    for code in ("AE", "AR"):
        with pytest.raises(AcknowledgementError, match=f"answered {code}") as failed:
            send_message("127.0.0.1", ris.port, ORU, "C1", timeout=10)
        assert failed.value.ack is not None and failed.value.ack.code.value == code
    assert send_message("127.0.0.1", ris.port, ORU, "C1", timeout=10).accepted
    assert len(ris.received) == 3


def test_ack_of_another_message_is_no_delivery(ris: RisPeer) -> None:
    with pytest.raises(AcknowledgementError, match="acknowledged message 'C1', not 'C2'"):
        send_message("127.0.0.1", ris.port, ORU, "C2", timeout=10)


def test_silent_peer_times_out() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        with pytest.raises(AcknowledgementError, match="no acknowledgement"):
            send_message("127.0.0.1", port, ORU, "C1", timeout=0.5)


def test_unreachable_peer_raises_oserror() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(OSError):
        send_message("127.0.0.1", port, ORU, "C1", timeout=5)


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """The gateway's database: SQLite, and PostgreSQL where it runs."""
    db = Database(database_url)
    yield db
    db.dispose()


@pytest.fixture
def listener(database: Database) -> Iterator[MllpListener]:
    server = MllpListener("127.0.0.1", 0, OrderIntake(database))
    server.start()
    yield server
    server.stop()


def _exchange(port: int, messages: list[str]) -> list[str]:
    """Send every message on one connection, then read one answer per message."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"".join(frame(m) for m in messages))
        reader = FrameReader(sock)
        answers = []
        for _ in messages:
            content = reader.read()
            assert content is not None
            answers.append(content.decode())
        return answers


def test_listener_answers_every_message_of_a_stream(
    listener: MllpListener, database: Database
) -> None:
    unknown_segment = ORM.replace("PV1|1|O", "FOO|1|O").replace("MSG1", "MSG3")
    adt = ORM.replace("ORM^O01", "ADT^A01").replace("MSG1", "MSG4")
    no_accession = OMI.replace("IPC|ACC2", "IPC|").replace("|FL2", "|").replace("MSG2", "MSG5")
    stream = [ORM, "\x00garbage\r", unknown_segment, adt, no_accession, OMI]
    acks = [read_ack(a) for a in _exchange(listener.port, stream)]
    assert [(a.code, a.control_id) for a in acks] == [
        (AckCode.ACCEPT, "MSG1"),
        (AckCode.REJECT, '""'),
        (AckCode.ERROR, "MSG3"),
        (AckCode.REJECT, "MSG4"),
        (AckCode.ERROR, "MSG5"),
        (AckCode.ACCEPT, "MSG2"),
    ]
    assert [a.error for a in acks[1:5]] == [
        ErrorCode.SEGMENT_SEQUENCE,
        ErrorCode.SEGMENT_SEQUENCE,
        ErrorCode.UNSUPPORTED_MESSAGE_TYPE,
        ErrorCode.REQUIRED_FIELD_MISSING,
    ]
    with database.session() as session:
        orders = {o.accession_number: o for o in session.scalars(select(HL7Order))}
        events = session.scalars(select(AuditEvent).order_by(AuditEvent.seq)).all()
        assert sorted(orders) == ["ACC1", "ACC2"]
        assert orders["ACC1"].placer_order_number == "PL1"
        assert orders["ACC1"].match == OrderMatch.WAITING
        assert [e.action for e in events] == [
            "receive",
            "receive-refused",
            "receive-refused",
            "receive-refused",
            "receive-refused",
            "receive",
        ]
        assert events[3].details["ack"] == "AR" and events[0].actor == "hl7:RIS"


def test_parallel_connections_are_served(listener: MllpListener, database: Database) -> None:
    answers: list[str] = []

    def send(n: int) -> None:
        message = ORM.replace("ACC1", f"ACCP{n}").replace("MSG1", f"P{n}")
        answers.extend(_exchange(listener.port, [message]))

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(read_ack(a).control_id for a in answers) == ["P0", "P1", "P2", "P3"]
    assert all(read_ack(a).accepted for a in answers)


def test_orders_link_only_to_the_same_patient(listener: MllpListener, database: Database) -> None:
    cancel = ORM.replace("ORC|NW", "ORC|CA").replace("ACC1", "ACC9").replace("MSG1", "MSG9")
    _exchange(listener.port, [ORM, OMI, ORM.replace("ACC1", "ACC9"), cancel])
    with database.session() as session:
        wrong = link_study(
            session, study_instance_uid="1.2.3.4", accession_number="ACC1", patient_id="OTHER"
        )
        assert wrong.refused and wrong.order is None and "PAT-7" in wrong.note
        cancelled = link_study(
            session, study_instance_uid="9.9", accession_number="ACC9", patient_id="PAT-7"
        )
        assert cancelled.order is None and cancelled.match is OrderMatch.CANCELLED
        none = link_study(session, study_instance_uid="9.9", accession_number="", patient_id="x")
        assert none.order is None and none.match is None
        # The ORM named study 1.2.3.4 (ZDS-1): another study with its accession is refused.
        other_study = link_study(
            session, study_instance_uid="5.5", accession_number="ACC1", patient_id="PAT-7"
        )
        assert other_study.refused
        right = link_study(
            session, study_instance_uid="1.2.3.4", accession_number="ACC1", patient_id="PAT-7"
        )
        assert right.order is not None and right.match is OrderMatch.MATCHED
    with database.session() as session:
        row = session.scalar(select(HL7Order).where(HL7Order.accession_number == "ACC1"))
        assert row is not None and row.match == OrderMatch.MATCHED
        assert row.study_instance_uid == "1.2.3.4" and row.matched_at is not None
