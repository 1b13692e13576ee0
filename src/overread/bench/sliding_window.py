"""``overread bench sliding-window``: a CT volume through the volumetric pipeline.

Each volume size runs in a fresh Python process, so that its peak resident set size
(``ru_maxrss``) is its own: the figure that says whether memory is bounded. The
volume is a synthetic chest in HU (body, two lungs, three nodules) built slice by
slice in memory at 0.7 mm in-plane and 1 mm slices, as an assembled series would
be; the time covers resampling to the package's spacing, the Gaussian-blended
sliding windows, the return to the source grid and the nodule postprocess
(:meth:`overread.inference.volume.VolumePipeline.run_volume`), not DICOM reading.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

SPACING = (1.0, 0.7, 0.7)


def synthetic_chest(slices: int, size: int) -> np.ndarray:
    """HU ``(slices, size, size)`` float32: air, body, two lungs, three nodules."""
    volume = np.empty((slices, size, size), dtype=np.float32)
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    c = (size - 1) / 2
    body = ((x - c) / (0.45 * size)) ** 2 + ((y - c) / (0.36 * size)) ** 2 <= 1
    nodules = [  # (slice fraction, x, y, radius mm, HU)
        (0.4, c - 0.2 * size, c, 6.0, 30.0),
        (0.6, c + 0.2 * size, c - 0.1 * size, 4.0, -550.0),
        (0.5, c + 0.18 * size, c + 0.1 * size, 10.0, 20.0),
    ]
    for k in range(slices):
        plane = np.full((size, size), -1000.0, dtype=np.float32)
        plane[body] = 40.0
        t = (k - (slices - 1) / 2) / (0.46 * slices)
        if abs(t) < 1:
            scale = float(np.sqrt(1 - t * t))
            for side in (-1, 1):
                lung = ((x - c - side * 0.2 * size) / (0.15 * size * scale)) ** 2 + (
                    (y - c) / (0.28 * size * scale)
                ) ** 2 <= 1
                plane[lung] = -850.0
        for fraction, nx, ny, radius, hu in nodules:
            dz = (k - fraction * slices) * SPACING[0]
            if abs(dz) < radius:
                r = np.sqrt(radius**2 - dz**2) / SPACING[1]
                plane[(x - nx) ** 2 + (y - ny) ** 2 <= r * r] = hu
        volume[k] = plane
    return volume


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(slices: int, size: int, model: str) -> dict[str, Any]:
    """One size, in this process: stage times and peak RSS."""
    from overread.imaging import ImageMetadata
    from overread.imaging.series import Volume
    from overread.inference.pipeline import open_pipeline

    pipeline: Any = open_pipeline(model)
    imported = _rss_mb()
    pixels = synthetic_chest(slices, size)
    affine = np.diag([SPACING[2], SPACING[1], SPACING[0], 1.0])
    volume = Volume(pixels=pixels, affine=affine, spacing=SPACING, metadata=ImageMetadata())
    with_volume = _rss_mb()
    started = time.perf_counter()
    output = pipeline.run_volume(volume)
    seconds = time.perf_counter() - started
    spec = pipeline.spec
    low = [round(n * s / t) for n, s, t in zip(pixels.shape, SPACING, spec.spacing_mm, strict=True)]
    return {
        "shape": [slices, size, size],
        "voxels": int(pixels.size),
        "volume_mb": pixels.nbytes / 2**20,
        "resampled_shape": low,
        "patch_size": list(spec.patch_size),
        "overlap": spec.overlap,
        "seconds": seconds,
        "timings": output.prediction.timings,
        "nodules": len(output.prediction.regions or []),
        "rss_after_import_mb": imported,
        "rss_with_volume_mb": with_volume,
        "peak_rss_mb": _rss_mb(),
        "model": f"{pipeline.model.name} {pipeline.model.version}",
    }


def benchmark_sliding_window(
    slices: Sequence[int],
    size: int,
    model: str,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict[str, Any]:
    """Each slice count in a fresh process; rows in the order given."""
    import os

    import torch

    rows = []
    for index, count in enumerate(slices):
        if progress is not None:
            progress("volumes", index, len(slices))
        done = subprocess.run(
            [sys.executable, "-m", "overread.bench.sliding_window", str(count), str(size), model],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ},
        )
        if done.returncode != 0:
            tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"the {count}-slice run failed: {tail}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if progress is not None:
        progress("volumes", len(slices), len(slices))
    return {
        "rows": rows,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":  # one size in a fresh process (see benchmark_sliding_window)
    print(json.dumps(measure(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])))
