"""The benchmarks run at tiny sizes and report their documented fields (no timing is asserted)."""

from __future__ import annotations

import json
import math
import shutil
import socket
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from overread.bench import benchmark_ingest, benchmark_latency

needs_dcmtk = pytest.mark.skipif(
    shutil.which("storescu") is None, reason="DCMTK (storescu/storescp) not installed"
)

RunCli = Callable[..., tuple[int, str, str]]


def _rabbitmq_up() -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", 5672)) == 0


@pytest.mark.service
@needs_dcmtk
def test_ingest_benchmark_reports_both_receivers() -> None:
    result = benchmark_ingest(files=3, size=128, repeats=1)
    assert result["files"] == 3
    for name in ("storescp", "overread_fsync"):
        assert result[name]["mb_s"] > 0 and result[name]["files_s"] > 0
    assert result["ratio"] > 0


@pytest.mark.slow
@pytest.mark.service
@needs_dcmtk
def test_latency_benchmark_times_studies_end_to_end() -> None:
    pytest.importorskip("overread.service.outputs")
    result = benchmark_latency(studies=2, size=256, warmup=0)
    assert result["studies"] == 2
    assert 0 < result["p50_s"] <= result["p95_s"] <= result["max_s"]


@pytest.mark.slow
@pytest.mark.service
@needs_dcmtk
def test_bench_gateway_cli_keeps_its_json_keys(run_cli: RunCli) -> None:
    pytest.importorskip("overread.service.outputs")
    status, out, _ = run_cli(
        "bench", "gateway", "--files", "2", "--size", "128", "--studies", "1", "--json"
    )
    assert status == 0
    result = json.loads(out)
    ingest, latency = result["ingest"], result["latency"]
    assert (ingest["files"], ingest["associations"]) == (2, 1)
    for name in ("storescp", "overread_fsync"):
        assert ingest[name]["mb_s"] > 0 and ingest[name]["files_s"] > 0
    assert ingest["ratio"] == pytest.approx(
        ingest["overread_fsync"]["mb_s"] / ingest["storescp"]["mb_s"]
    )
    assert latency["studies"] == 1
    assert latency["mb_per_image"] == pytest.approx(2048 * 2048 * 2 / 1e6)
    assert 0 < latency["p50_s"] <= latency["p95_s"] <= latency["max_s"]


@pytest.mark.service
@needs_dcmtk
def test_bench_ingest_cli_compares_one_and_several_associations(run_cli: RunCli) -> None:
    status, out, _ = run_cli(
        "bench", "ingest", "--files", "3", "--size", "128", "--associations", "2",
        "--repeats", "1", "--json",
    )  # fmt: skip
    assert status == 0
    result = json.loads(out)
    assert [c["associations"] for c in result["cases"]] == [1, 2]
    # As many receiving processes as `serve` runs by default (one).
    assert [c["receivers"] for c in result["cases"]] == [1, 1]
    for case in result["cases"]:
        assert case["runs"] == 1
        for name in ("storescp", "overread_fsync"):
            assert case[name]["mb_s"] > 0 and case[name]["instances_s"] > 0
            # 3 files of 128 x 128 x 2 bytes (plus header) per run
            assert case[name]["mb_s"] / case[name]["instances_s"] == pytest.approx(
                result["mb_per_file"]
            )
        assert case["ratio"] == pytest.approx(
            case["overread_fsync"]["mb_s"] / case["storescp"]["mb_s"]
        )
        # The receiving process's CPU per MB received (one receiving process here).
        assert case["overread_cpu_ms_per_mb"] > 0
    assert result["ratio_1"] == result["cases"][0]["ratio"]
    assert result["machine"]["cores"] >= 1
    # Each ingest step timed alone, and the receivers' wall time per instance.
    assert set(result["costs_ms"]) == {
        "parse", "sha256", "write", "fsync_file", "fsync_dir", "database"
    }  # fmt: skip
    assert all(v >= 0 for v in result["costs_ms"].values())
    assert set(result["wall_ms_per_instance"]) == {"1", "2"}


def test_bench_stats_cli_times_bootstrap_and_delong(run_cli: RunCli) -> None:
    status, out, _ = run_cli(
        "bench", "stats", "--sizes", "2000,1000", "--resamples", "20", "--json"
    )
    assert status == 0
    result = json.loads(out)
    assert [row["n"] for row in result["sizes"]] == [1000, 2000]
    for row in result["sizes"]:
        assert row["patients"] == row["n"] // 2
        assert row["bootstrap_s"] > 0 and row["delong_ci_s"] > 0
        assert row["bootstrap_resamples"] == 20
        assert 0.5 < row["auc"] < 1.0  # the scores are informative by construction
        assert row["bootstrap_ci_width"] > 0


