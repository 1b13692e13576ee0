"""Admission of DICOM connections: nothing is spent on a socket that stays silent.

pynetdicom starts two polling threads for every accepted TCP connection and counts
it against the association limit before it has said a word, so a hundred idle
sockets hold every slot and slow the whole process down (a C-ECHO took 13 s with
100 idle sockets on a 2-core node). :class:`ConnectionGate` sits between the
listening socket and pynetdicom: an accepted connection waits in one selector
thread until its first bytes (the A-ASSOCIATE-RQ) arrive, and only then is handed
on; one that stays silent for ``timeout`` seconds is closed. At most ``capacity``
connections wait at once; past that the longest-waiting one is closed first.
"""

from __future__ import annotations

import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

Handoff = Callable[[socket.socket, object], None]


@dataclass
class _Waiting:
    connection: socket.socket
    address: object
    since: float


class ConnectionGate:
    """Hold accepted connections until they send something.

    Parameters
    ----------
    handoff
        Called (from the gate's thread) with ``(connection, address)`` once the
        connection has bytes to read; it must not block for long.
    timeout
        Seconds a connection may stay silent.
    capacity
        Connections waiting at once.
    """

    def __init__(self, handoff: Handoff, *, timeout: float, capacity: int = 1024) -> None:
        self.handoff = handoff
        self.timeout = timeout
        self.capacity = capacity
        self._selector = selectors.DefaultSelector()
        self._waiting: dict[int, _Waiting] = {}
        self._lock = threading.Lock()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._selector.register(self._wake_read, selectors.EVENT_READ)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dicom-admission", daemon=True)
        self.closed_silent = 0

    def start(self) -> None:
        """Start the gate's thread."""
        self._thread.start()

    def stop(self) -> None:
        """Close every waiting connection and stop the thread."""
        self._stopped.set()
        self._wake()
        self._thread.join(timeout=5)
        with self._lock:
            for item in list(self._waiting.values()):
                self._drop(item)
            self._waiting.clear()
        self._selector.close()
        self._wake_read.close()
        self._wake_write.close()

    @property
    def waiting(self) -> int:
        """Connections accepted and still silent."""
        with self._lock:
            return len(self._waiting)

    def admit(self, connection: socket.socket, address: object) -> None:
        """Hold ``connection`` until it is readable (called by the accept loop)."""
        with self._lock:
            if self._stopped.is_set():
                _close(connection)
                return
            if len(self._waiting) >= self.capacity:
                oldest = min(self._waiting.values(), key=lambda w: w.since)
                logger.warning(
                    "%d connections wait for an A-ASSOCIATE-RQ: closing the oldest, from %s",
                    len(self._waiting),
                    oldest.address,
                )
                self._forget(oldest)
                self._drop(oldest)
            item = _Waiting(connection, address, time.monotonic())
            self._waiting[connection.fileno()] = item
            self._selector.register(connection, selectors.EVENT_READ, item)
        self._wake()

    # -- the gate's thread ----------------------------------------------------------
    def _run(self) -> None:
        while not self._stopped.is_set():
            try:
                events = self._selector.select(timeout=self._next_deadline())
            except (OSError, ValueError):  # closed under us while stopping
                return
            ready: list[_Waiting] = []
            with self._lock:
                for key, _ in events:
                    if key.fileobj is self._wake_read:
                        with contextlib.suppress(OSError):
                            self._wake_read.recv(4096)
                        continue
                    item = key.data
                    if isinstance(item, _Waiting) and self._forget(item):
                        ready.append(item)
                expired = self._expired()
            for item in ready:
                self._hand_off(item)
            for item in expired:
                self.closed_silent += 1
                logger.info(
                    "connection from %s sent no A-ASSOCIATE-RQ in %.0f s: closed",
                    item.address,
                    self.timeout,
                )
                self._drop(item)

    def _next_deadline(self) -> float:
        with self._lock:
            if not self._waiting:
                return 1.0
            oldest = min(w.since for w in self._waiting.values())
        return max(0.0, oldest + self.timeout - time.monotonic()) + 0.01

    def _expired(self) -> list[_Waiting]:
        now = time.monotonic()
        late = [w for w in self._waiting.values() if now - w.since >= self.timeout]
        for item in late:
            self._forget(item)
        return late

    def _forget(self, item: _Waiting) -> bool:
        """Stop watching ``item`` (lock held); False when it was already gone."""
        fileno = next((f for f, w in self._waiting.items() if w is item), None)
        if fileno is None:
            return False
        del self._waiting[fileno]
        with contextlib.suppress(KeyError, ValueError, OSError):
            self._selector.unregister(item.connection)
        return True

    def _hand_off(self, item: _Waiting) -> None:
        try:
            self.handoff(item.connection, item.address)
        except Exception:
            logger.exception("connection from %s could not be handed on", item.address)
            self._drop(item)

    def _drop(self, item: _Waiting) -> None:
        _close(item.connection)

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_write.send(b"\0")


def _close(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        connection.close()


__all__ = ["ConnectionGate"]
