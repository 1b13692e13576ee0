"""Extra cost of the explanation trust score per image (``overread bench trust``).

Runs the bundled model on phantom radiographs already read into memory, one image per
call (as the gateway does for a one-image study), without and with ``trust=True``,
through the plain pipeline and the micro-batched one the gateway uses. Wall time is
inflated on a shared machine; process CPU time per image is the steadier figure.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overread.errors import ConfigError


def _per_image_ms(
    predict: Any, images: list[Any], rounds: int, trust: bool
) -> tuple[list[float], float]:
    """Wall milliseconds of each call, and the process CPU milliseconds per image."""
    times: list[float] = []
    cpu = time.process_time()
    for _ in range(rounds):
        for image in images:
            started = time.perf_counter()
            predict([image], trust=trust)
            times.append((time.perf_counter() - started) * 1000.0)
    return times, (time.process_time() - cpu) * 1000.0 / (rounds * len(images))


def benchmark_trust(
    *, images: int = 16, rounds: int = 3, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """Milliseconds per image without and with the trust score, both pipelines.

    Returns
    -------
    dict
        ``images``, ``rounds``, ``model``, ``runtime``, ``acted_on_findings_per_image``,
        ``cpu_count``, load averages, and per pipeline (``pipeline``, ``batched``)
        ``median_ms_without_trust``, ``median_ms_with_trust``, ``median_extra_ms``,
        ``cpu_ms_per_image_without_trust``, ``cpu_ms_per_image_with_trust``.
    """
    if images < 1 or rounds < 1:
        raise ConfigError("bench trust: --images and --rounds must be >= 1")
    from overread.imaging import read
    from overread.inference import Pipeline
    from overread.inference.batching import BatchedPipeline
    from overread.phantom import generate_cohort
    from overread.results import Decision

    say = progress or (lambda _task: None)
    say("rendering phantoms")
    with tempfile.TemporaryDirectory(prefix="overread-bench-trust-") as folder:
        generate_cohort(folder, n=images, seed=5, rows=256, cols=256)
        loaded = [read(p) for p in sorted((Path(folder) / "images").rglob("*.dcm"))]
    pipeline = Pipeline.from_name("cxr-default")
    batched = BatchedPipeline(pipeline, max_batch=8, max_wait_ms=5.0)
    batched.warmup()  # sessions for batch 1, 2, 4, 8, as the gateway warms them
    acted = [
        sum(f.decision is not Decision.NEGATIVE for f in p.findings)
        for p in pipeline.predict(loaded, trust=True)
    ]
    report: dict[str, Any] = {
        "images": len(loaded),
        "rounds": rounds,
        "model": f"{pipeline.model.name} {pipeline.model.version}",
        "runtime": f"{pipeline.model.runtime}/{pipeline.model.precision}",
        "acted_on_findings_per_image": round(statistics.mean(acted), 2),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    try:
        for name, predict in (("pipeline", pipeline.predict), ("batched", batched.predict)):
            say(f"timing the {name} path")
            for trust in (False, True):
                _per_image_ms(predict, loaded[:2], 1, trust)  # warm-up
            plain, plain_cpu = _per_image_ms(predict, loaded, rounds, False)
            trusted, trusted_cpu = _per_image_ms(predict, loaded, rounds, True)
            report[name] = {
                "median_ms_without_trust": round(statistics.median(plain), 1),
                "median_ms_with_trust": round(statistics.median(trusted), 1),
                "median_extra_ms": round(statistics.median(trusted) - statistics.median(plain), 1),
                "cpu_ms_per_image_without_trust": round(plain_cpu, 1),
                "cpu_ms_per_image_with_trust": round(trusted_cpu, 1),
            }
    finally:
        batched.close()
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    return report


__all__ = ["benchmark_trust"]
