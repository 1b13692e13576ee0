"""``overread bench gateway``: SCP ingest against DCMTK, and C-STORE to SR latency.

The earlier pair of gateway benchmarks, kept for the command and its JSON keys;
``overread bench ingest`` and ``overread bench e2e`` measure the same more fully.
Both use real peers (DCMTK ``storescu`` sends, ``storescp`` is the PACS) on
loopback and synthetic chest radiographs written here, so they run anywhere DCMTK
does. They are measurements, never assertions in tests.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from pydicom.uid import generate_uid

from overread.bench.ingest import overread_seconds, storescp_seconds, write_test_radiograph
from overread.bench.machine import BENCH_AE_TITLE, require_dcmtk
from overread.config import Settings
from overread.errors import ServiceError
from overread.harness import PACS_AE_TITLE, StorescpPacs, send_parallel
from overread.harness.gateway import loopback_config, running_gateway


def benchmark_ingest(
    *, files: int = 40, size: int = 1600, associations: int = 1, repeats: int = 2
) -> dict[str, Any]:
    """MB/s and files/s of DCMTK ``storescp`` versus overread's SCP (fsync'd) on the same files.

    ``storescp`` writes without fsync (its default); overread fsyncs every file and
    commits its row before answering. The best of ``repeats`` runs is kept for each.
    """
    require_dcmtk()
    with tempfile.TemporaryDirectory(prefix="overread-bench-") as tmp:
        root = Path(tmp)
        study = generate_uid()
        paths = [
            write_test_radiograph(root / "in" / f"{i:04d}.dcm", size=size, study_uid=study, seed=i)
            for i in range(files)
        ]
        total = sum(p.stat().st_size for p in paths)
        results: dict[str, Any] = {
            "files": files,
            "mb_per_file": total / files / 1e6,
            "associations": associations,
        }
        best = min(
            storescp_seconds(root / f"pacs{run}", paths, associations) for run in range(repeats)
        )
        results["storescp"] = {"mb_s": total / best / 1e6, "files_s": files / best}
        best = min(
            overread_seconds(root / f"gateway{run}", paths, associations) for run in range(repeats)
        )
        results["overread_fsync"] = {"mb_s": total / best / 1e6, "files_s": files / best}
        results["ratio"] = results["overread_fsync"]["mb_s"] / results["storescp"]["mb_s"]
        return results


def benchmark_latency(*, studies: int = 12, size: int = 2048, warmup: int = 2) -> dict[str, Any]:
    """Seconds from the start of a C-STORE of one chest DX to its SR stored at the PACS.

    One in-process gateway with one worker, the default chest route (completed on
    association release), the bundled model, DCMTK ``storescp`` as the PACS.
    """
    require_dcmtk()
    with tempfile.TemporaryDirectory(prefix="overread-bench-") as tmp:
        root = Path(tmp)
        pacs = StorescpPacs(root / "pacs")
        pacs.start()
        config = loopback_config(
            Settings(data_dir=root / "gateway"),
            http_port=None,
            workers=1,
            destinations=[f"PACS={PACS_AE_TITLE}@127.0.0.1:{pacs.port}"],
        )
        latencies: list[float] = []
        try:
            with running_gateway(config) as service:
                for i in range(studies + warmup):
                    image = write_test_radiograph(
                        root / f"cxr{i}.dcm", size=size, study_uid=generate_uid(), seed=i
                    )
                    before = len(pacs.files())
                    elapsed = send_parallel(
                        service.dicom_port or 0, [image], 1, config.ae_title, BENCH_AE_TITLE
                    )
                    start = time.perf_counter() - elapsed
                    deadline = time.perf_counter() + 120
                    while len(pacs.files()) == before:
                        if time.perf_counter() > deadline:
                            raise ServiceError("no SR reached the PACS within 120 s")
                        time.sleep(0.002)
                    if i >= warmup:
                        latencies.append(time.perf_counter() - start)
        finally:
            pacs.stop()
        ordered = sorted(latencies)
        return {
            "studies": len(latencies),
            "mb_per_image": size * size * 2 / 1e6,
            "p50_s": statistics.median(ordered),
            "p95_s": ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))],
            "max_s": ordered[-1],
        }


__all__ = ["benchmark_ingest", "benchmark_latency", "write_test_radiograph"]
