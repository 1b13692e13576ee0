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
over a queue to the gateway, which handles it exactly as if its own SCP had raised
it (study completion on release, the assembler's wake-up, the ingest metrics). The
rows are committed before the event is sent, so the gateway never sees a study
before its instances. If a child dies, its connections end, the gateway's other
receivers keep the port, and a study whose release event was lost still completes by
the stable-age rule (the assembler's sweep); the gateway reaps the child, logs it and
starts another in its place (a child that exits before it listens fails the start at
once). A child whose gateway has gone stops listening within a second.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import queue
import socket
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
from overread.service.scp import StorageSCP
from overread.service.store import ObjectStore

logger = logging.getLogger(__name__)

#: How often the gateway looks for a child that exited.
_WATCH_SECONDS = 0.25
#: A child that exited is started again after this long, doubled for each exit in a
#: row (a child that cannot run does not spin), up to :data:`_RESTART_MAX_SECONDS`.
_RESTART_SECONDS = 5.0
_RESTART_MAX_SECONDS = 300.0


def _receive(
    config: ServiceConfig, listening: socket.socket, events: Any, stop: Any, parent: int
) -> None:
    """A child receiver: one Storage SCP on the gateway's socket until told to stop."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    database = Database(config.database_url)
    store = ObjectStore(Path(config.data_dir) / "objects", fsync=config.fsync)
    ingestor = Ingestor(
        database,
        store,
        on_stored=lambda outcome: events.put(("stored", outcome)),
        disk=DiskGuard.from_settings(Path(config.data_dir), config.retention),
    )
    scp = StorageSCP(
        config,
        ingestor,
        on_released=lambda studies: events.put(("released", sorted(studies))),
        rejected_dir=Path(config.data_dir) / "rejected",
        listening_socket=listening,
    )
    try:
        scp.start()
    except ServiceError as exc:
        events.put(("failed", str(exc)))
        database.dispose()
        return
    events.put(("ready", os.getpid()))
    try:
        # A flag in shared memory, not a multiprocessing Event: a child killed while
        # waiting on an Event would leave the gateway's set() waiting forever.
        while not stop.value:
            time.sleep(0.5)
            if os.getppid() != parent:  # the gateway is gone: stop taking instances
                break
    finally:
        scp.stop()
        database.dispose()


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
        self._events: Any = None
        self._stop: Any = None
        self._processes: list[Any] = []
        self._forwarder: threading.Thread | None = None
        self._closing = threading.Event()
        self._processes_lock = threading.Lock()
        self._stopping = False
        self._started: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._reported: set[int] = set()
        self._config = config
        self._listening: socket.socket | None = None

    @property
    def pids(self) -> list[int]:
        """The children's process ids."""
        return [p.pid for p in self._processes if p.pid is not None]

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
        self._stopping = False
        self._events = self._context.Queue()
        self._stop = self._context.RawValue("b", 0)
        for number in range(self.count):
            self._processes.append(self._spawn(number))
        ready = 0
        deadline = time.monotonic() + timeout
        while ready < self.count:
            try:
                kind, value = self._events.get(timeout=_WATCH_SECONDS)
            except queue.Empty:
                kind, value = "", None
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
            try:
                kind, value = self._events.get(timeout=left)
            except (queue.Empty, EOFError, OSError):
                return None
            if kind == "failed":
                return str(value)
            if kind != "ready":
                self._dispatch(kind, value)
        return None

    def _spawn(self, number: int) -> Any:
        process = self._context.Process(
            target=_receive,
            args=(self._config, self._listening, self._events, self._stop, os.getpid()),
            name=f"overread-receiver-{number + 1}",
            daemon=True,
        )
        process.start()
        self._started[number] = time.monotonic()
        return process

    def _watch(self) -> None:
        """Reap a child that exited, log it and start another in its place, after
        :data:`_RESTART_SECONDS` doubled for each exit in a row (up to
        :data:`_RESTART_MAX_SECONDS`), so one that cannot run does not spin."""
        with self._processes_lock:
            if self._stopping or self._stop is None or self._stop.value:
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
            try:
                kind, value = self._events.get(timeout=_WATCH_SECONDS)
            except queue.Empty:
                self._watch()
                continue
            except (EOFError, OSError):
                return
            self._dispatch(kind, value)
            self._watch()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the children (each finishes the instance it is receiving)."""
        with self._processes_lock:
            self._stopping = True
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
        self._closing.set()
        if self._forwarder is not None:
            self._forwarder.join(5)
            self._forwarder = None
        if self._events is not None:
            while True:
                try:
                    kind, value = self._events.get(timeout=0.1)
                except (queue.Empty, EOFError, OSError):
                    break
                self._dispatch(kind, value)
            with contextlib.suppress(Exception):
                self._events.close()
            self._events = None
        self._processes = []


__all__ = ["ReceiverProcesses"]
