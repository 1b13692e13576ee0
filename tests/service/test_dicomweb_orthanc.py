"""DICOMweb with Orthanc's DICOMweb plugin, both ways.

Orthanc (and ``dicomweb-client``) search and retrieve from the gateway's
``/dicom-web``; the gateway stores its SR on Orthanc's ``/dicom-web`` with STOW-RS,
also after Orthanc was down for the first attempts.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import select

from overread.audit.schema import AuditEvent
from overread.gateway import Gateway
from overread.service.db import Job

from .conftest import api_token, free_port, needs_dcmtk, send_and_run, wait_for_port, wait_until

pytestmark = [pytest.mark.service, pytest.mark.slow, needs_dcmtk]

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


class DicomWebOrthanc:
    """A private Orthanc with the DICOMweb plugin, optionally knowing the gateway as a server."""

    def __init__(
        self,
        root: Path,
        http_port: int,
        servers: dict[str, dict[str, Any]] | None = None,
        users: dict[str, str] | None = None,
    ) -> None:
        self.http_port = http_port
        self.auth = next(iter(users.items())) if users else None
        storage = root / "orthanc"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": "ORTHANC",
            "DicomPort": free_port(),
            "HttpPort": http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": bool(users),
            "RegisteredUsers": users or {},
            "Plugins": [str(PLUGIN)],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "Servers": servers or {}},
        }
        path = root / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log = (root / "orthanc.log").open("a")
        self.process = subprocess.Popen(
            ["Orthanc", str(path)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for_port(http_port, timeout=60)
        self.url = f"http://127.0.0.1:{http_port}"

    def find(self, level: str, query: dict[str, str]) -> list[str]:
        """Orthanc's ids of the resources matching ``query`` (its REST ``/tools/find``)."""
        found = httpx.post(
            f"{self.url}/tools/find",
            json={"Level": level, "Query": query},
            auth=self.auth,
            timeout=10,
        )
        found.raise_for_status()
        return list(found.json())

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture
def orthanc_available() -> None:
    if shutil.which("Orthanc") is None or not PLUGIN.is_file():
        pytest.skip("Orthanc or its DICOMweb plugin not installed")


def _sr_series(pacs: DicomWebOrthanc) -> list[str]:
    return pacs.find("Series", {"Modality": "SR"})


@pytest.fixture
def gateway_with_study(
    orthanc_available: None, make_service: Callable[..., Gateway], dx_factory: Callable[..., Path]
) -> tuple[Gateway, str, str]:
    """A gateway holding one DX study; a service account's token for it."""
    service = make_service()
    path = dx_factory(size=128)
    outcome = service.ingestor.ingest_file(path, calling_ae="MODALITY")
    return service, outcome.study_instance_uid, api_token(service, "service")


def test_orthanc_searches_and_retrieves_from_the_gateway(
    tmp_path: Path, gateway_with_study: tuple[Gateway, str, str]
) -> None:
    service, study, token = gateway_with_study
    root = f"http://127.0.0.1:{service.http_port}/dicom-web/"
    pacs = DicomWebOrthanc(
        tmp_path,
        free_port(),
        {"overread": {"Url": root, "HttpHeaders": {"Authorization": f"Bearer {token}"}}},
    )
    try:
        found = httpx.post(
            f"{pacs.url}/dicom-web/servers/overread/qido",
            json={"Uri": "/studies", "Arguments": {"PatientID": "SVC001"}},
            timeout=30,
        )
        assert found.status_code == 200, found.text
        [result] = found.json()  # Orthanc flattens the DICOM JSON it got
        assert result["0020000D"]["Value"] == study, result
        assert result["00100020"]["Value"] == "SVC001"
        metadata = httpx.post(
            f"{pacs.url}/dicom-web/servers/overread/get",
            json={"Uri": f"/studies/{study}/metadata"},
            timeout=30,
        )
        assert metadata.status_code == 200, metadata.text
        assert [m["0020000D"]["Value"][0] for m in metadata.json()] == [study]
        assert pacs.find("Study", {"StudyInstanceUID": study}) == []
        retrieved = httpx.post(
            f"{pacs.url}/dicom-web/servers/overread/retrieve",
            json={"Resources": [{"Study": study}]},
            timeout=60,
        )
        assert retrieved.status_code == 200, retrieved.text
        [orthanc_study] = pacs.find("Study", {"StudyInstanceUID": study})
        details = httpx.get(f"{pacs.url}/studies/{orthanc_study}", timeout=10).json()
        assert details["PatientMainDicomTags"]["PatientID"] == "SVC001"
        with service.database.session() as session:
            views = session.scalars(select(AuditEvent).where(AuditEvent.action == "view")).all()
            seen = {(e.role, e.details.get("view"), e.details.get("resource")) for e in views}
        assert ("service", "wado-rs", "instances") in seen  # audited as the service account
        assert ("service", "qido-rs", None) in seen
    finally:
        pacs.stop()


