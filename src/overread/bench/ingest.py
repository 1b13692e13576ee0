"""``overread bench ingest``: overread's SCP against DCMTK ``storescp`` on the same files.

Both receivers get the same files from DCMTK ``storescu`` on loopback, in alternation
(storescp, overread, storescp, overread, ...) so that load from other processes hits
both alike. ``storescp`` writes without fsync (its default); overread fsyncs every
file and its directory and commits the instance's row before it answers. With several
associations ``storescp --fork`` takes each in its own process, overread in threads.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from overread.bench.machine import BENCH_AE_TITLE, machine_info, median, require_dcmtk
from overread.config import Settings
from overread.errors import ConfigError
from overread.harness import StorescpPacs, send_parallel, write_chest_dx
from overread.harness.gateway import loopback_config
from overread.service.db import Database
from overread.service.ingest import Ingestor
from overread.service.scp import StorageSCP
from overread.service.store import ObjectStore


def write_test_radiograph(path: Path, *, size: int, study_uid: str, seed: int) -> Path:
    """A synthetic 12-bit chest DX of ``size``² of the benchmark's patient."""
    return write_chest_dx(
        path,
        study_uid=study_uid,
        size=size,
        seed=seed,
        patient_id="BENCH",
        patient_name="Bench^Mark",
        birth_date="",
        accession="",
        pixel_spacing=0.15,
        window=None,
    )


def overread_seconds(root: Path, paths: list[Path], associations: int) -> float:
    """Seconds overread's SCP (alone, fsync'd, its database in ``root``) takes to receive ``paths``."""
    config = loopback_config(Settings(data_dir=root))
    database = Database(config.database_url)
    scp = StorageSCP(config, Ingestor(database, ObjectStore(root / "objects")))
    port = scp.start()
    try:
        return send_parallel(port, paths, associations, config.ae_title, BENCH_AE_TITLE)
    finally:
        scp.stop()
        database.dispose()


def storescp_seconds(root: Path, paths: list[Path], associations: int) -> float:
    """Seconds DCMTK ``storescp`` (``--fork`` with several associations) takes to receive ``paths``."""
    pacs = StorescpPacs(root, fork=associations > 1)
    port = pacs.start()
    try:
        return send_parallel(port, paths, associations, "ANY-SCP", BENCH_AE_TITLE)
    finally:
        pacs.stop()


def benchmark_ingest_side_by_side(
    *,
    files: int = 40,
    size: int = 1600,
    associations: int = 4,
    repeats: int = 3,
    max_seconds: float = 300.0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """MB/s and instances/s of ``storescp`` and overread's fsync'd SCP, side by side.

    Parameters
    ----------
    files, size
        ``files`` synthetic 12-bit chest DX of ``size`` x ``size`` pixels (1600: 5.1 MB).
    associations
        The concurrent case; one association is always measured too.
    repeats
        Alternating runs per receiver and case; the best and the median are reported.
    max_seconds
        Stop repeating once this much time has passed (at least one run each).

    Returns
    -------
    dict
        ``cases``: one entry per association count with ``storescp`` and
        ``overread_fsync`` (``mb_s``/``instances_s`` best and median) and ``ratio``
        (best overread / best storescp); ``ratio_1`` and ``ratio_n`` for short.
    """
    if files < 1 or size < 64 or associations < 1 or repeats < 1:
        raise ConfigError(
            "bench ingest: --files, --associations and --repeats must be >= 1, --size >= 64"
        )
    require_dcmtk()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="overread-bench-ingest-") as tmp:
        root = Path(tmp)
        (root / "in").mkdir()
        study = generate_uid()
        paths = [
            write_test_radiograph(root / "in" / f"{i:04d}.dcm", size=size, study_uid=study, seed=i)
            for i in range(files)
        ]
        total = sum(p.stat().st_size for p in paths)
        cases: list[dict[str, Any]] = []
        counts = sorted({1, associations})
        run = 0
        for count in counts:
            times: dict[str, list[float]] = {"storescp": [], "overread_fsync": []}
            for repeat in range(repeats):
                if repeat and time.monotonic() - started > max_seconds:
                    break
                for name, runner in (
                    ("storescp", storescp_seconds),
                    ("overread_fsync", overread_seconds),
                ):
                    run += 1
                    if progress is not None:
                        progress(f"{name}, {count} association(s), run {repeat + 1}")
                    times[name].append(runner(root / f"run{run}", paths, count))
            case: dict[str, Any] = {"associations": count, "runs": len(times["storescp"])}
            for name, seconds in times.items():
                best, typical = min(seconds), median(seconds)
                case[name] = {
                    "mb_s": total / best / 1e6,
                    "instances_s": files / best,
                    "mb_s_median": total / typical / 1e6,
                    "instances_s_median": files / typical,
                    "seconds": seconds,
                }
            case["ratio"] = case["overread_fsync"]["mb_s"] / case["storescp"]["mb_s"]
            case["ratio_median"] = (
                case["overread_fsync"]["mb_s_median"] / case["storescp"]["mb_s_median"]
            )
            cases.append(case)
    return {
        "files": files,
        "size": size,
        "mb_per_file": total / files / 1e6,
        "cases": cases,
        "ratio_1": cases[0]["ratio"],
        "ratio_n": cases[-1]["ratio"],
        "machine": machine_info(),
        "seconds": time.monotonic() - started,
    }


__all__ = [
    "benchmark_ingest_side_by_side",
    "overread_seconds",
    "storescp_seconds",
    "write_test_radiograph",
]
