"""Extra cost of the explanation trust score per image (docs/benchmarks.md).

Runs the bundled model on phantom radiographs already read into memory, one image per
call (as the gateway does for a one-image study), without and with ``trust=True``,
through the plain pipeline and the micro-batched one the gateway uses. Prints one JSON
object.

    python scripts/bench_trust.py [--images 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from overread.imaging import read
from overread.inference import Pipeline
from overread.inference.batching import BatchedPipeline
from overread.phantom import generate_cohort
from overread.results import Decision


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        generate_cohort(folder, n=args.images, seed=5, rows=256, cols=256)
        images = [read(p) for p in sorted((Path(folder) / "images").rglob("*.dcm"))]
    pipeline = Pipeline.from_name("cxr-default")
    batched = BatchedPipeline(pipeline, max_batch=8, max_wait_ms=5.0)
    batched.warmup()  # sessions for batch 1, 2, 4, 8, as the gateway warms them
    acted = [
        sum(f.decision is not Decision.NEGATIVE for f in p.findings)
        for p in pipeline.predict(images, trust=True)
    ]
    report: dict[str, Any] = {
        "images": len(images),
        "rounds": args.rounds,
        "model": f"{pipeline.model.name} {pipeline.model.version}",
        "runtime": f"{pipeline.model.runtime}/{pipeline.model.precision}",
        "acted_on_findings_per_image": round(statistics.mean(acted), 2),
        "cpu_count": os.cpu_count(),
        "load_average_1min_at_start": round(os.getloadavg()[0], 2),
    }
    try:
        for name, predict in (("pipeline", pipeline.predict), ("batched", batched.predict)):
            for trust in (False, True):
                _per_image_ms(predict, images[:2], 1, trust)  # warm-up
            plain, plain_cpu = _per_image_ms(predict, images, args.rounds, False)
            trusted, trusted_cpu = _per_image_ms(predict, images, args.rounds, True)
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
    print(json.dumps(report))


if __name__ == "__main__":
    main()
