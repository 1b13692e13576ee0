from __future__ import annotations

import threading

import numpy as np
import pytest

from overread.inference import MicroBatcher


def _double(x: np.ndarray) -> np.ndarray:
    return x * 2


def test_each_caller_gets_its_own_row() -> None:
    with MicroBatcher(_double, max_batch=4, max_wait_ms=50) as batcher:
        futures = [batcher.submit(np.full(3, i, dtype=np.float32)) for i in range(10)]
        results = [f.result(timeout=10) for f in futures]
    for i, row in enumerate(results):
        assert row.tolist() == [2 * i] * 3
    assert sum(batcher.batch_sizes) == 10
    assert max(batcher.batch_sizes) <= 4


def test_concurrent_callers_are_batched_together() -> None:
    gate = threading.Event()
    seen: list[int] = []

    def slow_first(x: np.ndarray) -> np.ndarray:
        seen.append(len(x))
        gate.wait(timeout=10)  # hold the worker so later requests queue up
        return x + 1

    with MicroBatcher(slow_first, max_batch=8, max_wait_ms=1000) as batcher:
        first = batcher.submit(np.zeros(2))
        while not seen:  # the first batch (of one) is running
            threading.Event().wait(0.001)
        rest = [batcher.submit(np.full(2, i)) for i in range(1, 8)]
        gate.set()
        assert first.result(timeout=10).tolist() == [1, 1]
        assert [f.result(timeout=10)[0] for f in rest] == [i + 1 for i in range(1, 8)]
    # The seven requests that arrived while the model was busy ran as one batch.
    assert batcher.batch_sizes == [1, 7]


def test_a_lone_request_does_not_wait_for_a_full_batch() -> None:
    with MicroBatcher(_double, max_batch=64, max_wait_ms=20) as batcher:
        assert batcher.submit(np.ones(1)).result(timeout=10).tolist() == [2]
    assert batcher.batch_sizes == [1]


def test_errors_reach_every_caller_of_the_batch() -> None:
    def broken(x: np.ndarray) -> np.ndarray:
        raise ValueError("model exploded")

    with MicroBatcher(broken, max_batch=4, max_wait_ms=20) as batcher:
        futures = [batcher.submit(np.ones(1)) for _ in range(3)]
        for future in futures:
            with pytest.raises(ValueError, match="model exploded"):
                future.result(timeout=10)
        # The worker survives a failing batch.
    with MicroBatcher(_double, max_batch=4) as again:
        assert again.submit(np.ones(1)).result(timeout=10).tolist() == [2]


def test_closed_batcher_refuses_work() -> None:
    batcher = MicroBatcher(_double)
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.submit(np.ones(1))
