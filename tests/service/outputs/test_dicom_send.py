"""C-STORE to real DCMTK and Orthanc peers: delivery, statuses, and clear refusals."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from pydicom.dataset import Dataset

from overread.errors import ServiceError
from overread.results import Prediction
from overread.service.outputs import (
    DeliveryError,
    DicomDestination,
    build_overlay,
    build_sr,
    echo,
    send_datasets,
)

from .conftest import OrthancPeer, StoreSCP, free_port, run_storescp


def test_destination_parses_ae_host_port() -> None:
    assert DicomDestination.parse("PACSAE@10.0.0.5:104") == DicomDestination(
        "PACSAE", "10.0.0.5", 104
    )
    assert DicomDestination.parse("PACS@[::1]:11112").host == "::1"
    assert str(DicomDestination.parse("PACS@[::1]:11112")) == "PACS@[::1]:11112"
    for bad in ("PACSAE@host", "@host:104", "AE_TITLE_TOO_LONG_X@h:1", "PACS@h:0", "PACS@h:70000"):
        with pytest.raises(ServiceError):
            DicomDestination.parse(bad)


@pytest.mark.service
def test_sr_and_overlay_arrive_at_storescp_and_parse(
    storescp: StoreSCP, prediction: Prediction, dx_chest: Dataset
) -> None:
    sr = build_sr(prediction, [dx_chest])
    sc = build_overlay(prediction, dx_chest, "Pneumothorax")
    destination = DicomDestination("PACSAE", "127.0.0.1", storescp.port)
    results = send_datasets([sr, sc], destination, calling_ae="OVERREAD")

    assert [r.status for r in results] == [0x0000, 0x0000]
    assert all(r.ok for r in results)
    assert [r.sop_instance_uid for r in results] == [sr.SOPInstanceUID, sc.SOPInstanceUID]
    received = {
        pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in storescp.out_dir.iterdir()
    }
    assert set(received) == {sr.SOPInstanceUID, sc.SOPInstanceUID}
    stored_sr = received[sr.SOPInstanceUID]
    assert stored_sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"
    assert stored_sr.ContentSequence[-1].ContentSequence[0].TextValue.startswith("AI second read")
    assert received[sc.SOPInstanceUID].BurnedInAnnotation == "YES"


@pytest.mark.service
def test_files_on_disk_can_be_sent(
    tmp_path: Path, storescp: StoreSCP, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    path = tmp_path / "sr.dcm"
    build_sr(prediction, [dx_chest_header]).save_as(path, enforce_file_format=True)
    (result,) = send_datasets([path], f"PACSAE@127.0.0.1:{storescp.port}")
    assert result.ok
    with pytest.raises(ServiceError, match="cannot be read as DICOM"):
        send_datasets([tmp_path / "missing.dcm"], f"PACSAE@127.0.0.1:{storescp.port}")


@pytest.mark.service
def test_refused_association_names_peer_and_reason(
    tmp_path: Path, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    sr = build_sr(prediction, [dx_chest_header])
    # storescp closes the connection right after its A-ASSOCIATE-RJ; on a loaded
    # machine the reset can reach the socket before the rejection is read, and the
    # kernel then discards it: that attempt reads as "could not be reached" (a
    # retryable failure, which is what delivery does next). A later attempt reads
    # the rejection itself.
    messages: list[str] = []
    with run_storescp(tmp_path / "refusing", "--refuse") as peer:
        name = f"PACSAE@127.0.0.1:{peer.port}"
        for _ in range(5):
            with pytest.raises(DeliveryError) as caught:
                send_datasets([sr], DicomDestination("PACSAE", "127.0.0.1", peer.port))
            assert caught.value.peer == name
            messages.append(str(caught.value))
            if "rejected" in messages[-1]:
                break
    *earlier, message = messages
    assert all(m.startswith(f"{name} could not be reached") for m in earlier), messages
    assert f"{name} rejected the association from OVERREAD" in message
    assert "reason" in message


@pytest.mark.service
def test_nothing_listening_is_a_clear_retryable_error(
    prediction: Prediction, dx_chest_header: Dataset
) -> None:
    port = free_port()
    sr = build_sr(prediction, [dx_chest_header])
    with pytest.raises(
        DeliveryError, match=rf"PACSAE@127.0.0.1:{port} could not be reached"
    ) as caught:
        send_datasets(
            [sr], DicomDestination("PACSAE", "127.0.0.1", port), acse_timeout=5, network_timeout=5
        )
    assert caught.value.retryable


@pytest.mark.service
def test_orthanc_rejects_a_wrong_called_ae_and_stores_with_the_right_one(
    orthanc: OrthancPeer, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    sr = build_sr(prediction, [dx_chest_header])
    with pytest.raises(DeliveryError, match="rejected the association") as caught:
        send_datasets([sr], DicomDestination("NOTORTHANC", "127.0.0.1", orthanc.dicom_port))
    assert "Called AE title not recognised" in str(caught.value)
    assert caught.value.retryable is False

    (result,) = send_datasets(
        [sr], DicomDestination(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port)
    )
    assert result.status == 0x0000
    found = httpx.post(
        f"{orthanc.url}/tools/lookup", content=str(sr.SOPInstanceUID), timeout=10
    ).json()
    assert [item["Type"] for item in found] == ["Instance"]


@pytest.mark.service
def test_abort_mid_transfer_is_a_retryable_error(
    tmp_path: Path, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    sr = build_sr(prediction, [dx_chest_header])
    with (
        run_storescp(tmp_path / "aborting", "--abort-during") as peer,
        pytest.raises(
            DeliveryError, match="aborted the association or closed the connection while storing"
        ) as caught,
    ):
        send_datasets([sr], DicomDestination("PACSAE", "127.0.0.1", peer.port))
    assert caught.value.retryable
    assert caught.value.results == []


@pytest.mark.service
def test_a_peer_too_slow_to_answer_is_a_timeout_error(
    tmp_path: Path, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    sr = build_sr(prediction, [dx_chest_header])
    with (
        run_storescp(tmp_path / "slow", "--sleep-during", "4") as peer,
        pytest.raises(DeliveryError, match="did not answer within 1 s") as caught,
    ):
        send_datasets([sr], DicomDestination("PACSAE", "127.0.0.1", peer.port), dimse_timeout=1)
    assert caught.value.retryable


@pytest.fixture
def tls_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A throw-away self-signed key and certificate for 127.0.0.1 / localhost."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    done = subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return key, cert


@pytest.mark.service
def test_dicom_tls_delivers_and_untrusted_peers_are_refused(
    tmp_path: Path,
    tls_pair: tuple[Path, Path],
    prediction: Prediction,
    dx_chest_header: Dataset,
) -> None:
    key, cert = tls_pair
    sr = build_sr(prediction, [dx_chest_header])
    # storescp over TLS with our certificate; it does not ask the client for one (-ic).
    with run_storescp(tmp_path / "tls", "+tls", str(key), str(cert), "-ic") as peer:
        destination = DicomDestination("PACSAE", "127.0.0.1", peer.port)
        trusting = ssl.create_default_context(cafile=str(cert))
        (result,) = send_datasets([sr], destination, tls=trusting)
        assert result.ok
        assert [pydicom.dcmread(p).SOPInstanceUID for p in peer.out_dir.iterdir()] == [
            sr.SOPInstanceUID
        ]

        # The system trust store does not know the self-signed certificate.
        with pytest.raises(DeliveryError, match="could not be reached over TLS"):
            send_datasets([sr], destination, tls=ssl.create_default_context(), acse_timeout=5)
        # Nor can a plain-TCP client talk to a TLS port.
        with pytest.raises(DeliveryError, match="could not be reached"):
            send_datasets([sr], destination, acse_timeout=5, network_timeout=5)


@pytest.mark.service
def test_echo_checks_a_destination(storescp: StoreSCP, tmp_path: Path) -> None:
    assert echo(f"PACSAE@127.0.0.1:{storescp.port}") > 0.0
    with (
        run_storescp(tmp_path / "refusing", "--refuse") as peer,
        # storescp closes the socket right after its A-ASSOCIATE-RJ; the client may
        # see the close before the reject, so either description is right.
        pytest.raises(DeliveryError, match=r"rejected the association|could not be reached"),
    ):
        echo(DicomDestination("PACSAE", "127.0.0.1", peer.port))
    with pytest.raises(DeliveryError, match="could not be reached for C-ECHO"):
        echo(DicomDestination("PACSAE", "127.0.0.1", free_port()), timeout=5)


@pytest.mark.service
def test_a_sop_class_the_peer_does_not_accept_fails_alone(
    storescp: StoreSCP, prediction: Prediction, dx_chest_header: Dataset
) -> None:
    sr = build_sr(prediction, [dx_chest_header])
    odd = build_sr(prediction, [dx_chest_header])
    odd.SOPClassUID = "1.2.826.0.1.3680043.8.498.12345"  # no storage SOP class storescp knows
    odd.file_meta.MediaStorageSOPClassUID = odd.SOPClassUID
    destination = DicomDestination("PACSAE", "127.0.0.1", storescp.port)

    first, second = send_datasets([odd, sr], destination)
    assert not first.ok and first.status is None
    assert "presentation context" in first.message
    assert second.ok
    received = [pydicom.dcmread(p).SOPInstanceUID for p in storescp.out_dir.iterdir()]
    assert received == [sr.SOPInstanceUID]

    with pytest.raises(DeliveryError, match="accepted none of the proposed SOP classes"):
        send_datasets([odd], destination)
