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
    """CPU model, core count and INT8/bf16 flags (AVX-512 VNNI, AMX), and load average."""
    from overread.models.cpu import cpu_description

    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = []
    return {**cpu_description(), "load_average": load}


def cpu_flags_line(machine: dict[str, Any]) -> str:
    """``AVX-512 VNNI yes, AMX no, ...``: the flags that decide INT8 and bf16 speed."""
    flags = machine.get("cpu_flags", {})
    names = {
        "avx512_vnni": "AVX-512 VNNI",
        "avx_vnni": "AVX-VNNI",
        "avx512_bf16": "AVX-512 BF16",
        "amx_int8": "AMX INT8",
        "amx_bf16": "AMX BF16",
    }
    return ", ".join(f"{label} {'yes' if flags.get(k) else 'no'}" for k, label in names.items())


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
        f"`{command}` on {machine['cpu']}, {machine['cores']} cores, "
        f"{cpu_flags_line(machine)} (load average at the end {load}).\n\n{body.rstrip()}\n"
    )
    with Path(path).open("a", encoding="utf-8") as handle:
        handle.write(section)


__all__ = [
    "BENCH_AE_TITLE",
    "append_to_docs",
    "cpu_flags_line",
    "machine_info",
    "median",
    "percentile",
    "require_dcmtk",
]