def test_bench_cli_refuses_bad_lists(run_cli: RunCli) -> None:
    status, _, err = run_cli("bench", "stats", "--sizes", "10k")
    assert status == 2 and "--sizes" in err
    status, _, err = run_cli("bench", "e2e", "--rates", "0", "--json")
    assert status == 2 and "--rates" in err
    status, _, err = run_cli("bench", "e2e", "--latency-workers", "0", "--json")
    assert status == 2 and "--latency-workers" in err
    status, _, err = run_cli("bench", "e2e", "--celery-worker-processes", "1,0", "--json")
    assert status == 2 and "--celery-worker-processes" in err
    status, _, err = run_cli("bench", "e2e", "--celery-worker-processes", "nan", "--json")
    assert status == 2 and "--celery-worker-processes" in err and "Traceback" not in err


@pytest.mark.slow
@pytest.mark.service
@needs_dcmtk
def test_bench_e2e_cli_reports_latency_stages_and_ratios(run_cli: RunCli) -> None:
    pytest.importorskip("overread.service.outputs")
    status, out, _ = run_cli(
        "bench", "e2e", "--studies", "2", "--rates", "4", "--workers", "1",
        "--sizes", "256", "--stable-wait", "0.5", "--stable-studies", "1",
        "--ingest-files", "2", "--max-seconds", "240", "--json",
    )  # fmt: skip
    assert status == 0
    result = json.loads(out)
    for key in ("p50_s", "p95_s", "stable_wait_s", "overhead_fraction", "ingest_ratio_vs_dcmtk"):
        assert isinstance(result[key], float) and math.isfinite(result[key]), key
    assert 0 < result["p50_s"] <= result["p95_s"]
    # From the last image received: shorter than from the storescu start.
    assert 0 < result["p95_after_receive_s"] < result["p95_s"]
    # The stable-age run waited at least the configured time, and the timed runs did not.
    assert result["stable_wait_s"] >= 0.5
    assert result["latency"][0]["stages"]["mean_s"]["assembly_wait"] < 0.5
    assert 0 < result["overhead_fraction"] < 1
    assert result["ingest_ratio_vs_dcmtk"] > 0
    latency = result["latency"][0]
    assert latency["completed"] == latency["sent"] == 2 and latency["failed"] == 0
    assert latency["workers"] == 1  # one study at a time unless --latency-workers says more
    stages = latency["stages"]
    assert stages["studies"] == 2
    assert sum(stages["mean_s"].values()) == pytest.approx(stages["mean_total_s"], rel=0.05)
    assert all(v >= 0 for v in stages["mean_s"].values())
    assert stages["mean_s"]["model_forward"] > 0
    # Each slowest study with its stages, slowest first, adding up to its total.
    slowest = stages["slowest"]
    assert len(slowest) == 2
    assert slowest[0]["total_s"] >= slowest[1]["total_s"] > 0
    for row in slowest:
        parts = sum(row[f"{name}_s"] for name in stages["mean_s"])
        assert parts == pytest.approx(row["total_s"], rel=0.05)
        assert row["image_mb"] > 0 and row["storescu_s"] > 0
    # Garbage-collector pauses during the timed run, per generation.
    for summary in latency["gc_pauses"].values():
        assert summary["count"] >= 1 and 0 <= summary["max_s"] <= summary["total_s"]
    [saturation] = result["saturation"]
    assert saturation["workers"] == 1 and saturation["completed"] == 2
    assert saturation["studies_per_s"] > 0


