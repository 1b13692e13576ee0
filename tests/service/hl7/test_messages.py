"""HL7 v2 messages: the ORU^R01 of a result, order messages read, ACKs built and read.

Every message is checked by parsing it back with hl7apy at its strict level (and by
reading fields out of the parsed message, not out of the text the test built)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from overread.errors import ServiceError
from overread.results import (
    Decision,
    FindingResult,
    ModelRef,
    Prediction,
    ResultSummary,
    StudyHeader,
)
from overread.service.hl7 import (
    AckCode,
    ErrorCode,
    HL7MessageError,
    OrderReference,
    build_ack,
    build_result_message,
    read_ack,
    read_order,
)
from overread.service.hl7.acks import ReceivedHeader, header_of
from overread.service.hl7.encoding import escape, unescape
from overread.service.hl7.orders import OrderMessageType, OrderRefusedError

CRITICAL = {"Pneumothorax": 0.5}


def _result(findings: list[FindingResult], **study: str) -> Any:
    header = {
        "study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
        "patient_id": "PAT-7",
        "patient_name": "Doe^Jane^Q^Dr",
        "issuer_of_patient_id": "HOSP",
        "study_date": "20261201",
        "accession_number": "ACC|42",
    }
    header.update(study)
    prediction = Prediction(
        path="a.dcm", ok=True, model=ModelRef("cxr-default", "1.1.0"), findings=findings
    )
    summary = ResultSummary(
        alias="cxr-default",
        instances=(prediction,),
        sop_instance_uids=("1.2.3",),
        study=StudyHeader(**header),
    )
    return SimpleNamespace(
        id=7,
        study_instance_uid=header["study_instance_uid"],
        model_name="cxr-default",
        model_version="1.1.0",
        summary=summary.to_dict(),
        artifacts=[],
    )


FINDINGS = [
    FindingResult("Pneumothorax", 0.91, True, 0.2, 0.5, trust_score=0.8),
    FindingResult("Cardiomegaly", 0.10, False, 0.3, 0.4),
    FindingResult("Edema", 0.51, True, 0.97, 0.5, Decision.INDETERMINATE),
]


def _strict(er7: str) -> Any:
    message = parse_message(er7, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    message.validate()
    return message


def _obx_groups(message: Any) -> dict[str, list[Any]]:
    result = message.oru_r01_patient_result.oru_r01_order_observation
    groups: dict[str, list[Any]] = {}
    for observation in result.oru_r01_observation:
        obx = observation.obx
        groups.setdefault(obx.obx_4.to_er7(), []).append(obx)
    return groups


def test_result_message_names_patient_accession_and_every_finding() -> None:
    built = build_result_message(
        _result(FINDINGS),
        control_id="OR1.1",
        critical=CRITICAL,
        sending_facility="OVERREAD",
        receiving_application="RIS",
        receiving_facility="NORTH",
    )
    message = _strict(built.er7)
    assert message.msh.msh_9.to_er7() == "ORU^R01^ORU_R01"
    assert message.msh.msh_10.to_er7() == "OR1.1" == built.control_id
    assert message.msh.msh_5.to_er7() == "RIS" and message.msh.msh_12.to_er7() == "2.5"
    patient = message.oru_r01_patient_result.oru_r01_patient.pid
    assert patient.pid_3.to_er7() == "PAT-7^^^HOSP"
    # DICOM PN family^given^middle^prefix -> XPN family^given^middle^suffix^prefix.
    assert patient.pid_5.to_er7() == "Doe^Jane^Q^^Dr"
    order = message.oru_r01_patient_result.oru_r01_order_observation
    # The accession number (escaped: it holds a field separator) in OBR-18 and OBR-3.
    assert unescape(order.obr.obr_18.to_er7()) == "ACC|42" == built.accession_number
    assert unescape(order.obr.obr_3.to_er7()) == "ACC|42"
    assert unescape(order.orc.orc_3.to_er7()) == "ACC|42"
    assert order.obr.obr_25.to_er7() == "P"  # preliminary: never verified by the AI
    assert order.obr.obr_7.to_er7() == "20261201"

    groups = _obx_groups(message)
    summary = groups.pop("")
    assert {obx.obx_2.to_er7() for obx in summary} == {"TX"}
    text = " ".join(unescape(obx.obx_5.to_er7()) for obx in summary)
    assert "possible pneumothorax" in text and "not for diagnosis" in text
    assert sorted(groups) == ["1", "2", "3"]
    every = [obx for group in groups.values() for obx in group] + summary
    assert {obx.obx_11.to_er7() for obx in every} == {"P"}
    assert [
        int(obx.obx_1.to_er7()) for obx in sorted(every, key=lambda o: int(o.obx_1.to_er7()))
    ] == list(range(1, len(every) + 1))
    by_label = {g[0].obx_3.to_er7().split("^")[1]: g for g in groups.values()}
    pneumothorax = by_label["Pneumothorax"]
    assert pneumothorax[0].obx_3.to_er7() == "36118008^Pneumothorax^SCT"
    assert pneumothorax[0].obx_5.to_er7().split("^")[:2] == ["52101004", "Present"]
    assert pneumothorax[0].obx_8.to_er7() == "AA"  # critical: over its alert threshold
    values = {o.obx_3.to_er7().split("^")[0]: o.obx_5.to_er7() for o in pneumothorax[1:]}
    assert values == {
        "122157": "0.9100",
        "OPTHRESHOLD": "0.5000",
        "THRPROXIMITY": "0.2000",
        "TRUSTSCORE": "0.8000",
    }
    cardiomegaly = by_label["Cardiomegaly"]
    assert cardiomegaly[0].obx_8.to_er7() == "N"
    assert cardiomegaly[0].obx_5.to_er7().split("^")[1] == "Absent"
    assert "TRUSTSCORE" not in {o.obx_3.to_er7().split("^")[0] for o in cardiomegaly}
    edema = by_label["Edema"]
    assert edema[0].obx_8.to_er7() == ""  # indeterminate: no flag, "Undetermined"
    assert edema[0].obx_5.to_er7().split("^")[1] == "Undetermined"
    assert built.observations == len(every)


def test_result_message_carries_the_linked_order() -> None:
    built = build_result_message(
        _result(FINDINGS[:1], accession_number="ACC1"),
        control_id="c",
        order=OrderReference("PL-9", "FL-9", "36643-5^XR Chest 2V^LN"),
    )
    order = _strict(built.er7).oru_r01_patient_result.oru_r01_order_observation
    assert order.orc.orc_2.to_er7() == "PL-9" == order.obr.obr_2.to_er7()
    assert order.orc.orc_3.to_er7() == "FL-9" == order.obr.obr_3.to_er7()
    assert order.obr.obr_4.to_er7() == "36643-5^XR Chest 2V^LN"
    assert order.obr.obr_18.to_er7() == "ACC1"


def test_result_without_patient_id_is_not_reported() -> None:
    with pytest.raises(ServiceError, match="no patient ID"):
        build_result_message(_result(FINDINGS, patient_id=""), control_id="c")


def test_escaping_round_trips() -> None:
    text = "a|b^c&d~e\\f"
    assert unescape(escape(text)) == text
    assert "|" not in escape(text) and "^" not in escape(text)


ORM = "\r".join(
    [
        "MSH|^~\\&|RIS|HOSP|OVERREAD|SITE|20261205010000||ORM^O01|MSG1|P|2.3.1",
        "PID|1||PAT-7^^^HOSP^MR~X9^^^OTHER||Doe^Jane\\T\\Co||19700101|F",
        "PV1|1|O",
        "ORC|NW|PL1|FL1||SC",
        "OBR|1|PL1|FL1|36643-5^XR Chest 2V^LN||||||||||||||ACC1|RP1",
        "ZDS|1.2.3.4^100^Application^DICOM",
        "",
    ]
)
OMI = "\r".join(
    [
        "MSH|^~\\&|RIS|HOSP|OVERREAD|SITE|20261205010000||OMI^O23^OMI_O23|MSG2|P|2.5",
        "PID|1||PAT-8^^^HOSP^MR||Roe^Rick",
        "ORC|NW|PL2|FL2",
        "TQ1|1",
        "OBR|1|PL2|FL2|36643-5^XR Chest 2V^LN",
        "IPC|ACC2|RP2|1.2.3.5|SPS2|CR",
        "",
    ]
)


def test_orm_and_omi_are_read() -> None:
    orm = read_order(ORM)
    assert orm.message_type is OrderMessageType.ORM_O01
    assert (orm.accession_number, orm.patient_id, orm.issuer_of_patient_id) == (
        "ACC1",
        "PAT-7",
        "HOSP",
    )
    assert (orm.placer_order_number, orm.filler_order_number) == ("PL1", "FL1")
    assert orm.patient_name == "Doe^Jane&Co" and orm.study_instance_uid == "1.2.3.4"
    assert orm.service_code == "36643-5^XR Chest 2V^LN" and orm.control_id == "MSG1"
    omi = read_order(OMI)
    assert omi.message_type is OrderMessageType.OMI_O23
    assert (omi.accession_number, omi.study_instance_uid) == ("ACC2", "1.2.3.5")


def test_bad_orders_are_refused_with_the_right_code() -> None:
    with pytest.raises(OrderRefusedError) as unsupported:
        read_order(ORM.replace("ORM^O01", "ADT^A01"))
    assert unsupported.value.reject and unsupported.value.code is ErrorCode.UNSUPPORTED_MESSAGE_TYPE
    with pytest.raises(OrderRefusedError) as no_patient:
        read_order(ORM.replace("PAT-7^^^HOSP^MR~X9^^^OTHER", ""))
    assert not no_patient.value.reject
    assert no_patient.value.code is ErrorCode.REQUIRED_FIELD_MISSING
    with pytest.raises(OrderRefusedError, match="accession"):
        read_order(OMI.replace("IPC|ACC2", "IPC|").replace("|FL2", "|"))
    with pytest.raises(HL7MessageError, match="unknown segment"):
        read_order(ORM.replace("PV1|1|O", "FOO|1|O"))
    with pytest.raises(HL7MessageError):
        read_order("this is not HL7")


def test_acks_are_valid_and_read_back() -> None:
    received = header_of(ORM)
    assert received == ReceivedHeader("MSG1", "RIS", "HOSP", "OVERREAD", "SITE", "O01")
    accept = build_ack(received, AckCode.ACCEPT)
    message = _strict(accept)
    assert message.msh.msh_5.to_er7() == "RIS" and message.msh.msh_9.to_er7() == "ACK^O01^ACK"
    assert read_ack(accept) == read_ack(accept) and read_ack(accept).accepted
    refuse = build_ack(
        received, AckCode.ERROR, "no accession | here", ErrorCode.REQUIRED_FIELD_MISSING
    )
    _strict(refuse)
    ack = read_ack(refuse)
    assert (ack.code, ack.control_id, ack.error) == (
        AckCode.ERROR,
        "MSG1",
        ErrorCode.REQUIRED_FIELD_MISSING,
    )
    assert ack.text == "no accession | here" and not ack.accepted
    # Text that is no message at all still gets an answer (naming no control ID).
    _strict(build_ack(header_of("garbage"), AckCode.REJECT, "unreadable"))
    with pytest.raises(HL7MessageError):
        read_ack("MSH|^~\\&|A|B|C|D|20261205||ACK|1|P|2.5\r")
