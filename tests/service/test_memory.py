"""The periodic ``malloc_trim``: called by a running gateway, harmless without glibc."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from overread.gateway import Gateway
from overread.service.memory import MemoryTrimmer, find_malloc_trim, set_arena_max

from .conftest import wait_until


class _NoMalloc:
    """A C library with neither ``malloc_trim`` nor ``mallopt`` (musl, macOS)."""


def test_a_running_gateway_trims_periodically_and_stops_trimming(
    make_service: Callable[..., Gateway],
) -> None:
    service = make_service(malloc_trim_seconds=0.05)
    if service.trimmer.trim is None:
        pytest.skip("this C library has no malloc_trim")
    wait_until(lambda: service.trimmer.runs >= 3, timeout=20)
    service.stop(timeout=10)
    runs = service.trimmer.runs
    time.sleep(0.2)
    assert service.trimmer.runs == runs  # stopped with the gateway


def test_the_hook_calls_trim_each_interval_and_survives_a_failure() -> None:
    calls: list[float] = []

    def trim() -> int:
        calls.append(time.monotonic())
        if len(calls) == 2:
            raise OSError("boom")
        return 1

    trimmer = MemoryTrimmer(0.02, trim=trim)
    trimmer.start()
    try:
        wait_until(lambda: len(calls) >= 4, timeout=10)
    finally:
        trimmer.stop()
    assert trimmer.runs == len(calls) - 1  # the failing call did not count, nor stop it


def test_without_malloc_trim_nothing_runs_and_nothing_fails() -> None:
    assert find_malloc_trim(_NoMalloc()) is None
    assert set_arena_max(2, _NoMalloc()) is False
    trimmer = MemoryTrimmer(0.01, trim=None)
    trimmer.start()
    assert trimmer._thread is None and trimmer.run_once() is False
    trimmer.stop()
    off = MemoryTrimmer(0, trim=lambda: 1)
    off.start()
    assert off._thread is None  # interval 0: never


def test_glibc_malloc_trim_is_found_and_callable() -> None:
    trim: Any = find_malloc_trim()
    if trim is None:
        pytest.skip("this C library has no malloc_trim")
    assert trim() in (0, 1)


class _StopError(Exception):
    pass


def test_serve_caps_the_arenas_before_the_gateway_unless_the_environment_did(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import overread.gateway
    import overread.service.memory
    from overread.cli.serve import _run_until_signalled
    from overread.config import Settings
    from overread.service.config import service_config

    calls: list[int] = []

    def arena_max(arenas: int, libc: Any = None) -> bool:
        calls.append(arenas)
        return True

    def gateway(*args: Any, **kwargs: Any) -> Any:
        raise _StopError  # the capping came before, or not at all

    monkeypatch.setattr(overread.service.memory, "set_arena_max", arena_max)
    monkeypatch.setattr(overread.gateway, "Gateway", gateway)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    config = service_config(Settings(data_dir=tmp_path), malloc_arena_max=2)
    with pytest.raises(_StopError):
        _run_until_signalled(config, worker_only=True)
    assert calls == [2]
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    with pytest.raises(_StopError):
        _run_until_signalled(config, worker_only=True)
    unset = service_config(Settings(data_dir=tmp_path))
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    with pytest.raises(_StopError):
        _run_until_signalled(unset, worker_only=True)
    assert calls == [2]


def test_serve_warns_when_the_arena_cap_is_not_applied(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import overread.gateway
    import overread.service.memory
    from overread.cli.serve import _run_until_signalled
    from overread.config import Settings
    from overread.service.config import service_config

    def gateway(*args: Any, **kwargs: Any) -> Any:
        raise _StopError

    monkeypatch.setattr(overread.service.memory, "set_arena_max", lambda arenas: False)
    monkeypatch.setattr(overread.gateway, "Gateway", gateway)
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    config = service_config(Settings(data_dir=tmp_path), malloc_arena_max=3)
    with caplog.at_level("WARNING", logger="overread.service.memory"), pytest.raises(_StopError):
        _run_until_signalled(config, worker_only=True)
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        "malloc_arena_max = 3 not applied: the C library has no mallopt or refused it"
    ]


def test_a_receiver_process_caps_its_arenas_and_trims_until_it_stops(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A spawned receiver starts with the C library's defaults: the settings must be
    applied in it, not only in the gateway (run here in a thread of this process)."""
    import socket
    import threading
    from types import SimpleNamespace

    import overread.service.memory
    import overread.service.receivers as receivers
    from overread.config import Settings
    from overread.service.config import service_config

    arenas: list[int] = []
    monkeypatch.setattr(
        overread.service.memory, "set_arena_max", lambda n: arenas.append(n) or True
    )
    monkeypatch.delenv("MALLOC_ARENA_MAX", raising=False)
    trims: list[float] = []
    made: list[MemoryTrimmer] = []

    def trimmer(interval: float) -> MemoryTrimmer:
        made.append(MemoryTrimmer(interval, trim=lambda: trims.append(time.monotonic()) or 1))
        return made[-1]

    monkeypatch.setattr(receivers, "MemoryTrimmer", trimmer)
    config = service_config(
        Settings(data_dir=tmp_path), dicom_port=0, malloc_trim_seconds=0.02, malloc_arena_max=2
    )
    listening = socket.create_server(("127.0.0.1", 0))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    stop = SimpleNamespace(value=0)
    child = threading.Thread(
        target=receivers._receive,
        args=(config, listening, theirs, stop, os.getppid()),
        kwargs={"drain": SimpleNamespace(value=0.1)},
    )
    child.start()
    try:
        wait_until(lambda: len(trims) >= 3, timeout=20)
    finally:
        stop.value = 1
        child.join(30)
        ours.close()
        listening.close()
    assert not child.is_alive()
    assert arenas == [2]
    assert [t.interval for t in made] == [0.02]
    count = len(trims)
    time.sleep(0.1)
    assert len(trims) == count  # stopped with the receiver
