"""What ``overread demo`` was asked to do, and what it counts, times and checks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from overread.errors import ConfigError

PACS_KINDS = ("auto", "dcmtk", "pynetdicom")


@dataclass(frozen=True)
class DemoOptions:
    """What ``overread demo`` was asked to do."""

    data_dir: Path
    studies: int = 300
    rate: float = 20.0
    seed: int = 0
    size: int = 1024
    sites: int = 4
    http_port: int = 8042
    duration: float | None = None
    exit_when_done: bool = False
    workers: int = 2
    pacs: str = "auto"
    stall_seconds: float = 180.0

    def validate(self) -> None:
        """Refuse values that cannot make a demo, naming the option."""
        if self.studies < 1:
            raise ConfigError(f"--studies must be at least 1, not {self.studies}")
        if not self.rate > 0:
            raise ConfigError(f"--rate must be above 0 studies per minute, not {self.rate}")
        if self.duration is not None and not self.duration > 0:
            raise ConfigError(f"--duration must be above 0 seconds, not {self.duration}")
        if not 64 <= self.size <= 3000:
            raise ConfigError(f"--size must be between 64 and 3000 pixels, not {self.size}")
        if not 1 <= self.sites <= 4:
            raise ConfigError(f"--sites must be between 1 and 4, not {self.sites}")
        if not 0 <= self.http_port <= 65535:
            raise ConfigError(f"--http-port must be between 0 and 65535, not {self.http_port}")
        if self.pacs not in PACS_KINDS:
            raise ConfigError(f"--pacs must be one of {', '.join(PACS_KINDS)}, not {self.pacs!r}")


@dataclass
class DemoProgress:
    """Counts shown while the demo runs (one snapshot)."""

    studies: int
    generated: int = 0
    sent_studies: int = 0
    sent_images: int = 0
    send_failures: int = 0
    received: int = 0
    read: int = 0
    failed: int = 0
    srs_at_pacs: int = 0
    objects_at_pacs: int = 0
    critical: int = 0
    alerts: int = 0
    jobs_active: int = 0

    @property
    def done(self) -> bool:
        """Everything sent, every study read (or given up on), every job finished."""
        return (
            self.sent_studies + self.send_failures >= self.studies
            and self.read + self.failed >= self.sent_studies
            and self.jobs_active == 0
        )

    def activity(self) -> tuple[int, ...]:
        """The counts that move while the demo makes progress."""
        return (self.generated, self.sent_studies, self.read, self.srs_at_pacs, self.failed)


@dataclass
class Timeline:
    """Seconds from the command's launch to each first."""

    launched_offset: float
    http_ready: float | None = None
    first_sent: float | None = None
    first_sr: float | None = None

    def since_launch(self, monotonic: float) -> float:
        """Convert a ``time.monotonic()`` reading into seconds since launch."""
        return monotonic - self.launched_offset


@dataclass(frozen=True)
class DemoCheck:
    """One verdict of the final check (``--exit-when-done``)."""

    name: str
    ok: bool
    detail: str


@dataclass
class DemoSummary:
    """What the demo leaves behind, for the final report and for tests."""

    progress: DemoProgress
    pacs_dir: Path
    gateway_dir: Path
    timeline: Timeline
    worklist: list[dict[str, Any]] = field(default_factory=list)
    worklist_total: int = 0
    checks: list[DemoCheck] = field(default_factory=list)
    completed: bool = False
    interrupted: bool = False
    note: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        """Every check passed (vacuously true when none ran)."""
        return all(c.ok for c in self.checks)


__all__ = ["PACS_KINDS", "DemoCheck", "DemoOptions", "DemoProgress", "DemoSummary", "Timeline"]
