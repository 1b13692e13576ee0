"""Typed job payloads read the JSON the queue has always stored, and write it back."""

from __future__ import annotations

import pytest

from overread.errors import InferenceError
from overread.service.config import Destination
from overread.service.payloads import (
    DicomExportPayload,
    FhirExportPayload,
    InferPayload,
    export_payload,
)

PACS = {"name": "PACS", "ae_title": "PACSAE", "host": "10.0.0.5", "port": 104}


def test_an_infer_payload_round_trips() -> None:
    stored = {"alias": "cxr-default", "destinations": [PACS]}
    payload = InferPayload.from_dict(stored, default_alias="other")
    assert payload.destinations == (Destination(**PACS),)
    assert payload.to_dict() == stored
    assert InferPayload.from_dict({}, default_alias="cxr-default") == InferPayload("cxr-default")


def test_export_payloads_read_as_their_type_and_round_trip() -> None:
    dicom = {"destination": PACS, "result_id": 7}
    fhir = {"fhir_endpoint": "ehr", "result_id": 7}
    read_dicom, read_fhir = export_payload(dicom), export_payload(fhir)
    assert isinstance(read_dicom, DicomExportPayload)
    assert isinstance(read_fhir, FhirExportPayload)
    assert read_dicom.to_dict() == dicom and read_fhir.to_dict() == fhir


@pytest.mark.parametrize(
    "stored",
    [{}, {"result_id": 1}, {"destination": {"name": "X"}, "result_id": 1}, {"fhir_endpoint": "e"}],
)
def test_an_unreadable_export_payload_is_refused(stored: dict[str, object]) -> None:
    with pytest.raises(InferenceError, match="not readable"):
        export_payload(stored)
