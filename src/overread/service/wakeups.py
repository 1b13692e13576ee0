"""Scale-out wake-ups over Celery (RabbitMQ): the broker carries signals, never work.

The jobs table stays the only source of truth. When the gateway queues jobs it
publishes an ``overread.wake`` task; every ``overread worker --broker URL`` process
consumes those tasks with a Celery worker whose task body only wakes that process's
worker threads, which then claim jobs from the database exactly as they do when they
poll. A lost message therefore delays work by at most ``poll_seconds`` and a
duplicated one costs an empty claim; neither can lose or repeat a job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from overread.errors import ServiceError

logger = logging.getLogger(__name__)

WAKE_TASK = "overread.wake"


def wake_queue(database_url: str) -> str:
    """The queue name for one database: gateways sharing a broker do not wake each other."""
    return "overread.wake." + hashlib.sha256(database_url.encode()).hexdigest()[:12]


def celery_app(broker_url: str, queue: str, *, on_wake: Callable[[], None] | None = None) -> Any:
    """A Celery app on ``broker_url`` with the ``overread.wake`` task registered.

    ``on_wake`` is what the task does in a consuming process (wake the worker threads);
    a publishing process passes nothing.
    """
    try:
        from celery import Celery  # type: ignore[import-untyped]
    except ImportError as exc:
        raise ServiceError(f"--broker needs Celery: {exc}") from None
    app = Celery("overread", broker=broker_url)
    app.conf.update(
        task_ignore_result=True,
        task_default_queue=queue,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        task_acks_late=False,
        # A wake-up older than a minute is worth nothing: the poll has run since.
        task_default_expires=60,
        # No remote control: its queue is exclusive per node name, and a second worker
        # process on one host would die declaring it (RESOURCE_LOCKED); wake-ups need none.
        worker_enable_remote_control=False,
    )

    def wake() -> None:
        if on_wake is not None:
            on_wake()

    app.task(name=WAKE_TASK)(wake)
    return app


class WakeupPublisher:
    """Publishes ``overread.wake`` after jobs are queued; failures are logged, not raised.

    Publishing happens on a background thread so a slow or absent broker never delays
    the SCP or the assembler; the workers' poll covers any wake-up that is lost.
    """

    def __init__(self, broker_url: str, queue: str) -> None:
        self.app = celery_app(broker_url, queue)
        self.queue = queue
        self._pending = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="overread-wakeups", daemon=True)
        self._thread.start()

    def publish(self) -> None:
        """Ask for a wake-up to be sent (coalesced with any not yet sent)."""
        self._pending.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._pending.wait(1.0)
            if not self._pending.is_set():
                continue
            self._pending.clear()
            try:
                self.app.send_task(WAKE_TASK, queue=self.queue)
            except Exception as exc:
                logger.warning("could not publish a wake-up to the broker: %s", exc)

    def close(self) -> None:
        """Stop the publishing thread."""
        self._stop.set()
        self._pending.set()
        self._thread.join(5)


def consume_wakeups(
    broker_url: str, queue: str, on_wake: Callable[[], None], *, name: str = ""
) -> None:
    """Run a Celery worker (in this thread, blocking) whose task calls ``on_wake``.

    Returns when the Celery worker shuts down (SIGTERM or SIGINT: Celery's warm
    shutdown). Each process is a node of its own (``overread-PID@HOST``), so any
    number of worker processes can run on one host.
    """
    app = celery_app(broker_url, queue, on_wake=on_wake)
    worker = app.Worker(
        pool="solo",
        concurrency=1,
        queues=[queue],
        hostname=f"overread-{os.getpid()}@{name or socket.gethostname()}",
        loglevel=logging.getLevelName(logging.getLogger().getEffectiveLevel()),
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=True,
        quiet=True,
    )
    worker.start()


__all__ = ["WAKE_TASK", "WakeupPublisher", "celery_app", "consume_wakeups", "wake_queue"]
