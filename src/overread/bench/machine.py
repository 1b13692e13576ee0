"""The machine a benchmark ran on, the shared helpers, and the docs append."""

from __future__ import annotations

import os
import shutil
import socket
import statistics
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from overread.errors import ServiceError


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


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    """Wait until something listens on ``127.0.0.1:port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise ServiceError(f"nothing listening on port {port}")


def start_storescp(
    out_dir: Path, *, ae_title: str = "PACSAE", fork: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """DCMTK ``storescp`` writing to ``out_dir`` on a free loopback port."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for _ in range(5):
        port = free_port()
        process = subprocess.Popen(
            [
                "storescp",
                *(["--fork"] if fork else []),
                "-aet",
                ae_title,
                "-od",
                str(out_dir),
                str(port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_port(port, 10)
            return process, port
        except ServiceError:
            process.kill()
            process.wait(5)
    raise ServiceError("storescp did not start on a free port")


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Terminate a child process, killing it if it does not exit within 10 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def storescu(port: int, files: list[Path], called: str, calling: str = "BENCH") -> None:
    """Send ``files`` in one association with DCMTK ``storescu``; raise on failure."""
    done = subprocess.run(
        ["storescu", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if done.returncode != 0:
        raise ServiceError(f"storescu to port {port} failed: {done.stderr.strip()[:300]}")


def send_parallel(port: int, files: list[Path], associations: int, called: str) -> float:
    """Seconds to send ``files`` over ``associations`` concurrent ``storescu`` runs."""
    chunks = [files[i::associations] for i in range(associations)]
    failures: list[BaseException] = []

    def run(chunk: list[Path]) -> None:
        try:
            storescu(port, chunk, called)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in chunks if c]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - start
    if failures:
        raise failures[0]
    return elapsed


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
    "append_to_docs",
    "free_port",
    "machine_info",
    "median",
    "percentile",
    "require_dcmtk",
    "send_parallel",
    "start_storescp",
    "stop_process",
    "storescu",
    "wait_port",
]