@pytest.mark.slow
@pytest.mark.service
@needs_dcmtk
def test_bench_e2e_on_celery_and_postgresql(run_cli: RunCli) -> None:
    pytest.importorskip("overread.service.outputs")
    pytest.importorskip("celery")
    pytest.importorskip("psycopg")
    if not _rabbitmq_up():
        pytest.skip("RabbitMQ on 127.0.0.1:5672 is not reachable")
    if shutil.which("overread", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("the overread command is not installed beside this Python")
    status, out, _ = run_cli(
        "bench", "e2e", "--backend", "celery", "--studies", "2", "--rates", "4",
        "--workers", "1", "--sizes", "256", "--stable-studies", "0",
        "--ingest-files", "2", "--max-seconds", "240", "--celery-worker-processes", "1,2",
        "--json",
    )  # fmt: skip
    assert status == 0
    result = json.loads(out)
    assert result["latency"][0]["backend"] == "celery"
    assert result["latency"][0]["completed"] == 2
    assert result["saturation"][0]["completed"] == 2
    assert 0 < result["p50_s"] <= result["p95_s"]
    # One and then two worker processes, the same studies, and the ratio of their rates.
    scaling = result["celery_scaling"]
    assert [row["worker_processes"] for row in scaling["runs"]] == [1, 2]
    assert all(row["completed"] == row["studies"] == 2 for row in scaling["runs"])
    one, two = (row["studies_per_s"] for row in scaling["runs"])
    assert one > 0 and two > 0
    assert scaling["runs"][0]["ratio_to_first"] == 1.0
    assert result["celery_scaling_ratio"] == scaling["ratio"] == pytest.approx(two / one)
    assert result["options"]["celery_worker_processes"] == [1, 2]


def test_bench_e2e_tables_show_the_celery_scaling() -> None:
    from overread.cli.bench import _e2e_tables, _markdown

    def run(processes: int, rate: float) -> dict[str, object]:
        return {
            "worker_processes": processes, "studies": 30, "completed": 30,
            "studies_per_s": rate, "ratio_to_first": rate / 1.5, "p50_s": 1.0, "p95_s": 2.0,
        }  # fmt: skip

    result: dict[str, object] = {
        "latency": [], "saturation": [], "skipped": [], "image_mb": [2.0],
        "p50_s": 0.5, "p95_s": 1.0, "overhead_fraction": 0.9, "ingest_ratio_vs_dcmtk": 1.2,
        "celery_scaling": {"studies": 30, "runs": [run(1, 1.5), run(2, 2.7)], "ratio": 1.8},
        "celery_scaling_ratio": 1.8,
    }  # fmt: skip
    text = "\n".join(_markdown(t) for t in _e2e_tables(result))
    assert "Celery worker processes at saturation" in text
    assert "| 1 | 30/30 | 1.50 | 1.00x | 1000 | 2000 |" in text
    assert "| 2 | 30/30 | 2.70 | 1.80x | 1000 | 2000 |" in text
    assert "celery_scaling_ratio" in text and "1.80" in text


def test_bench_trust_cli_times_both_pipelines_with_and_without(run_cli: RunCli) -> None:
    status, out, err = run_cli("bench", "trust", "--images", "2", "--rounds", "1", "--json")
    assert status == 0, err
    result = json.loads(out)
    assert result["images"] == 2 and result["model"].startswith("cxr-default")
    for name in ("pipeline", "batched"):
        row = result[name]
        assert row["cpu_ms_per_image_with_trust"] > 0 and row["median_ms_without_trust"] > 0


def test_bench_tta_cli_times_each_view_count_against_none(run_cli: RunCli) -> None:
    status, out, err = run_cli(
        "bench", "tta", "--studies", "2", "--rounds", "1", "--size", "96", "--views", "3", "--json"
    )
    assert status == 0, err
    result = json.loads(out)
    rows = {row["views"]: row for row in result["settings"]}
    assert set(rows) == {1, 3}
    assert rows[1]["ratio_to_single"] == 1.0 and rows[1]["mean_spread"] is None
    assert rows[3]["cpu_ms_per_study"] > 0 and rows[3]["mean_spread"] > 0
    status, _, err = run_cli("bench", "tta", "--views", "0")
    assert status == 2 and err.startswith("error:")


@pytest.mark.slow
@pytest.mark.service
@needs_dcmtk
def test_bench_soak_cli_counts_every_study_and_samples_over_time(
    run_cli: RunCli, tmp_path: Path
) -> None:
    pytest.importorskip("overread.service.outputs")
    plot = tmp_path / "soak.png"
    status, out, _ = run_cli(
        "bench", "soak", "--rate", "4", "--duration", "2", "--size", "128", "--chunk", "4",
        "--sample", "0.5", "--settle", "120", "--plot", str(plot), "--json",
    )  # fmt: skip
    assert status == 0
    result = json.loads(out)
    assert result["sent"] == result["acknowledged"] == result["reported"] == 8
    assert (result["lost"], result["duplicated"]) == (0, 0)
    assert [c["studies"] for c in result["chunks"]] == ["1-4", "5-8"]
    assert all(c["reported"] == 4 and c["p50_s"] <= c["p95_s"] for c in result["chunks"])
    samples = result["samples"]
    assert len(samples) >= 3 and samples[-1]["reported"] == 8
    assert samples[-1]["jobs_pending"] == 0
    assert all(s["rss_mb"] > 0 and s["open_files"] > 0 for s in samples)
    assert 0 < result["p50_s"] <= result["p95_s"] <= result["max_s"]
    assert plot.is_file() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_soak_refuses_a_bad_rate(run_cli: RunCli) -> None:
    status, _, err = run_cli("bench", "soak", "--rate", "0", "--json")
    assert status != 0
    assert "error:" in err and "Traceback" not in err
