"""The DICOM C-STORE / C-ECHO SCP: receive, persist, then acknowledge.

The handler does as little as it can and nothing after it answers: it takes the
bytes exactly as the peer encoded them (``event.encoded_dataset()``, no decode and
re-encode), hands them to :class:`~overread.service.ingest.Ingestor` which fsyncs
the file and commits the row, and only then returns ``0x0000``. Failures map to
DICOM statuses, never to a false success:

* not DICOM, truncated, missing UIDs or a malformed Study, Series, SOP Instance or
  SOP Class UID: ``0xC000`` (cannot understand), with an Error Comment (for a
  malformed UID: which one and why); nothing is stored or processed, and the payload
  is kept under ``rejected/`` for inspection;
* disk full, database down, anything unexpected: ``0xA700`` (out of resources);
  also, before anything is written, while the disk is under the refuse watermark
  (:mod:`overread.service.diskspace`);
* a SOP Instance UID already stored: ``0x0000`` and no second copy.

Calling AE titles (and optionally hosts) are checked when the association is
requested; an unknown peer gets A-ASSOCIATE-RJ "calling AE title not recognised",
and a request addressed to another called AE title gets "called AE title not
recognised" (``check_called_ae``, on by default). Every refusal, of an association
or of an instance, is audited (``association-refused``, ``receive-refused``) with
its reason; when the database is what failed (0xA700) only the log keeps it.

Only requested associations count against ``max_associations``: a TCP connection
that has not sent its A-ASSOCIATE-RQ waits in :class:`~overread.service.admission.
ConnectionGate` (no pynetdicom threads, no slot) and is closed after
``association_request_seconds`` (5 s by default; pynetdicom's ARTIM timer, PS3.8
9.1.5, gets the same value for one that sent only part of it), so idle sockets, even
from a modality's own address, cannot keep it out. Past the limit a request gets
A-ASSOCIATE-RJ "local limit exceeded" (rejected-transient).

The same listener answers C-FIND and C-MOVE on the stored data
(:class:`~overread.service.qr_scp.QueryRetrieveSCP`); with ``allow_query_ae`` set, an
association that proposes only query/retrieve from another calling AE is refused as
"calling AE title not recognised", and a query on a mixed association is refused by
the request's status.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import Dataset
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dsutils import create_file_meta, encode_file_meta
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from overread.audit import AuditAction
from overread.errors import InvalidDicomError, InvalidUidError, ServiceError
from overread.service.admission import ConnectionGate
from overread.service.config import AllowedPeer, ServiceConfig
from overread.service.diskspace import InsufficientStorageError
from overread.service.ingest import Ingestor, IngestOutcome, record_refusal
from overread.service.pdata import StreamedDataSet
from overread.service.pdata import install as _install_fast_pdata
from overread.service.qr_scp import FIND_SOP_CLASSES, MOVE_SOP_CLASSES, QueryRetrieveSCP
from overread.service.store import (
    STALE_INCOMING_SECONDS,
    STALE_UNVERIFIED_INCOMING_SECONDS,
    IncomingObject,
)

logger = logging.getLogger(__name__)

VERIFICATION_SOP_CLASS = "1.2.840.10008.1.1"
STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
#: TLS handshakes in progress at once (see StorageSCP._handshake_then).
_MAX_HANDSHAKES = 64

#: pynetdicom's own association limit, out of reach (see StorageSCP._build_ae).
_UNCOUNTED_CONNECTIONS = 1_000_000


def _recv_exact(association_socket: Any, nr_bytes: int) -> bytearray:
    """Read ``nr_bytes`` from an association's socket into one preallocated buffer.

    Same contract as pynetdicom's ``AssociationSocket.recv`` (blocks until all bytes
    arrived; on a closed connection returns what was read), but it receives straight
    into the buffer in as few calls as the kernel allows instead of 4 KiB ``recv``
    calls appended to a growing ``bytearray``: a 128 KiB P-DATA PDU costs one or two
    system calls and no copies. Measured on loopback it raises pynetdicom's receive
    rate by about 1.6x (docs/benchmarks.md).

    Each call returns a new buffer, never reused: :mod:`overread.service.pdata` hands
    views of it to the store's writer thread, which may still be writing and hashing
    them while the next PDU is read.
    """
    raw: socket.socket = association_socket.socket
    buffer = bytearray(nr_bytes)
    view = memoryview(buffer)
    received = 0
    try:
        while received < nr_bytes:
            count = raw.recv_into(view[received:], nr_bytes - received)
            if not count:
                return buffer[:received]
            received += count
    finally:
        view.release()
    return buffer


class _SharedPortServer(ThreadedAssociationServer):
    """pynetdicom's threaded server on a listening socket shared by several processes.

    The gateway binds the port once, as any server does (no ``SO_REUSEPORT``: a
    second gateway on the same port fails with "address in use" rather than silently
    taking a share of the associations), and hands the listening socket to its
    receiver processes, whose servers use it instead of binding (``inherited``).
    Every process accepts without waiting: when another one took the connection
    first, the accept fails at once and the loop goes back to waiting, instead of
    blocking in ``accept`` (and in :meth:`shutdown`) until the next one arrives.
    """

    inherited: socket.socket | None = None

    def server_bind(self) -> None:
        if self.inherited is None:
            super().server_bind()
        else:
            if self.socket is not None:
                self.socket.close()
            self.socket = self.inherited
            self.server_address = self.inherited.getsockname()
        if self.socket is not None:
            self.socket.settimeout(0)

    def server_activate(self) -> None:
        if self.inherited is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, Any]:
        # Where accepted sockets inherit the listener's O_NONBLOCK (BSD, macOS),
        # pynetdicom's blocking reads would fail: make each one blocking.
        if self.socket is None:
            raise OSError("the DICOM server socket is closed")
        connection, address = self.socket.accept()
        connection.setblocking(True)
        return connection, address

    def server_close(self) -> None:
        # Close this process's descriptor only. pynetdicom's server_close() first
        # shuts the socket down, and a shutdown of a listening socket that other
        # processes share stops it listening for all of them.
        if self.socket is not None:
            self.socket.close()


class _CheaplyCopiedContext(PresentationContext):
    """A supported presentation context whose ``deepcopy`` is a field-by-field copy.

    pynetdicom deep-copies the server's supported contexts for every association it
    accepts, so that negotiation never changes the server's own list. With every
    storage SOP class and every transfer syntax (about 170 x 45 UIDs) that copy costs
    about 40 ms of CPU per association, rebuilding each immutable UID through its
    validation. The fields are immutable values and one list of UIDs, so copying
    the list is the same copy for a fraction of the price.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> PresentationContext:
        copied = PresentationContext.__new__(PresentationContext)
        copied.__dict__.update(
            {k: list(v) if isinstance(v, list) else v for k, v in self.__dict__.items()}
        )
        return copied


