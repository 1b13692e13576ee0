"""More processes receiving on the gateway's DICOM port (``serve --receivers N``).

One Python process receives every association under one interpreter lock; with
several modalities sending at once that lock, not the disk, is the limit. With
``dicom_receivers`` N > 1 the gateway's own :class:`~overread.service.scp.StorageSCP`
binds the port (once: a second gateway on it fails with "address in use") and N - 1
child processes each run a Storage SCP accepting on that same listening socket, handed
to them when they start (whichever process is free takes the next connection), all
writing into
the same object store and database: the store's writes are per file and its
clean-up lock is a file lock, the database serialises commits (SQLite in WAL mode,
or PostgreSQL), and the audit chain takes its lock in the database, so nothing in
the receive path depends on being in one process.

What does depend on it is what happens after a commit: the study assembler and
the workers run in the gateway process only. A child therefore sends each event the
gateway reacts to (an instance stored; an association released, with its studies)
to the gateway, which handles it exactly as if its own SCP had raised it (study
completion on release, the assembler's wake-up, the ingest metrics). The rows are
committed before the event is sent, so the gateway never sees a study before its
instances.

Each child has a channel of its own (a Unix socket pair, one end in the child, one
read by the gateway), never a queue shared by all: nothing is locked across
processes, so a child killed (SIGKILL, out of memory) in the middle of sending an
event cannot wedge the gateway or the other children. Its channel just reaches its
end; what it sent whole before is still delivered, and a message it left half-sent
(length-prefixed frames: the bytes after the last whole frame) is logged and
dropped. Nothing is lost with it: the event only tells the gateway sooner what the
database already holds. An instance's row is committed, and its study marked
``receiving`` with a new ``last_instance_at``, before the event is sent, and the
assembler's sweep (every half second, woken or not) completes every study that has
been stable for ``stable_seconds``; a lost release event only delays a study that
would have completed on release until that rule; a lost "stored" event leaves one
instance out of the gateway's ingest metrics, nothing else.

If a child dies, its connections end, the gateway's other receivers keep the port,
and the gateway reaps the child, logs it and starts another in its place (a child
that exits before it listens fails the start at once). A child whose gateway has
gone stops listening within a second. Each child caps its malloc arenas and gives
freed memory back as the gateway does (``malloc_arena_max``, ``malloc_trim_seconds``).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import queue
import selectors
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overread.errors import ServiceError
from overread.service.config import ServiceConfig
from overread.service.db import Database
from overread.service.diskspace import DiskGuard
from overread.service.ingest import Ingestor, IngestOutcome
from overread.service.memory import MemoryTrimmer, apply_arena_max
from overread.service.scp import StorageSCP
from overread.service.store import ObjectStore

logger = logging.getLogger(__name__)

#: How often the gateway looks for a child that exited.
_WATCH_SECONDS = 0.25
#: A child that exited is started again after this long, doubled for each exit in a
#: row (a child that cannot run does not spin), up to :data:`_RESTART_MAX_SECONDS`.
_RESTART_SECONDS = 5.0
_RESTART_MAX_SECONDS = 300.0

#: Each event is a frame: its length (4 bytes, big-endian) and then its pickle.
_HEADER = struct.Struct("!I")
#: A frame longer than this is not an event: the channel is corrupt and is dropped.
_MAX_FRAME = 64 * 1024 * 1024

#: Tests only: the path of a file; the child that removes it first sends half of its
#: next event and kills itself (SIGKILL), as a child killed mid-send would.
TEAR_ENV = "OVERREAD_TEST_RECEIVER_TEAR_FILE"
#: Tests only: seconds a child waits after placing each object in the store, before
#: its row is committed (a slow transfer's last step, stretched).
SLOW_STORE_ENV = "OVERREAD_TEST_RECEIVER_SLOW_STORE"

#: A stopping child waits this much less than the gateway's stop timeout for its
#: instances in flight, so that it exits by itself before it is terminated.
_DRAIN_MARGIN_SECONDS = 2.0


def association_shares(limit: int, processes: int) -> list[int]:
    """``max_associations`` split over the receiving processes (the gateway's first):
    ``limit // processes`` each and one more for the first ``limit % processes``, so
    that together they admit exactly ``limit``; each at least 1 (with fewer
    associations than processes allowed, the total is ``processes``)."""
    base, extra = divmod(limit, processes)
    return [max(1, base + (1 if number < extra else 0)) for number in range(processes)]


def _slow_store(store: ObjectStore, seconds: float) -> None:
    adopt = store.adopt

    def slowly(incoming: Any) -> Any:
        stored = adopt(incoming)
        time.sleep(seconds)
        return stored

    setattr(store, "adopt", slowly)  # noqa: B010


def encode_event(kind: str, value: Any) -> bytes:
    """One event as the frame a child writes on its channel."""
    payload = pickle.dumps((kind, value), protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(payload)) + payload


class EventSender:
    """A child's end of its channel: whole frames, one thread at a time.

    Sending never raises: once the gateway is gone (broken channel) events are dropped,
    and the child stops by itself when it notices its parent changed.
    """

    def __init__(self, channel: socket.socket) -> None:
        self._channel = channel
        self._lock = threading.Lock()
        self._broken = False
        self._tear = os.environ.get(TEAR_ENV) or None

    def send(self, kind: str, value: Any) -> None:
        frame = encode_event(kind, value)
        with self._lock:
            if self._broken:
                return
            try:
                if self._tear is not None and kind == "stored" and self._claim_tear():
                    self._channel.sendall(frame[: len(frame) // 2])
                    os.kill(os.getpid(), signal.SIGKILL)
                self._channel.sendall(frame)
            except OSError as exc:
                self._broken = True
                logger.warning("the gateway no longer reads this receiver's events: %s", exc)

    def _claim_tear(self) -> bool:
        assert self._tear is not None
        try:
            os.unlink(self._tear)
        except FileNotFoundError:
            return False
        return True


class EventReader:
    """The gateway's ends of the children's channels, read by one thread.

    Whole frames are decoded and handed to ``deliver`` in the order each channel sent
    them; a channel that ends (its child exited or was killed) is closed, and the
    bytes of a frame it left unfinished are logged and dropped.
    """

    def __init__(self, deliver: Callable[[str, Any], None]) -> None:
        self._deliver = deliver
        self._selector = selectors.DefaultSelector()
        self._pending: list[socket.socket] = []
        self._lock = threading.Lock()
        self._buffers: dict[socket.socket, bytearray] = {}
        self._closing = False
        self._thread: threading.Thread | None = None

    def add(self, channel: socket.socket) -> None:
        """Read ``channel`` too (from the next turn of the reading thread)."""
        channel.setblocking(False)
        with self._lock:
            self._pending.append(channel)

    @property
    def open_channels(self) -> int:
        with self._lock:
            return len(self._buffers) + len(self._pending)

    def start(self) -> None:
        self._thread = threading.Thread(
            target=self._run, name="overread-receiver-channels", daemon=True
        )
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                for channel in self._pending:
                    self._buffers[channel] = bytearray()
                    self._selector.register(channel, selectors.EVENT_READ)
                self._pending.clear()
                closing = self._closing
                left = len(self._buffers)
            if closing and not left:
                break
            if not left:
                time.sleep(_WATCH_SECONDS / 5)
                continue
            for key, _ in self._selector.select(timeout=_WATCH_SECONDS / 5):
                self.read(key.fileobj)  # type: ignore[arg-type]
        self._selector.close()

    def read(self, channel: socket.socket) -> None:
        """Read what ``channel`` has now; deliver each whole frame; close it at its end."""
        buffer = self._buffers[channel]
        try:
            data = channel.recv(1 << 20)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # reset: as an end
            logger.warning("a DICOM receiver process's channel failed: %s", exc)
            data = b""
        if not data:
            if buffer:
                logger.warning(
                    "a DICOM receiver process ended in the middle of sending an event "
                    "(%d byte(s) of it arrived); it is dropped, the database holds "
                    "what it would have said",
                    len(buffer),
                )
            self._drop(channel)
            return
        buffer += data
        while len(buffer) >= _HEADER.size:
            (size,) = _HEADER.unpack_from(buffer)
            if size > _MAX_FRAME:
                logger.error("a DICOM receiver process's channel is corrupt; closed")
                self._drop(channel)
                return
            end = _HEADER.size + size
            if len(buffer) < end:
                break
            payload = bytes(buffer[_HEADER.size : end])
            del buffer[:end]
            try:
                kind, value = pickle.loads(payload)
            except Exception:
                logger.exception("an event of a DICOM receiver process cannot be read")
                continue
            self._deliver(str(kind), value)

    def _drop(self, channel: socket.socket) -> None:
        with self._lock:
            self._buffers.pop(channel, None)
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(channel)
        channel.close()

    def close(self, timeout: float) -> None:
        """Read every channel to its end (the children are gone), then stop; a channel
        still open after ``timeout`` seconds is closed unread."""
        with self._lock:
            self._closing = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():  # a child's channel held open elsewhere
                with self._lock:
                    stuck = [*self._buffers, *self._pending]
                for channel in stuck:
                    with contextlib.suppress(OSError):
                        channel.shutdown(socket.SHUT_RDWR)
                self._thread.join(timeout)
            self._thread = None
        else:
            with self._lock:
                for channel in self._pending:
                    channel.close()
                self._pending.clear()


def _receive(
    config: ServiceConfig,
    listening: socket.socket,
    channel: socket.socket,
    stop: Any,
    parent: int,
    drain: Any = None,
) -> None:
    """A child receiver: one Storage SCP on the gateway's socket until told to stop;
    then it stops accepting, lets the instances in flight be stored (``drain``
    seconds at most, set by the gateway with ``stop``) and exits."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # A spawned process: the arena cap and the periodic trim of the gateway are its own.
    apply_arena_max(config.malloc_arena_max)
    trimmer = MemoryTrimmer(config.malloc_trim_seconds)
    events = EventSender(channel)
    database = Database(config.database_url)
    store = ObjectStore(Path(config.data_dir) / "objects", fsync=config.fsync)
    if os.environ.get(SLOW_STORE_ENV):
        _slow_store(store, float(os.environ[SLOW_STORE_ENV]))
    ingestor = Ingestor(
        database,
        store,
        on_stored=lambda outcome: events.send("stored", outcome),
        disk=DiskGuard.from_settings(Path(config.data_dir), config.retention),
    )
    scp = StorageSCP(
        config,
        ingestor,
        on_released=lambda studies: events.send("released", sorted(studies)),
        rejected_dir=Path(config.data_dir) / "rejected",
        listening_socket=listening,
    )
    try:
        scp.start()
    except ServiceError as exc:
        events.send("failed", str(exc))
        database.dispose()
        return
    trimmer.start()
    events.send("ready", os.getpid())
    seconds = 0.0
    try:
        # A flag in shared memory, not a multiprocessing Event: a child killed while
        # waiting on an Event would leave the gateway's set() waiting forever.
        while not stop.value:
            time.sleep(0.1)
            if os.getppid() != parent:  # the gateway is gone: stop taking instances
                break
        # Stopped, or the gateway is gone: let the instances in flight be stored.
        seconds = float(drain.value) if drain is not None and drain.value > 0 else 8.0
    finally:
        scp.stop(drain_seconds=seconds)
        trimmer.stop()
        database.dispose()
        channel.close()


class ReceiverProcesses:
    """``count`` child processes receiving on the gateway's DICOM port.

    Parameters
    ----------
    config
        The gateway's configuration (each child gets it with the bound port).
    count
        How many children (the gateway's own SCP is not counted).
    on_released, on_stored
        What the gateway's own SCP and ingestor call; called here, in a thread of
        the gateway, for the children's events.
    """

    def __init__(
        self,
        config: ServiceConfig,
        count: int,
        *,
        on_released: Callable[[set[str]], None],
        on_stored: Callable[[IngestOutcome], None],
    ) -> None:
        self.config = config
        self.count = count
        self.on_released = on_released
        self.on_stored = on_stored
        self._context = multiprocessing.get_context("spawn")
        # Events read from the channels, handled in the forwarding thread (a slow
        # handler never keeps a channel unread).
        self._inbox: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        self._reader: EventReader | None = None
        self._stop: Any = None
        self._drain: Any = None
        self._processes: list[Any] = []
        self._forwarder: threading.Thread | None = None
        self._closing = threading.Event()
        self._processes_lock = threading.Lock()
        self._started: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._reported: set[int] = set()
        self._config = config
        self._listening: socket.socket | None = None

    @property
    def pids(self) -> list[int]:
        """The children's process ids."""
        return [p.pid for p in self._processes if p.pid is not None]

    def _next(self, timeout: float) -> tuple[str, Any]:
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return "", None

    def start(self, listening: socket.socket, *, timeout: float = 120.0) -> None:
        """Start the children accepting on ``listening`` (the gateway SCP's bound,
        listening socket) and return once each listens.

        Raises
        ------
        ServiceError
            If a child cannot listen, exits before it listens, or does not start
            within ``timeout`` seconds.
        """
        port = int(listening.getsockname()[1])
        self._config = self.config.model_copy(update={"dicom_port": port})
        self._listening = listening
        self._closing.clear()
        self._stop = self._context.RawValue("b", 0)
        self._drain = self._context.RawValue("d", 0.0)
        self._reader = EventReader(lambda kind, value: self._inbox.put((kind, value)))
        self._reader.start()
        for number in range(self.count):
            self._processes.append(self._spawn(number))
        ready = 0
        deadline = time.monotonic() + timeout
        while ready < self.count:
            kind, value = self._next(_WATCH_SECONDS)
            if kind == "failed":
                self.stop()
                raise ServiceError(f"a DICOM receiver process cannot listen: {value}")
            if kind == "ready":
                ready += 1
                continue
            if kind:  # an instance already arrived at a child that is ready
                self._dispatch(kind, value)
            dead = [p.exitcode for p in self._processes if p.exitcode is not None]
            if dead:
                reason = self._failure(timeout=1.0)
                self.stop()
                raise ServiceError(
                    f"a DICOM receiver process cannot listen: {reason}"
                    if reason is not None
                    else f"a DICOM receiver process exited (code {dead[0]}) before it listened"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(f"a DICOM receiver process did not start in {timeout:.0f} s")
        self._forwarder = threading.Thread(
            target=self._forward, name="overread-receiver-events", daemon=True
        )
        self._forwarder.start()
        logger.info("%d more DICOM receiver processes on port %d", self.count, port)

    def _failure(self, timeout: float) -> str | None:
        """The reason a child sent before it exited, if one is still on its way."""
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            kind, value = self._next(left)
            if kind == "failed":
                return str(value)
            if kind and kind != "ready":
                self._dispatch(kind, value)
        return None

    def _spawn(self, number: int) -> Any:
        assert self._reader is not None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # The gateway's SCP admits the first share of max_associations, child
        # ``number`` the next ones: together what the configuration says.
        shares = association_shares(self.config.max_associations, self.count + 1)
        config = self._config.model_copy(update={"max_associations": shares[number + 1]})
        try:
            process = self._context.Process(
                target=_receive,
                args=(config, self._listening, theirs, self._stop, os.getpid(), self._drain),
                name=f"overread-receiver-{number + 1}",
                daemon=True,
            )
            process.start()
        except BaseException:
            ours.close()
            raise
        finally:
            # The child has its own copy: once it is gone, nothing holds the channel
            # open and the gateway's end reads its end.
            theirs.close()
        self._reader.add(ours)
        self._started[number] = time.monotonic()
        return process

    def _watch(self) -> None:
        """Reap a child that exited, log it and start another in its place, after
        :data:`_RESTART_SECONDS` doubled for each exit in a row (up to
        :data:`_RESTART_MAX_SECONDS`), so one that cannot run does not spin."""
        with self._processes_lock:
            if self._stop is None or self._stop.value:
                return
            for number, process in enumerate(self._processes):
                if process.exitcode is None:
                    continue
                if process.pid is not None and number not in self._reported:
                    logger.error(
                        "DICOM receiver process %d exited (code %s); starting another",
                        process.pid,
                        process.exitcode,
                    )
                    self._reported.add(number)
                process.join()
                failures = self._failures.get(number, 0)
                wait = min(_RESTART_SECONDS * 2**failures, _RESTART_MAX_SECONDS)
                if time.monotonic() - self._started.get(number, 0.0) < wait:
                    continue
                # A child that ran a good while before it exited starts the back-off anew.
                ran = time.monotonic() - self._started.get(number, 0.0)
                self._failures[number] = 0 if ran > 2 * _RESTART_MAX_SECONDS else failures + 1
                try:
                    replacement = self._spawn(number)
                except Exception as exc:  # out of descriptors or memory: try again later
                    self._started[number] = time.monotonic()
                    logger.error("DICOM receiver process cannot be started again: %s", exc)
                    continue
                self._reported.discard(number)
                with contextlib.suppress(ValueError):
                    process.close()
                self._processes[number] = replacement

    def _dispatch(self, kind: str, value: Any) -> None:
        try:
            if kind == "failed":
                logger.error("a DICOM receiver process cannot listen: %s", value)
            elif kind == "released":
                self.on_released(set(value))
            elif kind == "stored":
                self.on_stored(value)
        except Exception:
            logger.exception("handling a receiver process's %s event failed", kind)

    def _forward(self) -> None:
        while not self._closing.is_set():
            kind, value = self._next(_WATCH_SECONDS)
            if kind:
                self._dispatch(kind, value)
            self._watch()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the children: each stops accepting, stores the instances in flight
        (for ``timeout`` less a margin at most; a C-STORE that had not started is
        refused with 0xA700) and exits; one still running after ``timeout`` is
        terminated."""
        with self._processes_lock:
            if self._drain is not None:
                self._drain.value = max(0.0, timeout - _DRAIN_MARGIN_SECONDS)
            if self._stop is not None:
                self._stop.value = 1
            processes = list(self._processes)
        for process in processes:
            try:
                process.join(timeout)
                if process.is_alive():
                    process.terminate()
                    process.join(5)
            except ValueError:  # closed already
                continue
        # The children are gone: forward what they sent before they stopped.
        if self._reader is not None:
            self._reader.close(5)
            self._reader = None
        self._closing.set()
        if self._forwarder is not None:
            self._forwarder.join(5)
            self._forwarder = None
        while True:
            kind, value = self._next(0)
            if not kind:
                break
            self._dispatch(kind, value)
        self._processes = []


__all__ = [
    "SLOW_STORE_ENV",
    "TEAR_ENV",
    "EventReader",
    "EventSender",
    "ReceiverProcesses",
    "association_shares",
    "encode_event",
]
