"""Benchmarks of the whole product: end to end, ingest, the gateway pair, and the statistics.

Each benchmark measures and returns a plain dictionary (the ``--json`` output of
``overread bench ...``); none asserts a speed. They use real peers on loopback
(DCMTK ``storescu``/``storescp``, PostgreSQL and RabbitMQ on localhost for the
Celery backend) and bound their own running time.
"""

from __future__ import annotations

from overread.bench.e2e import E2EOptions, benchmark_e2e
from overread.bench.gateway import benchmark_ingest, benchmark_latency
from overread.bench.ingest import benchmark_ingest_side_by_side
from overread.bench.machine import append_to_docs, machine_info
from overread.bench.stats import benchmark_stats

__all__ = [
    "E2EOptions",
    "append_to_docs",
    "benchmark_e2e",
    "benchmark_ingest",
    "benchmark_ingest_side_by_side",
    "benchmark_latency",
    "benchmark_stats",
    "machine_info",
]
