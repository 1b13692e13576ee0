"""``overread bench soak``: the gateway under a steady arrival rate for a bounded time.

Phantom chest radiographs (fresh UIDs each) are sent by DCMTK ``storescu``, one
association per study, at ``rate`` studies per second to the in-process gateway
(the embedded default: SQLite, worker threads, the bundled model, completion on
association release), whose destination is DCMTK ``storescp``. Sending stops after
``duration`` seconds or ``studies`` studies, whichever comes first; the run then waits
(at most ``settle`` seconds) for every report. Every ``sample_seconds`` it notes the
studies sent and reported so far, the jobs not yet finished, and this process's
resident memory (RSS), open file descriptors and threads (the gateway runs in it).

The result says whether the rate was sustained (the reports kept pace with the
sends, the queue drained), the latency (``storescu`` start to the SR complete at the
PACS, seen every ``watch_seconds``) per chunk of studies in sending order, the RSS
and open-file growth between the first and the last quarter of the run, and the
studies lost (sent and acknowledged, never reported) or duplicated (more than one SR
at the PACS for one send).
"""

from __future__ import annotations

import itertools
import math
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overread.bench.e2e import E2EOptions, Sent, StudyFactory, _send_one, running_gateway
from overread.bench.machine import machine_info, percentile, require_dcmtk
from overread.errors import ConfigError

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class SoakOptions:
    """What ``overread bench soak`` runs (see the module)."""

    rate: float = 4.0
    duration: float = 120.0
    studies: int = 100_000
    size: int = 1024
    workers: int = 2
    chunk: int = 1000
    sample_seconds: float = 5.0
    watch_seconds: float = 0.02
    settle: float = 120.0
    seed: int = 0

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first invalid option."""
        if not 0 < self.rate <= 100:
            raise ConfigError(f"bench soak: --rate must be in (0, 100], got {self.rate}")
        if self.duration <= 0:
            raise ConfigError("bench soak: --duration must be positive")
        if self.studies < 1:
            raise ConfigError("bench soak: --studies must be >= 1")
        if not 64 <= self.size <= 3000:
            raise ConfigError("bench soak: --size must be between 64 and 3000 pixels")
        if not 1 <= self.workers <= 16:
            raise ConfigError("bench soak: --workers must be between 1 and 16")
        if self.chunk < 1:
            raise ConfigError("bench soak: --chunk must be >= 1")


def _rss_mb() -> float:
    """This process's resident memory in MB (``/proc``; NaN where there is none)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def _open_files() -> int:
    """Open file descriptors of this process (-1 where ``/proc`` is not there)."""
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return -1