def _cheaply_copied(contexts: list[PresentationContext]) -> list[PresentationContext]:
    """``contexts`` as :class:`_CheaplyCopiedContext` items (same fields)."""
    items: list[PresentationContext] = []
    for context in contexts:
        item = _CheaplyCopiedContext()
        item.__dict__.update(copy.deepcopy(context).__dict__)
        items.append(item)
    return items


def _only_query_retrieve(primitive: Any) -> bool:
    """Whether an A-ASSOCIATE-RQ proposes query/retrieve (and verification) only."""
    proposed = {
        str(c.abstract_syntax)
        for c in getattr(primitive, "presentation_context_definition_list", None) or []
    }
    asked = proposed - {VERIFICATION_SOP_CLASS}
    return bool(asked) and asked <= {*FIND_SOP_CLASSES, *MOVE_SOP_CLASSES}


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


class StorageSCP:
    """A pynetdicom Storage SCP bound to an :class:`Ingestor`.

    Parameters
    ----------
    config
        AE title, port, peers, SOP classes and transfer syntaxes.
    ingestor
        Persists each instance before the handler answers.
    on_released
        Called with the Study Instance UIDs an association brought, when the peer
        releases it normally (the study assembler completes chest X-rays on this).
    rejected_dir
        Where refused payloads are kept (``None``: not kept).
    shared_port
        Other receiving processes (see :mod:`overread.service.receivers`) accept on
        this SCP's listening socket (:attr:`listening_socket`) too.
    listening_socket
        In such a receiving process: the gateway's listening socket, used instead of
        binding the port.
    """

    def __init__(
        self,
        config: ServiceConfig,
        ingestor: Ingestor,
        *,
        on_released: Callable[[set[str]], None] | None = None,
        rejected_dir: Path | None = None,
        shared_port: bool = False,
        listening_socket: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.ingestor = ingestor
        self.shared_port = shared_port or listening_socket is not None
        self._inherited = listening_socket
        self._sweeping = threading.Event()
        self.on_released = on_released
        self.rejected_dir = rejected_dir
        self._studies: dict[int, set[str]] = {}
        self._requested: set[int] = set()
        # Objects being received per association whose C-STORE handler has not yet
        # taken them: discarded if the connection closes first.
        self._arriving: dict[int, list[IncomingObject]] = {}
        # Stopping: no new instance is taken (see stop()); C-STORE handlers at work.
        self._stopping = False
        self._closed = False
        self._storing = 0
        self._lock = threading.Lock()
        # TLS handshakes at once; past it a new one is closed (a flood cannot pile up
        # threads); each has one deadline for the whole handshake.
        self._handshakes = threading.BoundedSemaphore(_MAX_HANDSHAKES)
        self._server: Any = None
        self._gate: ConnectionGate | None = None
        self.query = QueryRetrieveSCP(config, ingestor.database, ingestor.store)
        self.ae = self._build_ae()

    def _build_ae(self) -> AE:
        ae = AE(ae_title=self.config.ae_title)
        # pynetdicom counts every accepted TCP connection, silent ones included: its
        # check is set out of reach and _on_requested applies the limit to requested
        # associations only.
        ae.maximum_associations = _UNCOUNTED_CONNECTIONS
        ae.maximum_pdu_size = 0  # no limit: fewer, larger PDUs on fast links
        ae.network_timeout = 60
        ae.acse_timeout = 30
        ae.dimse_timeout = 60
        syntaxes = self.config.transfer_syntaxes or list(ALL_TRANSFER_SYNTAXES)
        if self.config.sop_classes:
            for uid in self.config.sop_classes:
                ae.add_supported_context(uid, syntaxes)
        else:
            for context in AllStoragePresentationContexts:
                ae.add_supported_context(str(context.abstract_syntax), syntaxes)
        ae.add_supported_context(VERIFICATION_SOP_CLASS)
        for uid in (*FIND_SOP_CLASSES, *MOVE_SOP_CLASSES):
            ae.add_supported_context(uid)
        return ae

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> int:
        """Listen (non-blocking) and return the bound port (useful with port 0)."""
        if not self.config.allow_ae:
            logger.warning(
                "no --allow-ae given: associations from ANY calling AE title are accepted"
            )
        if not self.config.allow_query_ae:
            logger.warning("no --allow-query-ae given: ANY calling AE title may C-FIND and C-MOVE")
        handlers: list[Any] = [
            (evt.EVT_CONN_OPEN, self._on_connection),
            (evt.EVT_CONN_CLOSE, self._on_connection_closed),
            (evt.EVT_REQUESTED, self._on_requested),
            (evt.EVT_C_STORE, self._on_c_store),
            (evt.EVT_C_ECHO, self._on_c_echo),
            (evt.EVT_C_FIND, self.query.on_c_find),
            (evt.EVT_C_MOVE, self.query.on_c_move),
            (evt.EVT_RELEASED, self._on_released),
            (evt.EVT_ABORTED, self._on_aborted),
        ]
        try:
            self._server = self._listen(handlers)
        except OSError as exc:
            raise ServiceError(
                f"cannot listen for DICOM on {self.config.dicom_host}:{self.config.dicom_port}: {exc}"
            ) from None
        # socketserver listens with a backlog of 5: a burst of connections (a flood
        # of idle sockets above all) would leave a real peer's SYN unanswered for
        # seconds. Listening again on the bound socket only raises the backlog.
        self._server.socket.listen(socket.SOMAXCONN)
        # Silent connections wait in the gate, not in pynetdicom's threads; with TLS
        # the handshake happens after it too, in a thread of its own, never in the
        # accept loop (pynetdicom's ssl_context would make one silent peer stall it).
        handoff = self._server.process_request
        if self.config.dicom_tls:
            context = self._tls_context()
            handoff = functools.partial(self._handshake_then, context, handoff)
        self._gate = ConnectionGate(handoff, timeout=self.config.association_request_seconds)
        setattr(self._server, "process_request", self._gate.admit)  # noqa: B010
        self._gate.start()
        port = int(self._server.server_address[1])
        try:
            self.ingestor.store.prepare()
            self._remove_stale_incoming()
        except OSError as exc:  # every C-STORE will answer 0xA700 until this is fixed
            logger.error("object store %s is not writable: %s", self.ingestor.store.root, exc)
        if self._inherited is None:  # the gateway's own SCP sweeps for the store
            store = self.ingestor.store
            if store.network_filesystem:
                logger.warning(
                    "object store %s is on a network file system (%s) whose locks may not "
                    "be shared: a half-received object is removed only once its writer is "
                    "gone from this host, or after %.0f h unchanged",
                    store.root,
                    store.filesystem,
                    STALE_UNVERIFIED_INCOMING_SECONDS / 3600,
                )
            self._sweeping.clear()
            sweeper = threading.Thread(target=self._sweep, name="incoming-sweep", daemon=True)
            sweeper.start()
        logger.info("DICOM SCP %s listening on port %d", self.config.ae_title, port)
        return port

    def _sweep(self) -> None:
        """Remove half-received objects of writers that are gone, now and then, not
        only at start (a receiver killed mid-object leaves its file behind)."""
        while not self._sweeping.wait(STALE_INCOMING_SECONDS / 4):
            try:
                removed = self._remove_stale_incoming()
            except OSError as exc:
                logger.warning("sweeping half-received objects failed: %s", exc)
                continue
            if removed:
                logger.info("removed %d half-received object(s) left by a writer", removed)

    def _remove_stale_incoming(self) -> int:
        """The store's sweep of its incoming folder; the gateway's own SCP (the one
        process per data directory) also reports an object stored without its row."""
        recorded = self.ingestor.references if self._inherited is None else None
        return self.ingestor.store.remove_stale_incoming(recorded=recorded)

    def _listen(self, handlers: list[Any]) -> Any:
        server = self._serve(handlers)
        server.contexts = _cheaply_copied(server.contexts)
        return server

    def _serve(self, handlers: list[Any]) -> Any:
        address = (self.config.dicom_host, self.config.dicom_port)
        if not self.shared_port:
            return self.ae.start_server(address, block=False, evt_handlers=handlers)
        # What AE.start_server(block=False) does, with the shared socket's server.
        server_class = type(
            "_SharedPortServer", (_SharedPortServer,), {"inherited": self._inherited}
        )
        server = self.ae.make_server(address, evt_handlers=handlers, server_class=server_class)
        thread = threading.Thread(target=server.serve_forever, name="dicom-acceptor", daemon=True)
        thread.start()
        self.ae._servers.append(server)
        return server

    def _tls_context(self) -> ssl.SSLContext:
        """The server side of DICOM TLS (BCP 195: TLS 1.2 or later)."""
        config = self.config
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_cert_chain(str(config.dicom_tls_cert_file), str(config.dicom_tls_key_file))
            if config.dicom_tls_ca_file is not None:
                context.load_verify_locations(cafile=str(config.dicom_tls_ca_file))
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ServiceError(f"DICOM TLS: cannot load the certificate or key: {exc}") from None
        return context

    def _handshake_then(
        self,
        context: ssl.SSLContext,
        handoff: Callable[[Any, Any], None],
        connection: socket.socket,
        address: Any,
    ) -> None:
        """Do the TLS handshake in its own thread, then hand the connection on."""
        host = str(address[0]) if isinstance(address, tuple) else str(address)
        if not self._handshakes.acquire(blocking=False):
            logger.warning("%d TLS handshakes in progress: closing %s", _MAX_HANDSHAKES, host)
            with contextlib.suppress(OSError):
                connection.close()
            return

        def handshake() -> None:
            try:
                # Python's TLS layer applies the socket timeout to the whole handshake:
                # one deadline, however slowly a peer trickles its bytes.
                connection.settimeout(self.config.association_request_seconds)
                secure = context.wrap_socket(connection, server_side=True)
            except (ssl.SSLError, OSError) as exc:
                with contextlib.suppress(OSError):
                    connection.close()
                self._audit_association_refusal(
                    f"tls:{host}", host, f"TLS handshake with {host} failed: {exc}"
                )
                return
            finally:
                self._handshakes.release()
            secure.settimeout(None)
            handoff(secure, address)

        try:
            threading.Thread(target=handshake, name="dicom-tls-handshake", daemon=True).start()
        except RuntimeError:  # no thread to be had: the slot goes back, the peer goes
            self._handshakes.release()
            raise

    @property
    def port(self) -> int:
        """The port the server is bound to."""
        if self._server is None:
            raise ServiceError("the SCP is not started")
        return int(self._server.server_address[1])

    @property
    def listening_socket(self) -> socket.socket:
        """The bound, listening socket (after :meth:`start`): what receiver processes
        accept on."""
        if self._server is None or self._server.socket is None:
            raise ServiceError("the DICOM SCP is not listening")
        sock: socket.socket = self._server.socket
        return sock

    def stop(self, drain_seconds: float = 0.0) -> None:
        """Stop accepting associations and close the listening socket.

        With ``drain_seconds``, then wait (that long at most) for the instances in
        flight to be stored: each one whose data set had started to arrive, or whose
        C-STORE handler was at work, is stored with its row and acknowledged; any
        other C-STORE on an association still open is refused (``0xA700``, the
        sender keeps it and sends it again). After this returns no instance is
        taken any more, and the associations still open are aborted, so the process
        may exit without leaving an object in the store without its row (one at work
        past the wait is the exception, which the gateway's sweep reports).
        """
        with self._lock:
            self._stopping = True
        self._sweeping.set()
        server = self._server
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        if self._gate is not None:
            self._gate.stop()
            self._gate = None
        deadline = time.monotonic() + max(0.0, drain_seconds)
        while True:
            with self._lock:
                busy = self._storing + sum(len(a) for a in self._arriving.values())
                if not busy or time.monotonic() >= deadline:
                    self._closed = True
                    break
            time.sleep(0.02)
        if busy:
            logger.warning(
                "%d instance(s) still arriving or being stored after %.0f s; "
                "the receiver stops without them",
                busy,
                drain_seconds,
            )
        if drain_seconds > 0 and server is not None:
            # Their DUL threads would otherwise keep the process until they end.
            for assoc in list(server.active_associations):
                with contextlib.suppress(Exception):
                    assoc.abort()

    # -- handlers ---------------------------------------------------------------------
    def _admitted(self, ae_title: str, host: str) -> bool:
        peers: list[AllowedPeer] = self.config.allow_ae
        return not peers or any(p.admits(ae_title, host) for p in peers)

    @property
    def silent_connections(self) -> int:
        """Connections accepted that have not yet sent anything."""
        return 0 if self._gate is None else self._gate.waiting

    @property
    def requested_associations(self) -> int:
        """Associations that sent an A-ASSOCIATE-RQ and hold a slot now."""
        with self._lock:
            return len(self._requested)

    def _on_connection(self, event: evt.Event) -> None:
        """Time a new connection out if it stays silent; tune its receive path."""
        # The ARTIM timer runs from the connection until the A-ASSOCIATE-RQ arrives.
        event.assoc.dul.artim_timer.timeout = self.config.association_request_seconds
        dimse = getattr(event.assoc, "dimse", None)
        receive = getattr(dimse, "receive_primitive", None)
        if receive is not None:
            setattr(  # noqa: B010
                dimse,
                "receive_primitive",
                functools.partial(self._receive_primitive, event.assoc, receive),
            )
        # Data set fragments of a streamed C-STORE skip pynetdicom's PDU decoding.
        _install_fast_pdata(event.assoc.dul)
        association_socket = getattr(event.assoc.dul, "socket", None)
        raw = getattr(association_socket, "socket", None)
        if association_socket is None or not isinstance(raw, socket.socket):
            return
        with contextlib.suppress(OSError):  # not TCP: keep the defaults
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        setattr(association_socket, "recv", functools.partial(_recv_exact, association_socket))  # noqa: B010

    def _receive_primitive(
        self, assoc: Any, receive: Callable[[Any], None], primitive: Any
    ) -> None:
        """pynetdicom's P-DATA receive, then: once a C-STORE request's command set is
        decoded and its data set is still to come, the data set goes to the store as
        it arrives (see :class:`StreamedDataSet`). Runs in the association's DUL
        thread, PDU by PDU."""
        before = assoc.dimse.message
        streamed = getattr(before, "data_set", None)
        receive(primitive)
        message = assoc.dimse.message
        if isinstance(streamed, StreamedDataSet):
            if message is not before:  # the last fragment came: the fsync can start
                streamed.incoming.end()
            return
        if (
            type(message) is not C_STORE_RQ
            or isinstance(message.data_set, StreamedDataSet)
            or getattr(message, "_data_set_file", None) is not None  # pynetdicom's own
        ):
            return
        incoming = self._start_incoming(assoc, message)
        if incoming is None:  # the data set is collected in memory, as pynetdicom does
            return
        already = message.data_set.getvalue() if message.data_set is not None else b""
        message.data_set = StreamedDataSet(incoming)
        incoming.write(already)

    def _start_incoming(self, assoc: Any, message: Any) -> IncomingObject | None:
        """A store object for the data set ``message`` announces, its Part 10 preamble
        and File Meta Information written first (the bytes of
        ``event.encoded_dataset()``); None to leave the data set to pynetdicom (a
        context or command pynetdicom will refuse, a disk under the refuse watermark,
        an unwritable store: the handler then answers as it always did)."""
        try:
            command = message.command_set
            context = assoc._accepted_cx[message.context_id]
            meta = encode_file_meta(
                create_file_meta(
                    sop_class_uid=command.AffectedSOPClassUID,
                    sop_instance_uid=command.AffectedSOPInstanceUID,
                    transfer_syntax=context.transfer_syntax[0],
                )
            )
        except Exception:
            return None
        if self._stopping:  # refused by the handler: nothing written
            return None
        if self.ingestor.disk is not None:
            try:
                self.ingestor.disk.check()
            except InsufficientStorageError:
                return None
        try:
            incoming = self.ingestor.store.receive()
        except OSError as exc:
            logger.warning("cannot write an arriving instance to the store: %s", exc)
            return None
        incoming.write(b"\x00" * 128 + b"DICM" + meta)
        with self._lock:
            self._arriving.setdefault(id(assoc), []).append(incoming)
        return incoming

    def _take_incoming(self, assoc: Any, incoming: IncomingObject) -> None:
        with self._lock:
            arriving = self._arriving.get(id(assoc), [])
            if incoming in arriving:
                arriving.remove(incoming)

    def _on_connection_closed(self, event: evt.Event) -> None:
        with self._lock:
            self._requested.discard(id(event.assoc))
            arriving = self._arriving.pop(id(event.assoc), [])
        for incoming in arriving:  # cut off mid-transfer, or never handled
            incoming.discard()

    def _on_requested(self, event: evt.Event) -> None:
        assoc = event.assoc
        # From here on ARTIM guards the release, with the usual ACSE timeout.
        assoc.dul.artim_timer.timeout = self.ae.acse_timeout
        primitive = assoc.requestor.primitive
        calling = str(getattr(primitive, "calling_ae_title", "") or "").strip()
        called = str(getattr(primitive, "called_ae_title", "") or "").strip()
        host = str(assoc.requestor.address)
        if not self._admitted(calling, host):
            reason = f"calling AE {calling!r} from {host} is not allowed (see --allow-ae)"
            # A-ASSOCIATE-RJ: rejected-permanent, service-user, calling AE not recognised
            self._refuse_association(assoc, calling, host, reason, (0x01, 0x01, 0x03))
            return
        if not self.query.may_query(calling, host) and _only_query_retrieve(primitive):
            reason = f"calling AE {calling!r} from {host} may not query (see --allow-query-ae)"
            self._refuse_association(assoc, calling, host, reason, (0x01, 0x01, 0x03))
            return
        if self.config.check_called_ae and called != self.config.ae_title.strip():
            reason = (
                f"called AE {called!r} from {calling!r} at {host} is not this gateway's "
                f"{self.config.ae_title!r}"
            )
            # A-ASSOCIATE-RJ: rejected-permanent, service-user, called AE not recognised
            self._refuse_association(assoc, calling, host, reason, (0x01, 0x01, 0x07))
            return
        with self._lock:
            full = len(self._requested) >= self.config.max_associations
            if not full:
                self._requested.add(id(assoc))
        if full:
            reason = (
                f"{self.config.max_associations} associations already open "
                f"(max_associations); calling AE {calling!r} from {host}"
            )
            # A-ASSOCIATE-RJ: rejected-transient, service-provider (presentation),
            # local limit exceeded
            self._refuse_association(assoc, calling, host, reason, (0x02, 0x03, 0x02))

    def _refuse_association(
        self, assoc: Any, calling: str, host: str, reason: str, rejection: tuple[int, int, int]
    ) -> None:
        # Audited before the peer hears of it, as a stored instance is before 0x0000.
        self._audit_association_refusal(f"ae:{calling}", host, reason)
        assoc.acse.send_reject(*rejection)
        assoc.kill()  # waits until the DUL has sent the A-ASSOCIATE-RJ

    def _audit_association_refusal(self, actor: str, host: str, reason: str) -> None:
        logger.warning("association refused: %s", reason)
        record_refusal(
            self.ingestor.database,
            actor=actor,
            action=AuditAction.ASSOCIATION_REFUSED,
            peer_host=host,
            reason=reason,
        )

    def _refuse_instance(
        self, calling: str, host: str, status: int, reason: str, uids: tuple[str, ...] = ()
    ) -> Dataset:
        record_refusal(
            self.ingestor.database,
            actor=f"ae:{calling}",
            action=AuditAction.RECEIVE_REFUSED,
            peer_host=host,
            reason=reason,
            object_uids=uids,
            status=status,
        )
        return _status(status, reason)

    def _on_c_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def _on_c_store(self, event: evt.Event) -> int | Dataset:
        calling = str(event.assoc.requestor.ae_title).strip()
        host = str(event.assoc.requestor.address)
        streamed = getattr(event.request, "DataSet", None)
        with self._lock:
            # Once stopping, only an instance that had started to arrive is taken;
            # once stopped, none.
            taken = not self._closed and (
                not self._stopping or isinstance(streamed, StreamedDataSet)
            )
            if taken:
                self._storing += 1
        if not taken:
            if isinstance(streamed, StreamedDataSet):
                self._take_incoming(event.assoc, streamed.incoming)
                streamed.incoming.discard()
            logger.warning("C-STORE from %s refused: the receiver is stopping", calling)
            return self._refuse_instance(
                calling, host, STATUS_OUT_OF_RESOURCES, "the receiver is stopping"
            )
        try:
            return self._store(event, calling, host, streamed)
        finally:
            with self._lock:
                self._storing -= 1

    def _store(self, event: evt.Event, calling: str, host: str, streamed: Any) -> int | Dataset:
        source = f"C-STORE from {calling}@{host}"
        if isinstance(streamed, StreamedDataSet):
            incoming = streamed.incoming
            self._take_incoming(event.assoc, incoming)
            try:
                return self._persist(
                    event,
                    calling,
                    host,
                    lambda: self.ingestor.ingest_incoming(
                        incoming, calling_ae=calling, peer_host=host, source=source
                    ),
                    lambda: self._keep_rejected_incoming(incoming, calling),
                )
            finally:
                incoming.discard()
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # malformed request: nothing to store
            logger.error("C-STORE from %s: unreadable request (%s)", calling, exc)
            return self._refuse_instance(
                calling, host, STATUS_CANNOT_UNDERSTAND, "unreadable request"
            )
        return self._persist(
            event,
            calling,
            host,
            lambda: self.ingestor.ingest(data, calling_ae=calling, peer_host=host, source=source),
            lambda: self._keep_rejected(data, calling),
        )

    def _persist(
        self,
        event: evt.Event,
        calling: str,
        host: str,
        ingest: Callable[[], IngestOutcome],
        keep_rejected: Callable[[], None],
    ) -> int | Dataset:
        """Run ``ingest`` and map its outcome to the C-STORE status."""
        try:
            outcome = ingest()
        except InvalidUidError as exc:
            logger.error("C-STORE refused: %s", exc)
            keep_rejected()
            return self._refuse_instance(
                calling, host, STATUS_CANNOT_UNDERSTAND, exc.comment, (exc.sop_instance_uid,)
            )
        except InvalidDicomError as exc:
            logger.error("%s", exc)
            keep_rejected()
            return self._refuse_instance(
                calling, host, STATUS_CANNOT_UNDERSTAND, "not a readable DICOM data set"
            )
        except InsufficientStorageError as exc:  # refused before the disk is full
            logger.error("C-STORE from %s refused: %s", calling, exc)
            return self._refuse_instance(calling, host, STATUS_OUT_OF_RESOURCES, str(exc))
        except Exception as exc:  # disk full, database down: never report success
            logger.exception("C-STORE from %s: cannot persist (%s)", calling, exc)
            return self._refuse_instance(
                calling, host, STATUS_OUT_OF_RESOURCES, "cannot persist the instance"
            )
        with self._lock:
            self._studies.setdefault(id(event.assoc), set()).add(outcome.study_instance_uid)
        return STATUS_SUCCESS

    def _on_released(self, event: evt.Event) -> None:
        with self._lock:
            studies = self._studies.pop(id(event.assoc), set())
        if studies and self.on_released is not None:
            try:
                self.on_released(studies)
            except Exception:
                logger.exception("study completion on association release failed")

    def _on_aborted(self, event: evt.Event) -> None:
        with self._lock:
            self._studies.pop(id(event.assoc), None)

    def _rejected_path(self, calling: str) -> Path | None:
        if self.rejected_dir is None:
            return None
        self.rejected_dir.mkdir(parents=True, exist_ok=True)
        peer = "".join(c if c.isalnum() else "_" for c in calling) or "UNKNOWN"
        name = f"{time.strftime('%Y%m%dT%H%M%S')}-{time.monotonic_ns()}-{peer}.bin"
        return self.rejected_dir / name

    def _keep_rejected(self, data: bytes, calling: str) -> None:
        try:
            path = self._rejected_path(calling)
            if path is not None:
                path.write_bytes(data)
        except OSError as exc:
            logger.warning("could not keep the rejected payload: %s", exc)

    def _keep_rejected_incoming(self, incoming: IncomingObject, calling: str) -> None:
        try:
            path = self._rejected_path(calling)
            if path is not None:
                incoming.keep_as(path)
        except OSError as exc:  # a failed write included: kept as *.incomplete
            logger.warning("the rejected payload is not kept whole: %s", exc)


__all__ = [
    "STATUS_CANNOT_UNDERSTAND",
    "STATUS_OUT_OF_RESOURCES",
    "STATUS_SUCCESS",
    "StorageSCP",
]
