"""Micro-batching for the service path: many callers, one model, bounded wait.

Requests that arrive close together are run as one batch, which is cheaper per
image than one call each; a request never waits more than ``max_wait_ms`` for
companions. One worker thread owns the model, so the runtime is never called
concurrently.

:class:`BatchedPipeline` puts a :class:`MicroBatcher` in front of a
:class:`~overread.inference.Pipeline`: each gateway worker preprocesses its own
study's images in its own thread, and only the runtime call is shared, so two
studies read at the same time cost one forward pass of batch 2.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Union

import numpy as np

from overread.inference.runtimes import padded_size

if TYPE_CHECKING:
    from overread.imaging import Image
    from overread.inference.pipeline import Pipeline
    from overread.inference.result import Prediction

logger = logging.getLogger(__name__)

_STOP = object()

#: What a batch function returns: one array, or several, each with one row per input.
BatchOutput = Union[np.ndarray, tuple[np.ndarray, ...]]  # noqa: UP007 (a runtime alias)


class MicroBatcher:
    """Collect single inputs into batches of up to ``max_batch`` or ``max_wait_ms``.

    Parameters
    ----------
    run_batch
        Maps a stacked ``(N, ...)`` array to an ``(N, ...)`` array of results, or to a
        tuple of such arrays (each caller then gets a tuple of its rows).
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
        run_batch: Callable[[np.ndarray], BatchOutput],
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

    def submit(self, x: np.ndarray) -> Future[BatchOutput]:
        """Queue one input (without batch axis); the future gets its row of the output."""
        if self._closed:
            raise RuntimeError("MicroBatcher is closed")
        future: Future[BatchOutput] = Future()
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
        futures: list[Future[BatchOutput]] = [pair[1] for pair in batch]  # type: ignore[index]
        live = [
            (x, f) for x, f in zip(inputs, futures, strict=True) if f.set_running_or_notify_cancel()
        ]
        if not live:
            return
        self.batch_sizes.append(len(live))
        try:
            outputs = self.run_batch(np.stack([x for x, _ in live]))
            parts = outputs if isinstance(outputs, tuple) else (outputs,)
            for part in parts:
                if len(part) != len(live):
                    raise RuntimeError(
                        f"batch function returned {len(part)} rows for {len(live)} inputs"
                    )
        except BaseException as exc:
            for _, future in live:
                future.set_exception(exc)
            return
        for row, (_, future) in enumerate(live):
            if isinstance(outputs, tuple):
                future.set_result(tuple(part[row] for part in outputs))
            else:
                future.set_result(outputs[row])

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


