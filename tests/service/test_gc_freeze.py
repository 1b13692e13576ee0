"""After its warm-up a worker puts what lives as long as the process out of the
garbage collector's reach, so a full collection no longer walks it mid-study."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from overread.config import Settings
from overread.service.config import service_config
from overread.service.db import Database
from overread.service.jobs import JobQueue
from overread.service.store import ObjectStore
from overread.service.worker import Worker, freeze_long_lived


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # later tests collect as usual


class _Models:
    """A provider whose warm-up leaves a long-lived object cycle behind."""

    def __init__(self) -> None:
        self.frozen_at_warmup: int | None = None
        self.kept: list[object] = []

    def warmup(self, aliases: list[str]) -> None:
        self.frozen_at_warmup = gc.get_freeze_count()
        cycle: list[object] = []
        cycle.append(cycle)
        self.kept.append(cycle)


def test_worker_warmup_freezes_what_it_loaded(unfrozen: None, tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'overread.db'}")
    try:
        models = _Models()
        worker = Worker(
            service_config(Settings(data_dir=tmp_path / "data")),
            database,
            ObjectStore(tmp_path / "objects", fsync=False),
            JobQueue(database),
            models,  # type: ignore[arg-type]
            None,
            name="w1",
        )
        assert gc.get_freeze_count() == 0
        worker.warmup()
        # Frozen after the models were warmed up, not before.
        assert models.frozen_at_warmup == 0
        assert gc.get_freeze_count() > 0
        # What the warm-up kept is out of reach: a full collection leaves it alone.
        tracked = {id(o) for o in gc.get_objects()}
        assert id(models.kept[0]) not in tracked
    finally:
        database.dispose()


class _Node:
    def __init__(self) -> None:
        self.me = self


def test_freeze_collects_garbage_first(unfrozen: None) -> None:
    gc.disable()  # no automatic collection between the lines below
    try:
        garbage = _Node()  # a cycle: only the collector frees it
        gone = weakref.ref(garbage)
        del garbage
        assert gone() is not None
        frozen = freeze_long_lived()
    finally:
        gc.enable()
    # (frozen objects freed by reference counting since leave the count, so at most)
    assert 0 < gc.get_freeze_count() <= frozen
    # Collected, not frozen: frozen garbage would never be freed.
    assert gone() is None
    # Once per process: a second worker's warm-up freezes nothing more.
    later: list[object] = []
    later.append(later)
    assert freeze_long_lived() <= frozen
    assert id(later) in {id(o) for o in gc.get_objects()}
