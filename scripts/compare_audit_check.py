"""The periodic audit check: the whole chain against the newest checkpoint on (docs/benchmarks.md).

For each size N, builds a valid audit chain of N events in a fresh SQLite database
(WAL, as the gateway's), writes a signed checkpoint at N - 100, appends 100 events
the way the gateway does (one ``record_event`` transaction each), then times, in
turn, the check a periodic checkpoint makes before signing: the full one (every
checkpoint loaded, every event recomputed) and the incremental one (the newest
checkpoint only, its record and the 100 after it). Prints one JSON object: the
median and the minimum in ms of each, wall and CPU, per size, the records each read, and the load
average before and after.

    PYTHONPATH=src python scripts/compare_audit_check.py [--sizes 10000,50000,200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, update

from overread.audit import (
    AuditAction,
    AuditChainHead,
    AuditEvent,
    create_tables,
    event_hash,
    latest_checkpoint,
    load_checkpoints,
    record_event,
    verify_chain,
    write_checkpoint,
)
from overread.audit.chain import format_timestamp
from overread.audit.schema import GENESIS_HASH, HEAD_ID
from overread.service.db import Database

KEY = b"k" * 32
AFTER = 100


def _build(db: Database, n: int) -> None:
    """``n`` linked events, inserted in bulk (what the gateway would have appended)."""
    prev = GENESIS_HASH
    stamp = "2026-12-05T12:00:00.000Z"
    batch: list[dict[str, Any]] = []
    with db.engine.begin() as conn:
        for seq in range(1, n + 1):
            fields: dict[str, Any] = {
                "seq": seq,
                "timestamp": stamp,
                "actor": "ae:MODALITY",
                "role": "",
                "action": AuditAction.VIEW.value,
                "object_uids": [f"1.2.826.0.1.3680043.8.498.{seq}"],
                "details": {"source": "127.0.0.1", "i": seq},
                "prev_hash": prev,
            }
            prev = event_hash(fields)
            batch.append({**fields, "hash": prev})
            if len(batch) == 5000:
                conn.execute(insert(AuditEvent), batch)
                batch = []
        if batch:
            conn.execute(insert(AuditEvent), batch)
        conn.execute(
            update(AuditChainHead).where(AuditChainHead.id == HEAD_ID).values(seq=n, hash=prev)
        )


def _time(fn: Any) -> tuple[float, float, Any]:
    """Wall and CPU (this process) milliseconds of ``fn()``, and its result."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return (time.perf_counter() - start) * 1000.0, (time.process_time() - cpu) * 1000.0, result


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": round(statistics.median(values), 1), "min": round(min(values), 1)}


def measure(n: int, rounds: int, root: Path) -> dict[str, Any]:
    """Full and incremental check times (ms) on a chain of ``n`` events."""
    db = Database(f"sqlite:///{root / f'audit-{n}.db'}")
    create_tables(db.engine)
    _build(db, n - AFTER)
    directory = root / f"checkpoints-{n}"
    write_checkpoint(db.engine, directory, KEY)
    for i in range(AFTER):
        with db.session() as session:
            record_event(session, actor="ae:MODALITY", action=AuditAction.VIEW, details={"i": i})
    times: dict[str, list[float]] = {k: [] for k in ("full", "full_cpu", "inc", "inc_cpu")}
    full = incremental = None
    for _ in range(rounds):
        ms, cpu, full = _time(
            lambda: verify_chain(db.engine, checkpoints=load_checkpoints(directory, KEY))
        )
        times["full"].append(ms)
        times["full_cpu"].append(cpu)
        ms, cpu, incremental = _time(
            lambda: verify_chain(db.engine, since=latest_checkpoint(directory, KEY))
        )
        times["inc"].append(ms)
        times["inc_cpu"].append(cpu)
    assert full is not None and incremental is not None and full.ok and incremental.ok
    assert full.head_hash == incremental.head_hash and full.count == incremental.count == n
    db.dispose()
    return {
        "events": n,
        "full_ms": _stats(times["full"]),
        "full_cpu_ms": _stats(times["full_cpu"]),
        "incremental_ms": _stats(times["inc"]),
        "incremental_cpu_ms": _stats(times["inc_cpu"]),
        "full_read": full.records_read,
        "incremental_read": incremental.records_read,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,50000,200000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="audit-check-") as tmp:
        results = [measure(n, args.rounds, Path(tmp)) for n in sizes]
    print(
        json.dumps(
            {
                "sizes": results,
                "rounds": args.rounds,
                "timestamp": format_timestamp(datetime.now(UTC)),
                "load_before": [round(x, 2) for x in load_before],
                "load_after": [round(x, 2) for x in os.getloadavg()],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
