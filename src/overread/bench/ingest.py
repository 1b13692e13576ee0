"""``overread bench ingest``: overread's SCP against DCMTK ``storescp`` on the same files.

Both receivers get the same files from DCMTK ``storescu`` on loopback, in alternation
(storescp, overread, storescp, overread, ...) so that load from other processes hits
both alike. ``storescp`` writes without fsync (its default); overread fsyncs every
file and its directory and commits the instance's row before it answers. With several
associations ``storescp --fork`` takes each in its own process; overread takes them
as ``overread serve`` does unless told otherwise: in one receiving process (the
``dicom_receivers`` default), or in ``--receivers`` processes on the one port (one
listening socket). On two cores one process measured faster than one per association
(docs/benchmarks.md: the processes compete for the cores with the senders, and only
one process groups the commits of concurrent instances).
"""

from __future__ import annotations

import resource
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
from overread.service.config import ServiceConfig
from overread.service.db import Database
from overread.service.ingest import Ingestor
from overread.service.receivers import ReceiverProcesses
from overread.service.scp import StorageSCP
from overread.service.store import ObjectStore

#: What ``overread serve`` runs unless ``--receivers`` says otherwise.
_DEFAULT_RECEIVERS = int(ServiceConfig.model_fields["dicom_receivers"].default)


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


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def overread_seconds(
    root: Path,
    paths: list[Path],
    associations: int,
    receivers: int = 1,
    cpu: list[float] | None = None,
) -> float:
    """Seconds overread's SCP (alone, fsync'd, its database in ``root``) takes to receive
    ``paths``; with ``receivers`` > 1 that many processes receive on the port (their
    start is not timed). With one receiver, ``cpu`` (if given) gets the CPU seconds
    this process (the receiver: the senders are other processes) spent during the
    transfer."""
    config = loopback_config(Settings(data_dir=root))
    database = Database(config.database_url)
    scp = StorageSCP(
        config, Ingestor(database, ObjectStore(root / "objects")), shared_port=receivers > 1
    )
    port = scp.start()
    children: ReceiverProcesses | None = None
    try:
        if receivers > 1:
            children = ReceiverProcesses(
                config, receivers - 1, on_released=lambda _s: None, on_stored=lambda _o: None
            )
            children.start(scp.listening_socket)
        before = _cpu_seconds()
        seconds = send_parallel(port, paths, associations, config.ae_title, BENCH_AE_TITLE)
        if cpu is not None and receivers == 1:
            cpu.append(_cpu_seconds() - before)
        return seconds
    finally:
        if children is not None:
            children.stop()
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


