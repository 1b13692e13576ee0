"""The loopback harness: ports, the test radiograph, the PACS and a running gateway."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pydicom
import pytest

from overread.config import Settings
from overread.errors import ServiceError
from overread.harness import (
    PynetdicomPacs,
    StorescpPacs,
    free_port,
    listening,
    storescu,
    wait_port,
    write_chest_dx,
)
from overread.harness.gateway import loopback_config, running_gateway

needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK (storescu/storescp) not installed"
)


def test_a_free_port_can_be_bound_and_listening_sees_it() -> None:
    port = free_port()
    assert not listening(port)
    with pytest.raises(ServiceError, match=str(port)):
        wait_port(port, timeout=0.1)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        assert listening(port)
        wait_port(port, timeout=1)


def test_the_chest_dx_carries_the_given_header_and_leaves_out_what_is_none(tmp_path: Path) -> None:
    path = write_chest_dx(
        tmp_path / "a" / "dx.dcm",
        study_uid="1.2.3.4",
        size=64,
        patient_id="P-9",
        department="Emergency Department",
        window=None,
    )
    ds = pydicom.dcmread(path)
    assert (ds.StudyInstanceUID, ds.PatientID, ds.Modality, ds.BodyPartExamined) == (
        "1.2.3.4",
        "P-9",
        "DX",
        "CHEST",
    )
    assert ds.InstitutionalDepartmentName == "Emergency Department"
    assert "WindowCenter" not in ds and "PatientAge" not in ds
    assert ds.pixel_array.shape == (64, 64) and ds.pixel_array.max() <= 4095
    again = pydicom.dcmread(write_chest_dx(tmp_path / "b.dcm", size=64))
    assert again.StudyInstanceUID != ds.StudyInstanceUID  # fresh UIDs when not given


@pytest.mark.service
@needs_dcmtk
def test_storescu_reaches_a_pacs_and_fails_loudly_where_none_listens(tmp_path: Path) -> None:
    image = write_chest_dx(tmp_path / "dx.dcm", size=64)
    pacs = StorescpPacs(tmp_path / "pacs")
    port = pacs.start()
    try:
        storescu(port, [image], called="PACSAE")
        assert len(pacs.files()) == 1 and pacs.counts().objects == 1
    finally:
        pacs.stop()
    assert not listening(port)
    with pytest.raises(ServiceError, match="storescu"):
        storescu(free_port(), [image], timeout=60)


@pytest.mark.service
def test_the_gateway_listens_while_running_and_stops_on_exit(tmp_path: Path) -> None:
    pacs = PynetdicomPacs(tmp_path / "pacs")
    pacs.start()
    try:
        config = loopback_config(
            Settings(data_dir=tmp_path / "gateway"),
            http_port=0,
            workers=0,
            destinations=[f"PACS=PACSAE@127.0.0.1:{pacs.port}"],
        )
        with running_gateway(config, stop_timeout=10, artifacts=False) as service:
            port = service.dicom_port
            assert port and listening(port)
        assert not listening(port)
    finally:
        pacs.stop()
