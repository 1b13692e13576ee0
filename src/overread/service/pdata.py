"""A streamed C-STORE data set, from the socket to the store without pynetdicom's PDU path.

pynetdicom's upper layer takes each P-DATA-TF PDU through a dozen steps in Python:
the PDU is read into a ``bytearray`` and copied to ``bytes``, decoded into item
objects (each value sliced out: a copy), turned into a P-DATA primitive, queued as
an FSM event and taken off again (Sta6 + Evt10: DT-2), handed to the DIMSE provider,
which slices each value once more to append it to the message's buffer, and after
each PDU the reactor goes once round its loop. For a 5 MB radiograph in 128 KiB PDUs
that is about a third of the receiving process's CPU.

Once the SCP streams a C-STORE data set to the store (:class:`StreamedDataSet`, set
up by :mod:`overread.service.scp` when the command set is decoded), :func:`install`
takes the PDUs that hold nothing but data set fragments other than the last: each
PDV's value goes to the store as a view of the buffer it was received in (no copy;
the store's writer writes and hashes it), and while the next PDU is already on the
socket the reader goes on with it instead of returning to the reactor. Everything
else, the PDU that holds the last fragment of the data set included, takes
pynetdicom's own path, so the message is completed, answered and released exactly
as before; so does every PDU when the state machine is not in Sta6, when events are
still queued, or when an item is malformed (pynetdicom then aborts as it would).
What the fast path leaves out for those PDUs is pynetdicom's notifications
(``EVT_DATA_RECV``, ``EVT_PDU_RECV``, ``EVT_FSM_TRANSITION`` Sta6 to Sta6), which
the SCP does not bind.

It replaces one method of pynetdicom's ``DULServiceProvider`` (``_read_pdu_data``)
per association, and only for the pynetdicom versions it was written against
(:data:`SUPPORTED_PYNETDICOM`); with any other the SCP keeps pynetdicom's path.
"""

from __future__ import annotations

import logging
import select
import ssl
import struct
import time
from io import BytesIO
from typing import Any

import pynetdicom
from pynetdicom.dimse_messages import C_STORE_RQ

from overread.service.store import IncomingObject

logger = logging.getLogger(__name__)

#: pynetdicom releases whose upper layer this module was checked against (major.minor).
SUPPORTED_PYNETDICOM = ("3.0",)

#: How long the reader waits for the next PDU before it returns to pynetdicom's
#: reactor, which would otherwise sleep this long (its ``_run_loop_delay``).
_NEXT_PDU_WAIT_S = 0.001
#: The longest the reader keeps reading PDUs before the reactor gets its turn.
_LOOP_S = 0.05

_PDU_TYPES = frozenset(range(0x01, 0x08))
_P_DATA_TF = 0x04
_UINT4 = struct.Struct(">L")


class StreamedDataSet(BytesIO):
    """Stands in for the in-memory buffer pynetdicom collects a C-STORE data set in.

    pynetdicom writes each data set fragment to ``DIMSEMessage.data_set`` as its
    P-DATA PDU is decoded, and :func:`install`'s reader writes the fragments it takes
    here too; this object passes each one on to an
    :class:`~overread.service.store.IncomingObject` instead, which writes and hashes
    it in a thread of its own while the next PDUs arrive. It holds nothing itself.
    """

    def __init__(self, incoming: IncomingObject) -> None:
        super().__init__()
        self.incoming = incoming

    def write(self, data: Any) -> int:
        chunk = data if isinstance(data, bytes | memoryview) else bytes(data)
        self.incoming.write(chunk)
        return len(chunk)


def supported(version: str | None = None) -> bool:
    """Whether pynetdicom ``version`` (the installed one by default) is one this module
    was written against."""
    parts = (version or pynetdicom.__version__).split(".")
    return ".".join(parts[:2]) in SUPPORTED_PYNETDICOM


def install(dul: Any) -> bool:
    """Use :func:`read_pdu` for the association whose upper layer is ``dul``; False
    (nothing changed) with an unsupported pynetdicom or an unexpected ``dul``."""
    if not supported() or not callable(getattr(dul, "_read_pdu_data", None)):
        return False
    dul._read_pdu_data = lambda: read_pdu(dul)
    return True


