"""Interoperability with Orthanc: Orthanc pushes a study, and receives the SR back."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from overread.gateway import Gateway
from overread.service.db import Instance

from .conftest import free_port, needs_dcmtk, wait_for_port

pytestmark = [pytest.mark.service, needs_dcmtk]

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")
pytest.importorskip("overread.service.outputs", reason="the result builders are not importable")


class Orthanc:
    """A private Orthanc instance (DICOM + REST on free ports)."""

    def __init__(self, root: Path, overread_port: int, dicom_port: int) -> None:
        self.dicom_port = dicom_port
        self.http_port = free_port()
        storage = root / "orthanc"
        storage.mkdir(parents=True)
        config = {
            "Name": "pacs",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "DicomAet": "ORTHANC",
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "Plugins": [],
            "DicomModalities": {"overread": ["OVERREAD", "127.0.0.1", overread_port]},
        }
        path = root / "orthanc.json"
        path.write_text(json.dumps(config))
        self.log = (root / "orthanc.log").open("w")
        self.process = subprocess.Popen(
            ["Orthanc", str(path)], stdout=self.log, stderr=subprocess.STDOUT
        )
        wait_for_port(self.http_port, timeout=60)
        wait_for_port(self.dicom_port, timeout=60)
        self.url = f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@pytest.fixture
def orthanc_and_gateway(
    tmp_path: Path, make_service: Callable[..., Gateway]
) -> Iterator[tuple[Orthanc, Gateway]]:
    if shutil.which("Orthanc") is None:
        pytest.skip("Orthanc not installed")
    orthanc_dicom = free_port()
    service = make_service(
        destinations=[f"ORTHANC=ORTHANC@127.0.0.1:{orthanc_dicom}"], allow_ae=["ORTHANC@127.0.0.1"]
    )
    pacs = Orthanc(tmp_path, service.dicom_port or 0, orthanc_dicom)
    yield pacs, service
    pacs.stop()


def test_orthanc_pushes_a_chest_xray_and_gets_the_sr_back(
    orthanc_and_gateway: tuple[Orthanc, Gateway], dx_factory: Callable[..., Path]
) -> None:
    pacs, service = orthanc_and_gateway
    uploaded = httpx.post(
        f"{pacs.url}/instances", content=dx_factory(size=256).read_bytes(), timeout=30
    )
    assert uploaded.status_code == 200, uploaded.text
    instance_id = uploaded.json()["ID"]
    pushed = httpx.post(f"{pacs.url}/modalities/overread/store", json=instance_id, timeout=60)
    assert pushed.status_code == 200, pushed.text
    deadline = time.monotonic() + 90
    series: list[str] = []
    while time.monotonic() < deadline and not series:
        found = httpx.post(
            f"{pacs.url}/tools/find",
            json={"Level": "Series", "Query": {"Modality": "SR"}},
            timeout=10,
        )
        series = found.json()
        time.sleep(0.2)
    assert len(series) == 1
    study = httpx.get(f"{pacs.url}/series/{series[0]}/study", timeout=10).json()
    original = httpx.get(f"{pacs.url}/instances/{instance_id}/study", timeout=10).json()
    assert study["ID"] == original["ID"]  # the SR joined the original study in Orthanc
    with service.database.session() as session:
        assert session.scalars(select(Instance.calling_ae)).all() == ["ORTHANC"]
