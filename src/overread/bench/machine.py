"""The machine a benchmark ran on, the shared helpers, and the docs append.

The loopback peers themselves (``storescp``, ``storescu``, ports) are :mod:`overread.harness`'s.
"""

from __future__ import annotations

import os
import shutil
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from overread.errors import ServiceError

#: The calling AE title of the benchmarks' ``storescu``.
BENCH_AE_TITLE = "BENCH"


def machine_info() -> dict[str, Any]:
    """CPU model and core count (from /proc/cpuinfo), load average, and Python's view."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {"cpu": model, "cores": os.cpu_count() or 0, "load_average": load}


def require_dcmtk() -> None:
    """Raise unless DCMTK's ``storescu`` and ``storescp`` are on PATH."""
    for tool in ("storescu", "storescp"):
        if shutil.which(tool) is None:
            raise ServiceError(f"{tool} (DCMTK) is needed for this benchmark")


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def median(values: list[float]) -> float:
    """The median; NaN when empty."""
    return statistics.median(values) if values else float("nan")


def append_to_docs(path: Path, title: str, command: str, body: str) -> None:
    """Append a dated section (machine, command, ``body``) to a Markdown file."""
    machine = machine_info()
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    load = ", ".join(str(x) for x in machine["load_average"]) or "n/a"
    section = (
        f"\n### {title} ({stamp})\n\n"
        f"`{command}` on {machine['cpu']}, {machine['cores']} cores "
        f"(load average at the end {load}).\n\n{body.rstrip()}\n"
    )
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(section)


__all__ = [
    "BENCH_AE_TITLE",
    "append_to_docs",
    "machine_info",
    "median",
    "percentile",
    "require_dcmtk",
]
