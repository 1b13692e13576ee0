"""Micro-batching for the service path: many callers, one model, bounded wait.

Requests that arrive close together are run as one batch, which is cheaper per
image than one call each; a request never waits more than ``max_wait_ms`` for
companions. One worker thread owns the model, so the runtime is never called
concurrently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from types import TracebackType

import numpy as np

logger = logging.getLogger(__name__)

_STOP = object()


class MicroBatcher:
    """Collect single inputs into batches of up to ``max_batch`` or ``max_wait_ms``.

    Parameters
    ----------
    run_batch
        Maps a stacked ``(N, ...)`` array to an ``(N, ...)`` array of results.
    max_batch
        Largest batch run at once.
    max_wait_ms
        Longest time the first request of a batch waits for others.

    Examples
    --------
    >>> with MicroBatcher(pipeline.predict_batch, max_batch=8, max_wait_ms=5) as batcher:
    ...     probabilities = batcher.submit(x).result()
    """

    def __init__(
        self,
        run_batch: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.batch_sizes: list[int] = []
        self._queue: queue.Queue[object] = queue.Queue()
        self._closed = False
        self._worker = threading.Thread(
            target=self._loop, name="overread-microbatcher", daemon=True
        )
        self._worker.start()

    def submit(self, x: np.ndarray) -> Future[np.ndarray]:
        """Queue one input (without batch axis); the future gets its row of the output."""
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        future: Future[np.ndarray] = Future()
        self._queue.put((np.asarray(x), future))
        return future

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            batch = [item]
            deadline = time.monotonic() + self.max_wait
            stop = False
            while len(batch) < self.max_batch:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    more = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
                if more is _STOP:
                    stop = True
                    break
                batch.append(more)
            self._run(batch)
            if stop:
                return

    def _run(self, batch: list[object]) -> None:
        inputs = [pair[0] for pair in batch]  # type: ignore[index]
        futures: list[Future[np.ndarray]] = [pair[1] for pair in batch]  # type: ignore[index]
        live = [
            (x, f) for x, f in zip(inputs, futures, strict=True) if f.set_running_or_notify_cancel()
        ]
        if not live:
            return
        self.batch_sizes.append(len(live))
        try:
            outputs = self.run_batch(np.stack([x for x, _ in live]))
            if len(outputs) != len(live):
                raise RuntimeError(
                    f"batch function returned {len(outputs)} rows for {len(live)} inputs"
                )
        except BaseException as exc:
            for _, future in live:
                future.set_exception(exc)
            return
        for (_, future), row in zip(live, outputs, strict=True):
            future.set_result(row)

    def close(self) -> None:
        """Finish queued work and stop the worker."""
        if not self._closed:
            self._closed = True
            self._queue.put(_STOP)
            self._worker.join()

    def __enter__(self) -> MicroBatcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


__all__ = ["MicroBatcher"]
