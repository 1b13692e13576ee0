"""STOW-RS to a real Orthanc (DICOMweb plugin) and FHIR POST over real HTTP."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydicom.dataset import Dataset

from overread.results import Prediction
from overread.service.outputs import (
    DeliveryError,
    build_fhir_report,
    build_overlay,
    build_sr,
    post_fhir,
    stow_rs,
)

from .conftest import OrthancPeer, free_port, run_orthanc


@pytest.mark.service
def test_stow_rs_stores_sr_and_overlay_in_orthanc(
    orthanc: OrthancPeer, prediction: Prediction, dx_chest: Dataset
) -> None:
    sr = build_sr(prediction, [dx_chest])
    sc = build_overlay(prediction, dx_chest, "Cardiomegaly")
    result = stow_rs([sr, sc], orthanc.dicomweb)

    assert result.status_code == 200
    assert result.ok
    assert set(result.stored) == {sr.SOPInstanceUID, sc.SOPInstanceUID}
    assert result.url == f"{orthanc.dicomweb}/studies"

    instances = httpx.get(f"{orthanc.url}/instances", params={"expand": ""}, timeout=10).json()
    stored = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}
    assert {sr.SOPInstanceUID, sc.SOPInstanceUID} <= stored
    series = httpx.post(
        f"{orthanc.url}/tools/find",
        json={"Level": "Series", "Query": {"Modality": "SR"}, "Expand": True},
        timeout=10,
    ).json()
    assert any(s["MainDicomTags"]["SeriesInstanceUID"] == sr.SeriesInstanceUID for s in series)
    # What Orthanc stored is the SR we built, content included.
    (found,) = httpx.post(
        f"{orthanc.url}/tools/lookup", content=str(sr.SOPInstanceUID), timeout=10
    ).json()
    tags = httpx.get(f"{orthanc.url}/instances/{found['ID']}/simplified-tags", timeout=10).json()
    assert tags["StudyInstanceUID"] == dx_chest.StudyInstanceUID
    assert tags["ContentSequence"][-1]["ContentSequence"][0]["TextValue"].startswith(
        "AI second read"
    )


@pytest.mark.service
def test_stow_rs_to_a_wrong_path_is_a_permanent_error(
    orthanc: OrthancPeer, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    sr = build_sr(prediction, [dx_chest_header])
    with pytest.raises(DeliveryError, match="HTTP 404") as caught:
        stow_rs([sr], f"{orthanc.url}/no-such-dicomweb")
    assert caught.value.retryable is False


@pytest.mark.service
def test_stow_rs_with_nothing_listening_is_retryable(
    prediction: Prediction, dx_chest_header: Dataset
) -> None:
    url = f"http://127.0.0.1:{free_port()}/dicom-web"
    with pytest.raises(DeliveryError, match="could not be reached") as caught:
        stow_rs([build_sr(prediction, [dx_chest_header])], url, timeout=5)
    assert caught.value.retryable


class _Recorder(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(  # type: ignore[attr-defined]
            {"path": self.path, "headers": dict(self.headers), "body": body}
        )
        status = 503 if self.path.startswith("/busy") else 200
        payload = {"resourceType": "Bundle", "type": "transaction-response", "entry": []}
        if status != 200:
            payload = {
                "resourceType": "OperationOutcome",
                "issue": [{"severity": "error", "code": "transient"}],
            }
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        return


@pytest.fixture
def fhir_endpoint() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.service
def test_post_fhir_sends_the_transaction_to_the_base_url(
    fhir_endpoint: ThreadingHTTPServer, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    bundle = build_fhir_report(prediction, dx_chest_header)
    base = f"http://127.0.0.1:{fhir_endpoint.server_port}/fhir"
    result = post_fhir(bundle, base, auth="token-123")
    assert result.status_code == 200
    assert result.body["type"] == "transaction-response"
    (request,) = fhir_endpoint.received  # type: ignore[attr-defined]
    assert request["path"] == "/fhir"
    assert request["headers"]["Content-Type"] == "application/fhir+json"
    assert request["headers"]["Authorization"] == "Bearer token-123"
    assert json.loads(request["body"]) == bundle


@pytest.mark.service
def test_post_fhir_server_trouble_is_retryable(
    fhir_endpoint: ThreadingHTTPServer, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    bundle = build_fhir_report(prediction, dx_chest_header)
    with pytest.raises(DeliveryError, match="HTTP 503") as caught:
        post_fhir(bundle, f"http://127.0.0.1:{fhir_endpoint.server_port}/busy")
    assert caught.value.retryable
    assert "transient" in str(caught.value)


@pytest.mark.service
def test_stow_rs_reports_which_instances_were_refused(
    orthanc: OrthancPeer, prediction: Prediction, dx_chest_header: Dataset, cr_small: Dataset
) -> None:
    # STOW-RS to one study's URL with an instance of another study: Orthanc stores
    # the first and refuses the second, answering 409 with both lists.
    mine = build_sr(prediction, [dx_chest_header])
    other = build_sr(prediction, [cr_small])
    url = f"{orthanc.dicomweb}/studies/{mine.StudyInstanceUID}"
    with pytest.raises(DeliveryError, match=f"refused: {other.SOPInstanceUID}") as caught:
        stow_rs([mine, other], url)
    response = caught.value.response
    assert response.status_code == 409
    assert response.stored == [mine.SOPInstanceUID]
    assert list(response.failed) == [other.SOPInstanceUID]
    assert caught.value.retryable is False
    found = httpx.post(
        f"{orthanc.url}/tools/lookup", content=str(mine.SOPInstanceUID), timeout=10
    ).json()
    assert len(found) == 1


@pytest.mark.service
def test_stow_rs_authenticates_with_basic_auth(
    tmp_path: Path, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    sr = build_sr(prediction, [dx_chest_header])
    with run_orthanc(
        tmp_path, AuthenticationEnabled=True, RegisteredUsers={"overread": "s3cret"}
    ) as secured:
        with pytest.raises(DeliveryError, match="HTTP 401") as caught:
            stow_rs([sr], secured.dicomweb, auth=("overread", "wrong"))
        assert caught.value.retryable is False
        result = stow_rs([sr], secured.dicomweb, auth=("overread", "s3cret"))
        assert result.stored == [sr.SOPInstanceUID]