def _growth(samples: list[dict[str, Any]], key: str) -> float:
    """Mean of ``key`` over the last quarter of the samples less that of the first."""
    values = [float(s[key]) for s in samples if isinstance(s.get(key), int | float)]
    if len(values) < 4:
        return float("nan")
    quarter = max(1, len(values) // 4)
    return sum(values[-quarter:]) / quarter - sum(values[:quarter]) / quarter


def benchmark_soak(options: SoakOptions, *, progress: Progress | None = None) -> dict[str, Any]:
    """Run the soak described by ``options`` and return its figures.

    Returns
    -------
    dict
        ``sent``, ``acknowledged``, ``reported``, ``lost``, ``duplicated``,
        ``offered_per_s`` (over the sending time) and ``completed_per_s`` (reports
        from the first send to the last report), ``sustained`` (every acknowledged
        study reported, at least 95 % of the rate), ``p50_s``/``p95_s``/``max_s``,
        ``chunks`` (p50/p95 per ``chunk`` studies), ``samples`` (over time),
        ``rss_growth_mb`` and ``open_files_growth`` (last quarter less first),
        ``machine``.
    """
    options.validate()
    require_dcmtk()
    report = progress or (lambda _task, _done, _total: None)
    started = time.monotonic()
    planned = min(options.studies, max(1, math.floor(options.duration * options.rate)))
    with tempfile.TemporaryDirectory(prefix="overread-bench-soak-") as tmp:
        root = Path(tmp)
        report("phantom studies", 0, 1)
        factory = StudyFactory(root / "templates", (options.size,), options.seed)
        report("phantom studies", 1, 1)
        # Studies are written ahead of their send (a few at a time) by this thread.
        e2e = E2EOptions(sizes=(options.size,), seed=options.seed)
        with running_gateway(
            root / "run",
            backend="embedded",
            workers=options.workers,
            options=e2e,
            watch_interval=options.watch_seconds,
        ) as gateway:
            warm_path, warm_study = factory.make(root / "warm")
            warm = Sent(warm_study, warm_path)
            _send_one(gateway, warm)
            deadline = time.monotonic() + 300
            while gateway.pacs.arrived(warm.study) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            items: list[Sent] = []
            samples: list[dict[str, Any]] = []
            threads: list[threading.Thread] = []
            stop_sampling = threading.Event()
            t0 = time.time()

            def sample() -> None:
                reported = sum(1 for i in items if gateway.pacs.arrived(i.study) is not None)
                samples.append(
                    {
                        "t_s": round(time.time() - t0, 3),
                        "sent": len(items),
                        "reported": reported,
                        "jobs_pending": gateway.service.queue.pending(),
                        "rss_mb": round(_rss_mb(), 1),
                        "open_files": _open_files(),
                        "threads": threading.active_count(),
                    }
                )

            def sampler() -> None:
                while not stop_sampling.wait(options.sample_seconds):
                    sample()

            sample()
            watcher = threading.Thread(target=sampler, name="soak-sampler", daemon=True)
            watcher.start()
            folder = root / "studies"
            for index in range(planned):
                due = t0 + index / options.rate
                path, study = factory.make(folder)
                delay = due - time.time()
                if delay > 0:
                    time.sleep(delay)
                item = Sent(study, path, due=due - t0)
                items.append(item)
                thread = threading.Thread(target=_send_and_clean, args=(gateway, item), daemon=True)
                thread.start()
                threads.append(thread)
                threads = [t for t in threads if t.is_alive()]
                if index % 10 == 0:
                    report("sending", index, planned)
            sending_s = time.time() - t0
            for thread in threads:
                thread.join(60)
            report("sending", planned, planned)
            settle_until = time.monotonic() + options.settle
            acknowledged = [i for i in items if i.error is None]
            while time.monotonic() < settle_until:
                if all(gateway.pacs.arrived(i.study) is not None for i in acknowledged):
                    break
                time.sleep(0.1)
            stop_sampling.set()
            watcher.join(options.sample_seconds + 5)
            time.sleep(max(0.2, options.watch_seconds * 5))  # any duplicate lands
            sample()
            for item in items:
                item.arrived_wall = gateway.pacs.arrived(item.study)
            counts = dict(gateway.pacs.counts)
    latencies = [i.latency for i in items if i.latency is not None]
    arrivals = [i.arrived_wall for i in items if i.arrived_wall is not None]
    # Reports per second from the first send to the last report: a queue that keeps
    # pace ends one latency after the last send, one that falls behind much later.
    span = (max(arrivals) - t0) if arrivals else float("nan")
    chunks = []
    for start in range(0, len(items), options.chunk):
        part = [i.latency for i in items[start : start + options.chunk] if i.latency is not None]
        chunks.append(
            {
                "studies": f"{start + 1}-{min(start + options.chunk, len(items))}",
                "reported": len(part),
                "p50_s": percentile(part, 50),
                "p95_s": percentile(part, 95),
            }
        )
    lost = [i.study for i in acknowledged if i.arrived_wall is None]
    duplicated = [i.study for i in items if counts.get(i.study, 0) > 1]
    completed_per_s = len(arrivals) / span if arrivals and span > 0 else float("nan")
    offered_per_s = len(items) / sending_s if sending_s > 0 else float("nan")
    return {
        "options": dict(options.__dict__),
        "image_mb": round(options.size * options.size * 2 / 1e6, 1),
        "sent": len(items),
        "acknowledged": len(acknowledged),
        "reported": len(latencies),
        "lost": len(lost),
        "lost_studies": lost[:20],
        "duplicated": len(duplicated),
        "sending_s": round(sending_s, 3),
        "offered_per_s": offered_per_s,
        "completed_per_s": completed_per_s,
        "sustained": not lost and completed_per_s >= 0.95 * options.rate,
        "p50_s": percentile(latencies, 50),
        "p95_s": percentile(latencies, 95),
        "max_s": max(latencies) if latencies else float("nan"),
        "chunks": chunks,
        "samples": samples,
        "latency_points": [
            {"t_s": round(i.start_wall - t0, 3), "latency_s": round(i.latency, 4)}
            for i in items
            if i.latency is not None
        ],
        "rss_growth_mb": _growth(samples[:-1], "rss_mb"),
        "open_files_growth": _growth(samples[:-1], "open_files"),
        "machine": machine_info(),
        "seconds": time.monotonic() - started,
    }


def _send_and_clean(gateway: Any, item: Sent) -> None:
    """Send one study, then remove its file (a long soak would fill the disk)."""
    _send_one(gateway, item)
    item.path.unlink(missing_ok=True)


def plot_soak(result: dict[str, Any], path: Path) -> Path:
    """Throughput, latency, RSS and open files over time, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = result["samples"]
    times = [s["t_s"] for s in samples]
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    rates: list[float] = []
    for before, after in itertools.pairwise(samples):
        span = after["t_s"] - before["t_s"]
        rates.append((after["reported"] - before["reported"]) / span if span > 0 else 0.0)
    axes[0].plot(times[1:], rates, label="reported studies/s")
    axes[0].axhline(result["options"]["rate"], color="grey", linestyle="--", label="offered rate")
    axes[0].set_ylabel("studies/s")
    axes[0].legend(loc="upper left")
    pending = axes[0].twinx()
    pending.plot(times, [s["jobs_pending"] for s in samples], color="tab:orange")
    pending.set_ylabel("jobs pending (orange)")
    axes[1].plot(
        [s["t_s"] for s in result.get("latency_points", [])],
        [s["latency_s"] for s in result.get("latency_points", [])],
        ".",
        markersize=2,
    )
    axes[1].set_ylabel("latency s (send start)")
    axes[2].plot(times, [s["rss_mb"] for s in samples], label="RSS MB")
    twin = axes[2].twinx()
    twin.plot(times, [s["open_files"] for s in samples], color="tab:red", label="open files")
    axes[2].set_ylabel("RSS MB")
    twin.set_ylabel("open files")
    axes[2].set_xlabel("seconds since the first send")
    fig.suptitle(
        f"overread bench soak: {result['options']['rate']:g} studies/s offered, "
        f"{result['sent']} studies, p95 {result['p95_s']:.2f} s"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


__all__ = ["SoakOptions", "benchmark_soak", "plot_soak"]