def test_dicomweb_client_searches_and_retrieves_from_the_gateway(
    gateway_with_study: tuple[Gateway, str, str],
) -> None:
    dicomweb_client = pytest.importorskip("dicomweb_client")
    service, study, token = gateway_with_study
    client = dicomweb_client.DICOMwebClient(
        url=f"http://127.0.0.1:{service.http_port}/dicom-web",
        headers={"Authorization": f"Bearer {token}"},
    )
    [found] = client.search_for_studies(search_filters={"PatientName": "service*"})
    assert found["0020000D"]["Value"] == [study]
    assert client.search_for_studies(search_filters={"StudyDate": "19000101-19000102"}) == []
    [series] = client.search_for_series(study)
    series_uid = series["0020000E"]["Value"][0]
    [instance] = client.search_for_instances(study, series_uid)
    sop = instance["00080018"]["Value"][0]
    dataset = client.retrieve_instance(study, series_uid, sop)
    assert dataset.SOPInstanceUID == sop and dataset.pixel_array.shape == (128, 128)
    [metadata] = client.retrieve_study_metadata(study)
    assert metadata["00080018"]["Value"] == [sop] and "7FE00010" not in metadata
    png = client.retrieve_instance_rendered(study, series_uid, sop, media_types=("image/png",))
    assert Image.open(io.BytesIO(png)).size == (128, 128)
    [frame] = client.retrieve_instance_frames(study, series_uid, sop, frame_numbers=[1])
    assert len(frame) == 128 * 128 * 2


def _export_events(service: Gateway) -> list[dict[str, Any]]:
    with service.database.session() as session:
        events = session.scalars(select(AuditEvent).where(AuditEvent.action == "export")).all()
        return [e.details for e in events if e.details.get("destination_kind") == "stow-rs"]


def test_the_gateway_stores_its_sr_on_orthanc_with_stow_rs(
    tmp_path: Path,
    orthanc_available: None,
    make_service: Callable[..., Gateway],
    dx_factory: Callable[..., Path],
) -> None:
    pacs = DicomWebOrthanc(tmp_path, free_port(), users={"overread": "s3cret"})
    try:
        endpoint = {
            "name": "orthanc",
            "url": f"{pacs.url}/dicom-web",
            "username": "overread",
            "password": "s3cret",
        }
        service = make_service(stow_endpoints=[endpoint])  # HTTP basic, as a config table
        send_and_run(service, [dx_factory(size=256)], jobs=2)
        [series] = _sr_series(pacs)
        study = httpx.get(f"{pacs.url}/series/{series}/study", auth=pacs.auth, timeout=10).json()
        assert httpx.get(f"{pacs.url}/series", timeout=10).status_code == 401  # auth was needed
        with service.database.session() as session:
            job = session.scalars(select(Job).where(Job.kind == "export")).one()
        assert job.destination == "stow:orthanc"
        assert study["MainDicomTags"]["StudyInstanceUID"] == job.study_instance_uid
        outcomes = [e["outcome"] for e in _export_events(service)]
        assert outcomes == ["sending", "stored"]
    finally:
        pacs.stop()


def test_stow_rs_export_retries_until_orthanc_is_up(
    tmp_path: Path,
    orthanc_available: None,
    make_service: Callable[..., Gateway],
    dx_factory: Callable[..., Path],
) -> None:
    port = free_port()
    service = make_service(
        stow_endpoints=[f"orthanc=http://127.0.0.1:{port}/dicom-web"], retry_base_seconds=1.0
    )
    from overread.harness import storescu

    storescu(service.dicom_port, [dx_factory(size=256)], called="OVERREAD", timeout=60)
    wait_until(lambda: any(e["outcome"] == "failed" for e in _export_events(service)))
    failed = next(e for e in _export_events(service) if e["outcome"] == "failed")
    assert "could not be reached" in failed["error"]
    pacs = DicomWebOrthanc(tmp_path, port)  # the destination comes up: the retry delivers
    try:
        wait_until(lambda: len(_sr_series(pacs)) == 1, timeout=180)
        wait_until(lambda: "stored" in [e["outcome"] for e in _export_events(service)])
        with service.database.session() as session:
            job = session.scalars(select(Job).where(Job.kind == "export")).one()
            assert job.state == "succeeded" and job.attempts >= 2
    finally:
        pacs.stop()