def ingest_costs(root: Path, paths: list[Path]) -> dict[str, float]:
    """Median milliseconds per instance of each step of overread's ingest, measured one
    at a time on ``paths`` in ``root`` (the same disk): parsing the header, SHA-256,
    writing the bytes (page cache), the file fsync, the directory fsync, and the
    database (the row, the study and the audit event committed: ingest with the store's
    fsync off, less the steps before). What the network receive costs is the rest of
    the SCP's time per instance."""
    import hashlib
    import os

    from overread.imaging import read_instance
    from overread.service.ingest import InstanceColumns

    steps: dict[str, list[float]] = {
        k: [] for k in ("parse", "sha256", "write", "fsync_file", "fsync_dir", "database")
    }
    config = loopback_config(Settings(data_dir=root / "db"))
    database = Database(config.database_url)
    ingestor = Ingestor(database, ObjectStore(root / "nosync", fsync=False))
    folder = root / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for number, path in enumerate(paths):
            data = path.read_bytes()
            t0 = time.perf_counter()
            InstanceColumns.of(read_instance(data, source=str(path)))
            t1 = time.perf_counter()
            hashlib.sha256(data).hexdigest()
            t2 = time.perf_counter()
            fd = os.open(folder / f"{number}.dcm", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                t3 = time.perf_counter()
                os.fsync(fd)
            finally:
                os.close(fd)
            t4 = time.perf_counter()
            directory = os.open(folder, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            t5 = time.perf_counter()
            ingestor.ingest(data, calling_ae=BENCH_AE_TITLE)
            t6 = time.perf_counter()
            steps["parse"].append(t1 - t0)
            steps["sha256"].append(t2 - t1)
            steps["write"].append(t3 - t2)
            steps["fsync_file"].append(t4 - t3)
            steps["fsync_dir"].append(t5 - t4)
            steps["database"].append(max(0.0, (t6 - t5) - (t3 - t0)))
    finally:
        database.dispose()
    return {name: median(values) * 1000.0 for name, values in steps.items()}


def benchmark_ingest_side_by_side(
    *,
    files: int = 40,
    size: int = 1600,
    associations: int = 4,
    repeats: int = 3,
    max_seconds: float = 300.0,
    receivers: int = 0,
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
    receivers
        overread's receiving processes in the concurrent case (0: as many as
        ``overread serve`` runs by default); one association is received by one process.

    Returns
    -------
    dict
        ``cases``: one entry per association count with ``storescp`` and
        ``overread_fsync`` (``mb_s``/``instances_s`` best and median) and ``ratio``
        (best overread / best storescp); ``ratio_1`` and ``ratio_n`` for short;
        ``costs_ms`` (:func:`ingest_costs`) and ``wall_ms_per_instance``; per case
        also ``overread_cpu_ms_per_mb`` (median CPU milliseconds of the receiving
        process per MB received, None with several receiving processes).
    """
    if files < 1 or size < 64 or associations < 1 or repeats < 1 or receivers < 0:
        raise ConfigError(
            "bench ingest: --files, --associations and --repeats must be >= 1, --size >= 64, "
            "--receivers >= 0"
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
            processes = 1 if count == 1 else (receivers or _DEFAULT_RECEIVERS)
            times: dict[str, list[float]] = {"storescp": [], "overread_fsync": []}
            cpu: list[float] = []
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
                    if runner is overread_seconds:
                        elapsed = overread_seconds(root / f"run{run}", paths, count, processes, cpu)
                    else:
                        elapsed = runner(root / f"run{run}", paths, count)
                    times[name].append(elapsed)
            case: dict[str, Any] = {
                "associations": count,
                "receivers": processes,
                "runs": len(times["storescp"]),
            }
            for name, seconds in times.items():
                best, typical = min(seconds), median(seconds)
                case[name] = {
                    "mb_s": total / best / 1e6,
                    "instances_s": files / best,
                    "mb_s_median": total / typical / 1e6,
                    "instances_s_median": files / typical,
                    "seconds": seconds,
                }
            # CPU of the receiving process per MB received (one receiving process only),
            # the median of the runs: steadier than wall time on a loaded machine.
            case["overread_cpu_ms_per_mb"] = median(cpu) * 1000.0 / (total / 1e6) if cpu else None
            case["ratio"] = case["overread_fsync"]["mb_s"] / case["storescp"]["mb_s"]
            case["ratio_median"] = (
                case["overread_fsync"]["mb_s_median"] / case["storescp"]["mb_s_median"]
            )
            cases.append(case)
        if progress is not None:
            progress("cost per instance, step by step")
        costs = ingest_costs(root / "costs", paths)
        per_instance = {
            case["associations"]: {
                name: 1000.0 * min(case[name]["seconds"]) / files
                for name in ("storescp", "overread_fsync")
            }
            for case in cases
        }
    return {
        "files": files,
        "size": size,
        "mb_per_file": total / files / 1e6,
        "cases": cases,
        "ratio_1": cases[0]["ratio"],
        "ratio_n": cases[-1]["ratio"],
        # Median ms per instance of each ingest step alone, and the best wall ms per
        # instance of each receiver (per association count) to set them against.
        "costs_ms": costs,
        "wall_ms_per_instance": per_instance,
        "machine": machine_info(),
        "seconds": time.monotonic() - started,
    }


__all__ = [
    "benchmark_ingest_side_by_side",
    "ingest_costs",
    "overread_seconds",
    "storescp_seconds",
    "write_test_radiograph",
]