class BatchedPipeline:
    """A :class:`~overread.inference.Pipeline` whose runtime calls are micro-batched.

    ``predict`` behaves like :meth:`Pipeline.predict` (same preprocessing, findings,
    heatmaps, errors, timings keys) but sends each preprocessed image to a shared
    :class:`MicroBatcher`, so concurrent callers - the gateway's workers - share
    forward passes. Rows of a batch are independent, so every caller gets the
    numbers it would have got alone (up to float rounding of a different batch size).

    Parameters
    ----------
    pipeline
        The loaded, warmed-up pipeline (its runtime is only called from the batcher).
    max_batch, max_wait_ms
        The batcher's bounds.
    """

    def __init__(self, pipeline: Pipeline, *, max_batch: int = 8, max_wait_ms: float = 5.0) -> None:
        self.pipeline = pipeline
        self.model = pipeline.model
        self.package = pipeline.package
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.calls = 0
        self._lock = threading.Lock()
        self._batchers: dict[bool, MicroBatcher] = {}

    def _batcher(self, with_cam: bool) -> MicroBatcher:
        with self._lock:
            batcher = self._batchers.get(with_cam)
            if batcher is None:
                batcher = MicroBatcher(
                    lambda x: self._run(x, with_cam),
                    max_batch=self.max_batch,
                    max_wait_ms=self.max_wait_ms,
                )
                self._batchers[with_cam] = batcher
            return batcher

    def _run(self, x: np.ndarray, with_cam: bool) -> BatchOutput:
        count = len(x)
        size = padded_size(count, self.max_batch)
        if size > count:
            x = np.concatenate([x, np.zeros((size - count, *x.shape[1:]), dtype=x.dtype)])
        self.calls += 1
        # Calibrated probability samples, one row per input: (N, S, L).
        samples, cam = self.pipeline.probability_samples(x, with_cam=with_cam)
        rows = np.swapaxes(samples, 0, 1)
        if cam is None:
            return rows[:count]
        return rows[:count], cam[:count]

    @property
    def batch_sizes(self) -> list[int]:
        """Sizes of the batches run so far (without padding), both batchers together."""
        with self._lock:
            return [n for b in self._batchers.values() for n in b.batch_sizes]

    def warmup(self) -> None:
        """Create and run the runtime's sessions for every padded batch size."""
        sizes: list[int] = []
        size = 1
        while size < self.max_batch:
            sizes.append(size)
            size *= 2
        sizes.append(self.max_batch)
        self.pipeline.warmup(tuple(sizes))

    def predict(
        self,
        inputs: Sequence[str | Path | Image],
        *,
        explain: bool = False,
        operating_point: str | None = None,
        trust: bool = False,
        override_gate: bool = False,
    ) -> list[Prediction]:
        """One :class:`Prediction` per input, in order; bad inputs get ``ok=False``
        (the input gate as in :meth:`Pipeline.predict`).

        ``trust``: the explanation trust of each finding decided positive or
        indeterminate, from the CAM of the shared pass and one more pass of that
        image's region-deleted inputs (see :meth:`Pipeline.predict`).
        """
        from overread.errors import OverreadError
        from overread.explain.cam import cam_to_heatmaps
        from overread.inference.evidence import attach_trust, attach_trust_from_cam

        pipeline = self.pipeline
        if operating_point is not None:
            pipeline.package.thresholds(operating_point)
        with_cam = (explain or trust) and pipeline.runtime.has_cam
        if explain and not with_cam:
            from overread.errors import InferenceError

            raise InferenceError(
                f"{self.model.name} {self.model.version}: no CAM output to explain with"
            )
        predictions: list[Prediction] = []
        pending: list[tuple[Prediction, np.ndarray, Future[BatchOutput]]] = []
        for prediction, x in pipeline.admit(inputs, explain, override_gate=override_gate):
            predictions.append(prediction)
            if x is not None:
                pending.append((prediction, x, self._batcher(with_cam).submit(x)))
        submitted = time.perf_counter()
        outputs: list[BatchOutput | None] = []
        for prediction, _, future in pending:
            try:
                outputs.append(future.result())
            except OverreadError as exc:
                prediction.ok = False
                prediction.error = str(exc)
                outputs.append(None)
        inferred = time.perf_counter()
        for (prediction, x, _), output in zip(pending, outputs, strict=True):
            if output is None:
                continue
            started = time.perf_counter()
            samples, cam = output if isinstance(output, tuple) else (output, None)
            samples = np.asarray(samples)
            prediction.findings = pipeline.findings(
                samples.mean(axis=0), operating_point, samples=samples
            )
            # The wait for the shared forward pass, shared among this call's images.
            prediction.timings["inference"] = (inferred - submitted) / len(pending)
            post_done = time.perf_counter()
            prediction.timings["postprocess"] = post_done - started
            if with_cam and cam is not None and explain:
                maps = cam_to_heatmaps(np.asarray(cam)[None], (x.shape[-2], x.shape[-1]))
                prediction.heatmaps = {label: maps[0, i] for i, label in enumerate(pipeline.labels)}
                explained = time.perf_counter()
                prediction.timings["explain"] = explained - post_done
                if trust:
                    attach_trust(prediction, x, maps[0], self._deleted_probabilities)
                    prediction.timings["trust"] = time.perf_counter() - explained
            elif with_cam and cam is not None and trust:
                attach_trust_from_cam(prediction, x, np.asarray(cam), self._deleted_probabilities)
                prediction.timings["trust"] = time.perf_counter() - post_done
        return predictions

    def _deleted_probabilities(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, L)`` of one image's region-deleted inputs.

        They go straight to the pipeline (padded to the warmed-up session sizes, under
        its runtime lock), not through the batcher: an odd row would otherwise wait
        ``max_wait_ms`` for a companion, and they are already a batch.
        """
        return self.pipeline.deleted_probabilities(x)

    def close(self) -> None:
        """Stop the batchers (queued requests finish first)."""
        with self._lock:
            batchers = list(self._batchers.values())
            self._batchers.clear()
        for batcher in batchers:
            batcher.close()


__all__ = ["BatchOutput", "BatchedPipeline", "MicroBatcher", "padded_size"]
