"""Cost of test-time augmentation per study (``overread bench tta``).

Each study (one frontal phantom radiograph, read from its DICOM file) goes through
``Pipeline.predict`` once per setting -- no TTA, then each view count -- in turn,
study by study, so every setting meets the same load on a shared machine and the
ratios are side by side. Wall time per study (median) and process CPU time per study
are reported; the CPU time is the steadier figure under load.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from overread.errors import ConfigError


def benchmark_tta(
    *,
    studies: int = 16,
    views: Sequence[int] = (4, 8),
    rounds: int = 2,
    size: int = 1024,
    model: str = "cxr-default",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Milliseconds per study without TTA and with each of ``views``.

    Returns
    -------
    dict
        ``model``, ``runtime``, ``studies``, ``rounds``, ``size``, ``cpu_count``, load
        averages, and ``settings``: one row per view count (1 = no TTA) with
        ``median_ms``, ``cpu_ms_per_study``, ``ratio_to_single`` (median wall) and
        ``cpu_ratio_to_single``, and the mean TTA spread (SD across views) of the
        probabilities.
    """
    if studies < 1 or rounds < 1:
        raise ConfigError("bench tta: --studies and --rounds must be >= 1")
    counts = sorted({1, *(int(v) for v in views)})
    if counts[0] < 1 or counts[-1] > 64:
        raise ConfigError("bench tta: --views must lie in 1..64")
    from overread.inference import Pipeline
    from overread.phantom import generate_cohort

    say = progress or (lambda _task: None)
    pipelines = {v: Pipeline.from_name(model, tta_views=v) for v in counts}
    times: dict[int, list[float]] = {v: [] for v in counts}
    cpu: dict[int, float] = dict.fromkeys(counts, 0.0)
    spread: dict[int, list[float]] = {v: [] for v in counts}
    report: dict[str, Any] = {
        "model": f"{pipelines[1].model.name} {pipelines[1].model.version}",
        "runtime": f"{pipelines[1].model.runtime}/{pipelines[1].model.precision}",
        "studies": studies,
        "rounds": rounds,
        "size": size,
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    with tempfile.TemporaryDirectory(prefix="overread-bench-tta-") as folder:
        say("rendering phantoms")
        generate_cohort(folder, n=studies, seed=7, rows=size, cols=size)
        paths = sorted((Path(folder) / "images").rglob("*.dcm"))[:studies]
        for pipeline in pipelines.values():
            pipeline.predict(paths[:1])  # warm-up: sessions, caches
        say("timing")
        for _ in range(rounds):
            for path in paths:
                for v, pipeline in pipelines.items():
                    started_cpu = time.process_time()
                    started = time.perf_counter()
                    [prediction] = pipeline.predict([path])
                    times[v].append((time.perf_counter() - started) * 1000.0)
                    cpu[v] += (time.process_time() - started_cpu) * 1000.0
                    if not prediction.ok:
                        raise ConfigError(f"bench tta: {path}: {prediction.error}")
        for v, pipeline in pipelines.items():
            if v > 1:
                spread[v] = _spreads(pipeline, paths)
    single_ms = statistics.median(times[1])
    single_cpu = cpu[1] / len(times[1])
    report["settings"] = [
        {
            "views": v,
            "median_ms": round(statistics.median(times[v]), 1),
            "cpu_ms_per_study": round(cpu[v] / len(times[v]), 1),
            "ratio_to_single": round(statistics.median(times[v]) / single_ms, 2),
            "cpu_ratio_to_single": round(cpu[v] / len(times[v]) / single_cpu, 2),
            "mean_spread": round(statistics.mean(spread[v]), 4) if spread[v] else None,
        }
        for v in counts
    ]
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    return report


def _spreads(pipeline: Any, paths: list[Path]) -> list[float]:
    """Mean over labels of the SD across views, per study."""
    out = []
    for _, x in pipeline.admit(paths, False):
        if x is None:
            continue
        samples, _ = pipeline.probability_samples(x[None])
        out.append(float(samples.std(axis=0).mean()))
    return out


__all__ = ["benchmark_tta"]
