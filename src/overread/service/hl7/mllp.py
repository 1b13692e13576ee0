"""MLLP transport: send a message and read its acknowledgement, and listen for
messages on a TCP port, answering each.

The listener answers every frame of a connection in turn, so one bad message gets
its negative acknowledgement and the messages after it on the same stream are still
read; whatever the handler raises becomes an ``AE``, never a dropped connection.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from collections.abc import Callable

from overread.service.hl7.acks import (
    AckCode,
    Acknowledgement,
    ErrorCode,
    build_ack,
    header_of,
    read_ack,
)
from overread.service.hl7.encoding import FrameReader, HL7MessageError, frame

logger = logging.getLogger(__name__)

#: What a listener does with a received message's text: return the answer's text.
MessageHandler = Callable[[str, str], str]


class AcknowledgementError(ConnectionError):
    """A sent message was not acknowledged with ``AA`` (an ``AE``/``AR``, no answer,
    or an answer to another message): the export is retried."""

    def __init__(self, message: str, ack: Acknowledgement | None = None) -> None:
        super().__init__(message)
        self.ack = ack


def send_message(
    host: str, port: int, er7: str, control_id: str, *, timeout: float
) -> Acknowledgement:
    """Send one message over MLLP and return its ``AA`` acknowledgement.

    Raises
    ------
    AcknowledgementError
        If the answer is ``AE``/``AR``, names another control ID, is unreadable, or
        does not come within ``timeout`` seconds.
    OSError
        If the peer cannot be reached.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(frame(er7))
        try:
            answer = FrameReader(sock).read()
        except TimeoutError:
            raise AcknowledgementError(
                f"no acknowledgement from {host}:{port} within {timeout:g} s"
            ) from None
    if answer is None:
        raise AcknowledgementError(f"{host}:{port} closed the connection without answering")
    try:
        ack = read_ack(answer.decode("utf-8", errors="replace"))
    except HL7MessageError as exc:
        raise AcknowledgementError(
            f"unreadable acknowledgement from {host}:{port}: {exc}"
        ) from None
    if ack.control_id != control_id:
        raise AcknowledgementError(
            f"{host}:{port} acknowledged message {ack.control_id!r}, not {control_id!r}", ack
        )
    if not ack.accepted:
        reason = f": {ack.text}" if ack.text else ""
        code = f" (error {int(ack.error)})" if ack.error is not None else ""
        raise AcknowledgementError(f"{host}:{port} answered {ack.code.value}{code}{reason}", ack)
    return ack


class _Connection(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        peer = f"{self.client_address[0]}:{self.client_address[1]}"
        sock.settimeout(self.server.idle_seconds)
        reader = FrameReader(sock)
        while True:
            try:
                content = reader.read()
            except (TimeoutError, OSError, HL7MessageError) as exc:
                logger.info("HL7 connection from %s ends: %s", peer, exc)
                return
            if content is None:
                return
            text = content.decode("utf-8", errors="replace")
            try:
                answer = self.server.handler(text, self.client_address[0])
            except Exception as exc:  # the handler's bug: an AE, never a dropped stream
                logger.exception("HL7 message from %s not handled", peer)
                answer = build_ack(
                    header_of(text),
                    AckCode.ERROR,
                    f"not processed: {exc}"[:200],
                    ErrorCode.INTERNAL_ERROR,
                )
            try:
                sock.sendall(frame(answer))
            except OSError as exc:
                logger.info("HL7 connection from %s ends: %s", peer, exc)
                return


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], handler: MessageHandler, idle: float) -> None:
        self.handler = handler
        self.idle_seconds = idle
        super().__init__(address, _Connection)


class MllpListener:
    """An MLLP server on ``host:port`` (0: any free port) answering every message
    with what ``handler(text, peer_host)`` returns."""

    def __init__(
        self, host: str, port: int, handler: MessageHandler, *, idle_seconds: float = 300.0
    ) -> None:
        self.host = host
        self.requested_port = port
        self.handler = handler
        self.idle_seconds = idle_seconds
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        """Bind and serve in a background thread; return the bound port."""
        self._server = _Server((self.host, self.requested_port), self.handler, self.idle_seconds)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="overread-hl7", daemon=True
        )
        self._thread.start()
        return self.port

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the HL7 listener is not started")
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop accepting and close the socket (connections being served finish)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None


__all__ = ["AcknowledgementError", "MessageHandler", "MllpListener", "send_message"]
