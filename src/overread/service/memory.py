"""Giving freed memory back to the system: a periodic ``malloc_trim``, fewer arenas.

glibc's allocator keeps memory that worker threads freed (large image buffers) in
its arenas for reuse, so a long-running gateway's resident size creeps up although
the memory it uses does not. ``malloc_trim(0)`` returns the free pages of every
arena to the system. :class:`MemoryTrimmer` calls it every
``malloc_trim_seconds`` (``[service]``; 0: never) from a thread of its own. Where
the C library has no ``malloc_trim`` (musl, macOS, Windows) it does nothing.

:func:`set_arena_max` caps the number of arenas (``mallopt(M_ARENA_MAX, n)``, the
``malloc_arena_max`` setting of ``[service]``), so fewer arenas hold freed memory;
it must run before the service's threads first allocate.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: ``mallopt`` parameter number of ``M_ARENA_MAX`` in glibc's ``malloc.h``.
M_ARENA_MAX = -8


def _libc() -> Any | None:
    """The process's C library (``None`` where it cannot be loaded)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or None)
    except (OSError, TypeError):  # no C library by that name (TypeError: Windows)
        return None


def find_malloc_trim(libc: Any | None = None) -> Callable[[], int] | None:
    """``malloc_trim(0)`` of ``libc`` (default: this process's), or ``None`` if it has none."""
    library = _libc() if libc is None else libc
    function = getattr(library, "malloc_trim", None) if library is not None else None
    if function is None:
        return None
    function.argtypes = [ctypes.c_size_t]
    function.restype = ctypes.c_int

    def trim() -> int:
        return int(function(0))

    return trim


def set_arena_max(arenas: int, libc: Any | None = None) -> bool:
    """Cap glibc's malloc arenas (``mallopt(M_ARENA_MAX, arenas)``); ``False`` where
    the C library has no ``mallopt`` or refused. Call before threads start allocating."""
    library = _libc() if libc is None else libc
    function = getattr(library, "mallopt", None) if library is not None else None
    if function is None or arenas < 1:
        return False
    function.argtypes = [ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_int
    return bool(function(M_ARENA_MAX, int(arenas)))


def apply_arena_max(arenas: int | None) -> None:
    """Cap the arenas at ``arenas`` (the ``malloc_arena_max`` setting) unless it is unset
    or a ``MALLOC_ARENA_MAX`` environment variable, read when the process started,
    already did; a warning where the C library cannot. Call first thing in a process
    (``overread serve``, ``overread worker``, each receiver process)."""
    if not arenas or "MALLOC_ARENA_MAX" in os.environ or set_arena_max(arenas):
        return
    logger.warning(
        "malloc_arena_max = %d not applied: the C library has no mallopt or refused it", arenas
    )


class MemoryTrimmer:
    """Calls ``malloc_trim(0)`` every ``interval`` seconds in a thread of its own.

    ``trim`` defaults to this process's ``malloc_trim``; with none (or ``interval``
    0) :meth:`start` starts nothing and :meth:`run_once` returns ``False``.
    """

    def __init__(self, interval: float, *, trim: Callable[[], int] | bool | None = True) -> None:
        self.interval = float(interval)
        self.trim: Callable[[], int] | None = (
            find_malloc_trim() if trim is True else (None if trim is False else trim)
        )
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> bool:
        """Trim now; ``True`` if ``malloc_trim`` was called."""
        if self.trim is None:
            return False
        try:
            self.trim()
        except Exception:  # a failing trim must never stop the service
            logger.exception("malloc_trim failed")
            return False
        self.runs += 1
        return True

    def start(self) -> None:
        """Start the thread (nothing when the interval is 0 or there is no ``malloc_trim``)."""
        if self.interval <= 0 or self.trim is None or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="overread-trim", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()

    def stop(self) -> None:
        """Stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


__all__ = [
    "M_ARENA_MAX",
    "MemoryTrimmer",
    "apply_arena_max",
    "find_malloc_trim",
    "set_arena_max",
]
