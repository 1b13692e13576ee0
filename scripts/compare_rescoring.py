"""The worklist's periodic rescoring: every unread row against only the rows due
(docs/benchmarks.md).

For each size, two SQLite worklists of N unread studies (the 14 CheXpert findings
each, received 3 a second as in ``overread bench soak``) are scored, then rescored
every 15 s of simulated time (the gateway's triage interval), alternating: one by
the ``full=True`` pass (every unread row), one incrementally (only the rows whose
wait crossed a step). Prints one JSON object: per size, the median and the maximum
ms of a pass and the median rows rewritten, each way, and the load average.

    PYTHONPATH=src python scripts/compare_rescoring.py [--sizes 500,2000,8000] [--passes 12]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from overread.findings import CHEXPERT_LABELS
from overread.results import FindingResult
from overread.service.db import Database
from overread.triage import StudyContext, TriageConfig, refresh_scores, upsert_study

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
DEPARTMENTS = ("ED", "ICU", "outpatient", "inpatient")


def _fill(db: Database, studies: int, config: TriageConfig, seed: int) -> None:
    rng = random.Random(seed)
    with db.session() as session:
        for index in range(studies):
            received = NOW - timedelta(seconds=(studies - index) / 3.0)
            findings = [
                FindingResult(label, rng.random(), rng.random() < 0.2, rng.random(), 0.5)
                for label in CHEXPERT_LABELS
            ]
            context = StudyContext(rng.choice(DEPARTMENTS), rng.uniform(1, 95), received)
            upsert_study(session, f"1.2.3.{index}", findings, context, config, now=received)


def _pass(db: Database, config: TriageConfig, now: datetime, full: bool) -> tuple[float, int]:
    started = time.perf_counter()
    with db.session() as session:
        rows = refresh_scores(session, config, now=now, full=full)
    return (time.perf_counter() - started) * 1000.0, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="500,2000,8000")
    parser.add_argument("--passes", type=int, default=12)
    args = parser.parse_args()
    config = TriageConfig()
    load_before = os.getloadavg()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="overread-rescore-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            dbs = {}
            for way in ("full", "incremental"):
                db = Database(f"sqlite:///{Path(tmp) / f'{way}-{size}.db'}")
                _fill(db, size, config, seed=size)
                _pass(db, config, NOW, full=True)  # as a gateway's first pass
                dbs[way] = db
            times: dict[str, list[float]] = {"full": [], "incremental": []}
            rows: dict[str, list[int]] = {"full": [], "incremental": []}
            for index in range(1, args.passes + 1):
                now = NOW + timedelta(seconds=15 * index)
                for way in ("full", "incremental") if index % 2 else ("incremental", "full"):
                    ms, count = _pass(dbs[way], config, now, full=way == "full")
                    times[way].append(ms)
                    rows[way].append(count)
            for db in dbs.values():
                db.dispose()
            results[str(size)] = {
                way: {
                    "median_ms": round(statistics.median(times[way]), 1),
                    "max_ms": round(max(times[way]), 1),
                    "median_rows": statistics.median(rows[way]),
                }
                for way in times
            }
    print(
        json.dumps(
            {
                "studies": results,
                "passes": args.passes,
                "interval_s": 15,
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
