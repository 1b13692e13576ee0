"""Disk-space watermarks: refuse new data before the data dir's disk is full.

A gateway that accepts an instance it then cannot write answers a failure after the
modality believed the link was fine; one that fills the disk also stops the database
(SQLite shares the file system) and the audit with it. So every ingest asks
:class:`DiskGuard` first and is refused, before a byte is written, while the free
space of the data dir's file system is under the *refuse* watermark (bytes or
percent, whichever trips first): C-STORE answers 0xA700 (out of resources), STOW-RS
HTTP 507 (Insufficient Storage), and the refusal is audited with its reason. Under
the *warn* watermark a warning is logged (once a minute) and ``/metrics`` shows the
free space (``overread_disk_free_bytes``) for alerting.

The check is one ``os.statvfs`` call, cached for about a second, so a burst of
instances costs one system call per second, not one per instance.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from overread.errors import ServiceError

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from overread.service.retention_settings import RetentionSettings

logger = logging.getLogger(__name__)

#: Seconds a free-space reading is reused.
CACHE_SECONDS = 1.0
#: Seconds between two warnings about low disk space.
WARN_EVERY_SECONDS = 60.0


class InsufficientStorageError(ServiceError):
    """New data is refused: the data dir's disk is under the refuse watermark."""


@dataclass(frozen=True)
class DiskSpace:
    """Free and total bytes of a file system (what an unprivileged writer may use)."""

    free_bytes: int
    total_bytes: int

    @property
    def free_percent(self) -> float:
        """Free space as a percentage of the file system's size."""
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0

    def describe(self) -> str:
        """``12.3 GiB free (4.5 %)``."""
        return f"{self.free_bytes / 1024**3:.1f} GiB free ({self.free_percent:.1f} %)"


def disk_space(path: Path) -> DiskSpace:
    """The space of the file system holding ``path``."""
    stats = os.statvfs(path)
    return DiskSpace(stats.f_bavail * stats.f_frsize, stats.f_blocks * stats.f_frsize)


class DiskGuard:
    """The watermarks of one data dir, checked before each write.

    Parameters
    ----------
    path
        A directory on the file system to watch (the data dir).
    refuse_below_bytes, refuse_below_percent
        Refuse new data while free space is under either (0 switches one off).
    warn_below_bytes, warn_below_percent
        Log a warning while free space is under either (0 switches one off).
    measure
        Reads the space (a test can pass its own).
    """

    def __init__(
        self,
        path: Path,
        *,
        refuse_below_bytes: int = 0,
        refuse_below_percent: float = 0.0,
        warn_below_bytes: int = 0,
        warn_below_percent: float = 0.0,
        measure: Callable[[Path], DiskSpace] = disk_space,
    ) -> None:
        self.path = Path(path)
        self.refuse_below_bytes = refuse_below_bytes
        self.refuse_below_percent = refuse_below_percent
        self.warn_below_bytes = warn_below_bytes
        self.warn_below_percent = warn_below_percent
        self._measure = measure
        self._lock = threading.Lock()
        self._space: DiskSpace | None = None
        self._measured_at = -CACHE_SECONDS
        self._warned_at = -WARN_EVERY_SECONDS

    @classmethod
    def from_settings(cls, path: Path, settings: RetentionSettings) -> DiskGuard:
        """The guard the ``[service.retention]`` watermarks describe."""
        return cls(
            path,
            refuse_below_bytes=settings.disk_refuse_below_bytes,
            refuse_below_percent=settings.disk_refuse_below_percent,
            warn_below_bytes=settings.disk_warn_below_bytes,
            warn_below_percent=settings.disk_warn_below_percent,
        )

    def space(self) -> DiskSpace:
        """The free space now (a reading at most :data:`CACHE_SECONDS` old)."""
        now = time.monotonic()
        with self._lock:
            if self._space is None or now - self._measured_at >= CACHE_SECONDS:
                self._space = self._measure(self.path)
                self._measured_at = now
            return self._space

    @staticmethod
    def _under(space: DiskSpace, below_bytes: int, below_percent: float) -> bool:
        return (below_bytes > 0 and space.free_bytes < below_bytes) or (
            below_percent > 0 and space.free_percent < below_percent
        )

    def refuses(self, space: DiskSpace) -> bool:
        """Whether ``space`` is under the refuse watermark."""
        return self._under(space, self.refuse_below_bytes, self.refuse_below_percent)

    def low(self, space: DiskSpace) -> bool:
        """Whether ``space`` is under the warning (or the refuse) watermark."""
        return self.refuses(space) or self._under(
            space, self.warn_below_bytes, self.warn_below_percent
        )

    def refusal(self) -> str | None:
        """Why new data must be refused now, or ``None`` when there is room.

        A file system that cannot be measured is not a reason to refuse: the write
        itself then fails and is answered as any failed write is.
        """
        try:
            space = self.space()
        except OSError as exc:
            logger.warning("free space of %s cannot be read: %s", self.path, exc)
            return None
        if self.refuses(space):
            return (
                f"disk nearly full: {space.describe()}, under the refuse watermark "
                f"({self._watermark(self.refuse_below_bytes, self.refuse_below_percent)})"
            )
        if self.low(space):
            self._warn(space)
        return None

    def check(self) -> None:
        """Raise :class:`InsufficientStorageError` when new data must be refused."""
        reason = self.refusal()
        if reason is not None:
            raise InsufficientStorageError(reason)

    @staticmethod
    def _watermark(below_bytes: int, below_percent: float) -> str:
        parts = []
        if below_bytes > 0:
            parts.append(f"{below_bytes / 1024**3:.1f} GiB")
        if below_percent > 0:
            parts.append(f"{below_percent:g} %")
        return " or ".join(parts)

    def _warn(self, space: DiskSpace) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._warned_at < WARN_EVERY_SECONDS:
                return
            self._warned_at = now
        logger.warning(
            "disk of %s is getting full: %s, under the warning watermark (%s); new data "
            "is refused under %s",
            self.path,
            space.describe(),
            self._watermark(self.warn_below_bytes, self.warn_below_percent),
            self._watermark(self.refuse_below_bytes, self.refuse_below_percent) or "no limit",
        )


class DiskCollector(Collector):
    """``/metrics`` gauges of a :class:`DiskGuard`: free bytes and whether it refuses."""

    def __init__(self, guard: DiskGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterator[Metric]:
        try:
            space = self.guard.space()
        except OSError as exc:
            logger.warning("metrics: free space of %s cannot be read: %s", self.guard.path, exc)
            return
        yield GaugeMetricFamily(
            "overread_disk_free_bytes",
            "Free bytes on the data dir's file system",
            value=space.free_bytes,
        )
        yield GaugeMetricFamily(
            "overread_disk_size_bytes",
            "Size of the data dir's file system",
            value=space.total_bytes,
        )
        yield GaugeMetricFamily(
            "overread_disk_refusing",
            "1 while new data is refused because the disk is under the refuse watermark",
            value=1.0 if self.guard.refuses(space) else 0.0,
        )
        yield GaugeMetricFamily(
            "overread_disk_low",
            "1 while the disk is under the warning watermark",
            value=1.0 if self.guard.low(space) else 0.0,
        )


__all__ = ["DiskCollector", "DiskGuard", "DiskSpace", "InsufficientStorageError", "disk_space"]
