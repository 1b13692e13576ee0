"""``overread bench stats``: patient-level bootstrap and DeLong at 10k to 1M predictions."""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from overread.bench.machine import machine_info
from overread.errors import ConfigError


def _timed(call: Callable[[], Any]) -> tuple[float, float, Any]:
    start, cpu = time.perf_counter(), time.process_time()
    value = call()
    return time.perf_counter() - start, time.process_time() - cpu, value


def benchmark_stats(
    *,
    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000),
    resamples: int = 1000,
    images_per_patient: int = 2,
    max_seconds: float = 600.0,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Wall and CPU seconds of the evaluation statistics on synthetic predictions.

    For each size ``n`` (one finding, ``n`` images, ``images_per_patient`` per
    patient, 10% positive): the patient-level bootstrap of the AUC with
    ``resamples`` resamples (:func:`overread.evaluation.bootstrap.bootstrap_auc`),
    DeLong's CI (:func:`~overread.evaluation.delong.delong_ci`), the paired DeLong
    test of two scores and Obuchowski's clustered DeLong CI. A size whose bootstrap
    would, scaled linearly from the previous size, run past ``max_seconds`` in total
    is skipped and reported as such.
    """
    if not sizes or min(sizes) < 100 or resamples < 10:
        raise ConfigError("bench stats: sizes must be >= 100 and --resamples >= 10")
    from overread.evaluation.bootstrap import bootstrap_auc
    from overread.evaluation.delong import clustered_delong_ci, delong_ci, delong_test

    started = time.monotonic()
    rows: list[dict[str, Any]] = []
    per_prediction: float | None = None
    for n in sorted(sizes):
        if per_prediction is not None:
            estimate = per_prediction * n
            if time.monotonic() - started + estimate > max_seconds:
                rows.append({"n": n, "skipped": f"estimated {estimate:.0f} s > --max-seconds"})
                continue
        if progress is not None:
            progress(f"{n:,} predictions")
        rng = np.random.default_rng(seed)
        truth = (rng.random(n) < 0.1).astype(np.float64)
        score_a = np.round(rng.normal(size=n) + 1.2 * truth, 4)
        score_b = np.round(rng.normal(size=n) + 1.0 * truth, 4)
        patients = np.arange(n) // images_per_patient
        boot_s, boot_cpu, boot = _timed(
            partial(bootstrap_auc, truth, score_a, patients, n_resamples=resamples, seed=seed)
        )
        ci_s, ci_cpu, estimate_ci = _timed(partial(delong_ci, truth, score_a))
        test_s, test_cpu, _ = _timed(partial(delong_test, truth, score_a, score_b))
        clu_s, clu_cpu, _ = _timed(partial(clustered_delong_ci, truth, score_a, patients))
        per_prediction = (boot_s + ci_s + test_s + clu_s) / n
        rows.append(
            {
                "n": n,
                "patients": int(patients[-1]) + 1,
                "bootstrap_s": boot_s,
                "bootstrap_cpu_s": boot_cpu,
                "bootstrap_resamples": resamples,
                "bootstrap_ms_per_resample": boot_s / resamples * 1000,
                "delong_ci_s": ci_s,
                "delong_test_s": test_s,
                "clustered_delong_s": clu_s,
                "delong_cpu_s": ci_cpu + test_cpu + clu_cpu,
                "auc": float(estimate_ci.auc),
                "bootstrap_ci_width": float(np.mean(boot.ci_high - boot.ci_low)),
            }
        )
    return {
        "sizes": rows,
        "resamples": resamples,
        "machine": machine_info(),
        "seconds": time.monotonic() - started,
    }


__all__ = ["benchmark_stats"]
