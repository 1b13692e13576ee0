"""The gateway benchmarks run and report sane fields (no timing is asserted)."""

from __future__ import annotations

import pytest

from overread.service.bench import benchmark_ingest, benchmark_latency

from .conftest import needs_dcmtk

pytestmark = [pytest.mark.service, needs_dcmtk]


def test_ingest_benchmark_reports_both_receivers() -> None:
    result = benchmark_ingest(files=3, size=128, repeats=1)
    assert result["files"] == 3
    for name in ("storescp", "overread_fsync"):
        assert result[name]["mb_s"] > 0 and result[name]["files_s"] > 0
    assert result["ratio"] > 0


@pytest.mark.slow
def test_latency_benchmark_times_studies_end_to_end() -> None:
    pytest.importorskip("overread.service.outputs")
    result = benchmark_latency(studies=2, size=256, warmup=0)
    assert result["studies"] == 2
    assert 0 < result["p50_s"] <= result["p95_s"] <= result["max_s"]