def read_pdu(dul: Any) -> None:
    """pynetdicom's ``DULServiceProvider._read_pdu_data``, with data set fragments of a
    streamed C-STORE taken straight to the store (see the module's description).

    The same events as pynetdicom's for what is read: Evt17 for a connection closed
    before the whole PDU arrived, Evt19 for an unknown PDU type or a PDU that does
    not decode, and the PDU's own event otherwise.
    """
    sock = dul.socket
    # The reactor gets its turn at least this often even while PDUs keep arriving.
    until = time.monotonic() + _LOOP_S
    while True:
        try:
            header = sock.recv(6)
            if len(header) != 6:
                dul.event_queue.put("Evt17")  # closed: nothing more to read
                return
            pdu_type = header[0]
            if pdu_type not in _PDU_TYPES:
                logger.error("Unknown PDU type received '0x%02X'", pdu_type)
                dul.event_queue.put("Evt19")
                return
            (length,) = _UINT4.unpack_from(header, 2)
            body = sock.recv(length)
        except OSError as exc:  # TimeoutError included
            logger.error("Connection closed before the entire PDU was received: %s", exc)
            dul.event_queue.put("Evt17")
            return
        if len(body) != length:
            logger.error(
                "The received PDU is shorter than expected (%d of %d bytes received)",
                6 + len(body),
                6 + length,
            )
            dul.event_queue.put("Evt17")
            return
        if pdu_type != _P_DATA_TF or not _take_fragments(dul, body):
            _decode(dul, header, body)
            return
        # pynetdicom restarts the idle timer once per PDU it reads; so must this loop,
        # or a long transfer with no pause would be aborted as idle.
        dul._idle_timer.restart()
        if time.monotonic() >= until or not _next_pdu_waiting(dul):
            return


def _decode(dul: Any, header: bytearray, body: bytearray) -> None:
    """The rest of pynetdicom's ``_read_pdu_data``: decode, queue event and PDU."""
    try:
        pdu, event = dul._decode_pdu(header + body)
        dul.event_queue.put(event)
    except Exception as exc:
        logger.error("Unable to decode the received PDU data")
        logger.exception(exc)
        dul.event_queue.put("Evt19")
        return
    dul._recv_pdu.put(pdu)


def _take_fragments(dul: Any, body: bytearray) -> bool:
    """Write the PDV values of the P-DATA-TF ``body`` to the streamed data set they
    continue, if that is all the PDU holds (see the module's description); False,
    with nothing written, otherwise."""
    if (
        dul.state_machine.current_state != "Sta6"
        or not dul.event_queue.empty()
        or not dul._recv_pdu.empty()
    ):
        return False
    message = dul.assoc.dimse.message
    if type(message) is not C_STORE_RQ:
        return False
    target = message.data_set
    if not isinstance(target, StreamedDataSet):
        return False
    view = memoryview(body)
    fragments: list[memoryview] = []
    offset, end = 0, len(body)
    while offset < end:
        if end - offset < 6:
            return False
        (item_length,) = _UINT4.unpack_from(body, offset)
        # Message Control Header (PS3.8 E.2): xxxxxx00, a data set fragment, not the
        # last, on the presentation context of the message it continues.
        if (
            item_length < 2
            or offset + 4 + item_length > end
            or body[offset + 5] & 0x03
            or body[offset + 4] != message.context_id
        ):
            return False
        fragments.append(view[offset + 6 : offset + 4 + item_length])
        offset += 4 + item_length
    if not fragments:
        return False
    for fragment in fragments:
        target.write(fragment)
    return True


def _next_pdu_waiting(dul: Any) -> bool:
    """Whether the reader should go on with the next PDU: it is (or within
    :data:`_NEXT_PDU_WAIT_S` is) on the socket and the reactor has nothing else to do."""
    if dul._kill_thread or dul.to_provider_queue.queue:
        return False
    raw = getattr(dul.socket, "socket", None)
    if raw is None:
        return False
    if isinstance(raw, ssl.SSLSocket) and raw.pending():
        return True
    try:
        ready, _, _ = select.select([raw], [], [], _NEXT_PDU_WAIT_S)
    except (OSError, ValueError):
        return False
    return bool(ready)


__all__ = ["SUPPORTED_PYNETDICOM", "StreamedDataSet", "install", "read_pdu", "supported"]
