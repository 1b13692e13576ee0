"""Data set fragments of a streamed C-STORE skip pynetdicom's PDU path (service.pdata).

What is stored must not change: the same bytes, hash and rows whatever the PDU
sizes, the number of PDVs in a PDU, or the presentation context; a malformed PDU
still aborts the association with nothing stored; and the fast path is used only
with the pynetdicom it was written against.
"""

from __future__ import annotations

import hashlib
import subprocess
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pydicom
import pynetdicom
import pytest
from pydicom.data import get_testdata_file
from pynetdicom import AE
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA

from overread.service import pdata

from .conftest import make_dx, needs_dcmtk
from .test_scp_streaming import Receiver, _part10

pytestmark = [pytest.mark.service]


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    gateway = Receiver(tmp_path / "data")
    yield gateway
    gateway.scp.stop()
    gateway.database.dispose()


def _count_p_data_decoded(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the length of each P-DATA-TF PDU pynetdicom decodes itself."""
    decoded: list[int] = []
    original = DULServiceProvider._decode_pdu

    def counting(self: DULServiceProvider, bytestream: bytearray):  # type: ignore[no-untyped-def]
        if bytestream[0] == 0x04:
            decoded.append(len(bytestream))
        return original(self, bytestream)

    monkeypatch.setattr(DULServiceProvider, "_decode_pdu", counting)
    return decoded


def test_the_installed_pynetdicom_is_one_the_fast_path_was_written_for() -> None:
    # Upgrading pynetdicom fails here first: check pdata.read_pdu against the new
    # DULServiceProvider._read_pdu_data, then add the version.
    assert pdata.supported(), pynetdicom.__version__
    assert pdata.supported("3.0.4") and not pdata.supported("3.1.0")
    assert not pdata.supported("2.1.1")


def test_without_a_supported_pynetdicom_nothing_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Dul:
        def _read_pdu_data(self) -> None: ...

    dul = Dul()
    monkeypatch.setattr(pdata, "SUPPORTED_PYNETDICOM", ("9.9",))
    assert pdata.install(dul) is False and "_read_pdu_data" not in vars(dul)
    monkeypatch.setattr(
        pdata, "SUPPORTED_PYNETDICOM", (".".join(pynetdicom.__version__.split(".")[:2]),)
    )
    assert pdata.install(dul) is True and "_read_pdu_data" in vars(dul)


@needs_dcmtk
def test_storescu_data_set_pdus_skip_pynetdicom_and_the_bytes_are_the_same(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded = _count_p_data_decoded(monkeypatch)
    path = make_dx(tmp_path / "dx.dcm", seed=11, size=1200)  # 2.9 MB: 180 PDUs of 16 KiB
    done = subprocess.run(
        [
            *("storescu", "-aet", "MODALITY", "-aec", "OVERREAD", "--max-send-pdu", "16384"),
            *("127.0.0.1", str(receiver.port), str(path)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # The command set, the first and the last fragment: pynetdicom; the rest: not.
    assert 1 <= len(decoded) <= 4, decoded
    [row] = receiver.rows()
    stored = receiver.store.path(row.object_key).read_bytes()
    assert stored == _part10(path)
    assert row.sha256 == hashlib.sha256(stored).hexdigest() and row.size == len(stored)
    assert receiver.incoming() == []


def test_small_pdus_on_several_presentation_contexts_are_stored_byte_for_byte(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pynetdicom._config, "STORE_SEND_CHUNKED_DATASET", True)
    decoded = _count_p_data_decoded(monkeypatch)
    receiver.scp.ae.maximum_pdu_size = 4096  # the SCU sends PDUs of at most 4 KiB
    paths = [
        Path(str(get_testdata_file("CT_small.dcm"))),  # explicit VR little endian
        Path(str(get_testdata_file("MR_small_implicit.dcm"))),  # implicit VR
        make_dx(tmp_path / "dx.dcm", seed=5, size=256),
    ]
    ae = AE(ae_title="MODALITY")
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="OVERREAD")
    assert assoc.is_established and len(assoc.accepted_contexts) == 3
    try:
        statuses = [int(assoc.send_c_store(p).Status) for p in paths]
    finally:
        assoc.release()
    assert statuses == [0x0000] * 3
    total = sum(len(_part10(p)) for p in paths)
    assert len(decoded) < total // 4096 // 4  # most PDUs took the fast path
    by_uid = {row.sop_instance_uid: row for row in receiver.rows()}
    for path in paths:
        row = by_uid[str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)]
        stored = receiver.store.path(row.object_key).read_bytes()
        assert stored == _part10(path)
        assert row.sha256 == hashlib.sha256(stored).hexdigest()
    assert receiver.incoming() == []


def _request(path: Path) -> tuple[C_STORE_RQ, bytes]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    request = C_STORE()
    request.MessageID = 1
    request.AffectedSOPClassUID = ds.SOPClassUID
    request.AffectedSOPInstanceUID = ds.SOPInstanceUID
    request.Priority = 2
    raw = path.read_bytes()
    data_set = raw[132 + 12 + int.from_bytes(raw[140:144], "little") :]
    request.DataSet = BytesIO(data_set)
    message = C_STORE_RQ()
    message.primitive_to_message(request)
    return message, data_set


def _p_data(context_id: int, fragments: list[tuple[int, bytes]]) -> P_DATA:
    """The P-DATA primitive of one PDU holding one PDV per (control header, value)."""
    pdu = P_DATA_TF()
    items = b"".join(
        (len(value) + 2).to_bytes(4, "big") + bytes([context_id, control]) + value
        for control, value in fragments
    )
    pdu.decode(b"\x04\x00" + len(items).to_bytes(4, "big") + items)
    return pdu.to_primitive()


def test_several_fragments_in_one_pdu_are_written_in_order(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = make_dx(tmp_path / "dx.dcm", seed=6, size=512)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="OVERREAD")
    assert assoc.is_established
    context_id = assoc.accepted_contexts[0].context_id
    message, data_set = _request(path)
    # Paused, the SCU's own reactor leaves the C-STORE response to this test.
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        [command] = list(message.encode_msg(context_id, 0))[:1]
        assoc.dul.send_pdu(command)
        pieces = [data_set[i : i + 3000] for i in range(0, len(data_set), 3000)]
        body, last = pieces[:-1], pieces[-1]
        for start in range(0, len(body), 5):  # five PDVs a PDU
            assoc.dul.send_pdu(_p_data(context_id, [(0x00, p) for p in body[start : start + 5]]))
        assoc.dul.send_pdu(_p_data(context_id, [(0x02, last)]))
        _, response = assoc.dimse.get_msg(block=True)
        assert response is not None and int(response.Status) == 0x0000
    finally:
        assoc._reactor_checkpoint.set()
        assoc.release()
    [row] = receiver.rows()
    stored = receiver.store.path(row.object_key).read_bytes()
    assert stored == _part10(path)
    assert row.sha256 == hashlib.sha256(stored).hexdigest()


def test_a_malformed_fragment_aborts_the_association_and_stores_nothing(
    receiver: Receiver, tmp_path: Path
) -> None:
    path = make_dx(tmp_path / "dx.dcm", seed=8, size=512)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="OVERREAD")
    assert assoc.is_established
    context_id = assoc.accepted_contexts[0].context_id
    message, data_set = _request(path)
    [command] = list(message.encode_msg(context_id, 0))[:1]
    assoc.dul.send_pdu(command)
    assoc.dul.send_pdu(_p_data(context_id, [(0x00, data_set[:5000])]))
    deadline = time.monotonic() + 10
    while not receiver.incoming() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(receiver.incoming()) == 1  # streaming
    # An item whose length runs past the end of its PDU.
    value = data_set[5000:9000]
    items = (len(value) + 100).to_bytes(4, "big") + bytes([context_id, 0x00]) + value
    assoc.dul.socket.send(b"\x04\x00" + len(items).to_bytes(4, "big") + items)
    deadline = time.monotonic() + 10
    while (assoc.is_established or receiver.incoming()) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert assoc.is_aborted
    assert receiver.incoming() == [] and receiver.rows() == [] and receiver.objects() == []


def test_a_long_transfer_without_pauses_is_not_aborted_as_idle(
    receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PDUs that keep arriving for longer than the network time-out: each one restarts
    the idle timer, as pynetdicom's own reader does."""
    receiver.scp.ae.network_timeout = 0.3
    original = pdata.StreamedDataSet.write

    def slow(self: pdata.StreamedDataSet, data: object) -> int:
        time.sleep(0.002)  # every PDU is already waiting: the reader never pauses
        return original(self, data)

    monkeypatch.setattr(pdata.StreamedDataSet, "write", slow)
    path = make_dx(tmp_path / "dx.dcm", seed=9, size=512)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="MODALITY")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", receiver.port, ae_title="OVERREAD")
    assert assoc.is_established
    context_id = assoc.accepted_contexts[0].context_id
    message, data_set = _request(path)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        [command] = list(message.encode_msg(context_id, 0))[:1]
        command_pdu = P_DATA_TF()
        command_pdu.from_primitive(command)
        pieces = [data_set[i : i + 1000] for i in range(0, len(data_set), 1000)]
        assert len(pieces) > 300  # > 0.6 s of writes at 2 ms each: twice the time-out
        stream = bytearray(command_pdu.encode())  # in order, in one send
        for index, piece in enumerate(pieces):
            control = 0x02 if index == len(pieces) - 1 else 0x00
            items = (len(piece) + 2).to_bytes(4, "big") + bytes([context_id, control]) + piece
            stream += b"\x04\x00" + len(items).to_bytes(4, "big") + items
        assoc.dul.socket.socket.sendall(bytes(stream))
        _, response = assoc.dimse.get_msg(block=True)
        assert response is not None and int(response.Status) == 0x0000
    finally:
        assoc._reactor_checkpoint.set()
        if assoc.is_established:
            assoc.release()
    [row] = receiver.rows()
    assert receiver.store.path(row.object_key).read_bytes() == _part10(path)
