"""``overread bench``: benchmarks (``overread.bench`` measures, this module shows)."""

from __future__ import annotations

import contextlib
import json
import math
import shlex
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from overread.cli.app import app
from overread.errors import ConfigError

if TYPE_CHECKING:
    from rich.progress import TaskID
    from rich.table import Table

# rich (and every benchmark) is imported when a command runs, not at CLI start.

bench_app = typer.Typer(
    help="Benchmarks (measured, never asserted in tests).", no_args_is_help=True
)
app.add_typer(bench_app, name="bench")


def _fmt(value: object, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@bench_app.command("inference")
def bench_inference(
    model: str | None = typer.Option(None, "--model", "-m", help="Alias, name@version or path."),
    repeats: int = typer.Option(50, "--repeats", min=5, help="Timed batch-1 calls per runtime."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op threads (default 2)."),
    quantisation: bool = typer.Option(
        False, "--quantisation", help="Also time INT8 variants (format, granularity, BN folding)."
    ),
    densenet121: bool = typer.Option(
        False,
        "--densenet121",
        help="Also time a DenseNet-121 under every runtime (a few minutes on 2 cores).",
    ),
    device: str = typer.Option(
        "cpu",
        "--device",
        help="Also time GPU runtimes: auto (where present), cuda or cuda:N (refused without one).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
) -> None:
    """Torch eager vs ONNX Runtime FP32 vs INT8 (and OpenVINO if installed), side by side."""
    from rich.console import Console
    from rich.table import Table

    from overread.bench.machine import cpu_flags_line
    from overread.config import load_settings
    from overread.inference.bench import benchmark_inference
    from overread.models.registry import Registry

    settings = load_settings()
    package = Registry.from_settings(settings).load(model or settings.default_model)
    result = benchmark_inference(
        package,
        repeats=repeats,
        threads=threads,
        quantisation=quantisation,
        densenet121=densenet121,
        device=device,
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console = Console()
    info = result["model"]
    machine = result["machine"]
    title = (
        f"{info['name']} {info['version']} ({info['architecture']}, {info['input']}"
        f"{', UNTRAINED' if not info['trained'] else ''}) on {machine['cpu']}, "
        f"{machine['cores']} cores, {result['threads']} threads, "
        f"load average {machine['load_average_1min']}; {cpu_flags_line(machine)}"
    )
    table = Table(title=title)
    for column in (
        "runtime",
        "batch 1 p50 ms",
        "batch 1 p95 ms",
        "batch 1 min ms",
        "batch 8 images/s",
    ):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for row in result["runtimes"]:
        table.add_row(
            row["runtime"],
            _fmt(row["batch1_p50_ms"]),
            _fmt(row["batch1_p95_ms"]),
            _fmt(row["batch1_min_ms"]),
            _fmt(row["batch8_images_per_s"], 1),
        )
    console.print(table)
    pre = result["preprocessing"]
    summary = Table(show_header=False, title="summary")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    summary.add_row("INT8 speed-up (FP32 / INT8 batch-1 p50)", _fmt(result["int8_speedup"]) + "x")
    summary.add_row(
        "INT8 speed-up (FP32 / INT8 batch-1 min)", _fmt(result["int8_speedup_best"]) + "x"
    )
    summary.add_row(
        "INT8 vs FP32 max |probability difference|", _fmt(result["int8_max_prob_diff"], 4)
    )
    for reason in result.get("gpu_skipped") or []:
        summary.add_row("GPU row not timed", reason)
    summary.add_row(
        f"read + preprocess {pre['image']}, 1 core, as served (ms)", _fmt(pre["preprocess_ms"], 1)
    )
    summary.add_row(
        "the same in the full-resolution order (ms)", _fmt(pre["full_resolution_ms"], 1)
    )
    summary.add_row(
        "reduced read speed-up (same run)", _fmt(pre["speedup_vs_full_resolution"]) + "x"
    )
    summary.add_row(
        "reduced vs full-resolution max |input difference|",
        f"{pre['max_input_diff_vs_full_resolution']:.1e}",
    )
    summary.add_row("  of which full-resolution read (ms)", _fmt(pre["read_ms"], 1))
    summary.add_row("  of which full-resolution chain (ms)", _fmt(pre["chain_ms"], 1))
    summary.add_row(
        f"whole pipeline per image, {pre['pipeline_precision']} (ms)", _fmt(pre["pipeline_ms"], 1)
    )
    summary.add_row("whole pipeline with CAM heatmaps (ms)", _fmt(pre["pipeline_explain_ms"], 1))
    auc = result["phantom_auc"]
    if auc.get("available"):
        summary.add_row("phantom AUC fp32 / int8", f"{auc['fp32_auc']:.4f} / {auc['int8_auc']:.4f}")
        summary.add_row("INT8 AUC loss", _fmt(auc["int8_auc_loss"], 4))
    else:
        summary.add_row("phantom AUC fp32 / int8", f"n/a ({auc['reason']})")
    console.print(summary)
    dense = result.get("densenet121")
    if dense:
        network = Table(
            title=f"{dense['architecture']}, {dense['input']}, batch 1, {dense['threads']} threads"
        )
        for column in ("runtime", "p50 ms", "p95 ms", "min ms", "vs torch eager", "max |dp|"):
            network.add_column(column, justify="left" if column == "runtime" else "right")
        for row in dense["runtimes"]:
            network.add_row(
                row["runtime"],
                _fmt(row["batch1_p50_ms"], 1),
                _fmt(row["batch1_p95_ms"], 1),
                _fmt(row["batch1_min_ms"], 1),
                _fmt(row["speedup_vs_torch_eager"]) + "x",
                _fmt(row["max_prob_diff_vs_torch_eager"], 4),
            )
        console.print(network)
    if result["quantisation_study"]:
        study = Table(title="INT8 variants, timed in alternation (batch 1)")
        for column in ("variant", "p50 ms", "min ms", "speed-up vs fp32 (p50)", "max |dp| vs fp32"):
            study.add_column(column, justify="left" if column == "variant" else "right")
        for row in result["quantisation_study"]:
            study.add_row(
                row["variant"],
                _fmt(row["batch1_p50_ms"]),
                _fmt(row["batch1_min_ms"]),
                _fmt(row["speedup_vs_fp32"]) + "x",
                _fmt(row["max_prob_diff_vs_fp32"], 4),
            )
        console.print(study)


@bench_app.command("int8")
def bench_int8(
    models: list[str] = typer.Option(
        ...,
        "--model",
        "-m",
        help="Alias, name@version or path (repeat; the first is the reference).",
    ),
    repeats: int = typer.Option(300, "--repeats", min=20, help="Timed calls per package."),
    threads: int | None = typer.Option(
        None, "--threads", min=1, max=256, help="Intra-op threads (default 2)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
) -> None:
    """INT8 batch-1 latency of several packages, alternated in one process, as ratios."""
    from rich.console import Console
    from rich.table import Table

    from overread.config import load_settings
    from overread.inference.bench import int8_side_by_side
    from overread.models.registry import Registry

    settings = load_settings()
    registry = Registry.from_settings(settings)
    packages = [registry.load(name) for name in models]
    result = int8_side_by_side(packages, repeats=repeats, threads=threads)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    machine = result["machine"]
    table = Table(
        title=f"batch 1, {result['threads']} threads, {result['repeats']} alternated calls, "
        f"{machine['cpu']}, load average {machine['load_average_1min']}"
    )
    for column in ("package", "min ms", "p10 ms", "p50 ms", "ratio (min)", "ratio (p50)"):
        table.add_column(column, justify="left" if column == "package" else "right")
    for row in result["packages"]:
        table.add_row(
            row["package"],
            _fmt(row["min_ms"]),
            _fmt(row["p10_ms"]),
            _fmt(row["p50_ms"]),
            _fmt(row["ratio_min"]) + "x",
            _fmt(row["ratio_p50"]) + "x",
        )
    Console().print(table)


@bench_app.command("gpu")
def bench_gpu(
    model: str | None = typer.Option(None, "--model", "-m", help="Alias, name@version or path."),
    device: str = typer.Option(
        "cuda", "--device", help="cuda or cuda:N (auto: a GPU where present; cpu: for comparison)."
    ),
    repeats: int = typer.Option(50, "--repeats", min=5, help="Timed batch-1 calls per row."),
    batch: int = typer.Option(32, "--batch", min=2, max=512, help="Batch size for throughput."),
    densenet121: bool = typer.Option(
        True, "--densenet121/--no-densenet121", help="Also time a DenseNet-121 at 320 px."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
) -> None:
    """Batch-1 latency and batch-32 throughput on a GPU: torch FP32, bf16, ONNX Runtime CUDA."""
    from rich.console import Console
    from rich.table import Table

    from overread.config import load_settings
    from overread.inference.bench import gpu_benchmark
    from overread.models.registry import Registry

    settings = load_settings()
    package = Registry.from_settings(settings).load(model or settings.default_model)
    result = gpu_benchmark(
        package, device=device, repeats=repeats, batch=batch, densenet121=densenet121
    )
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    console = Console()
    gpu = result["gpu"]
    where = gpu.get("name") or result["machine"]["cpu"]
    for network in result["networks"]:
        table = Table(title=f"{network['network']}, {network['input']}, on {where}")
        columns = (
            "runtime",
            "batch 1 p50 ms",
            "batch 1 min ms",
            f"batch {batch} p50 ms",
            f"batch {batch} images/s",
            "max |dp| vs fp32",
        )
        for column in columns:
            table.add_column(column, justify="left" if column == "runtime" else "right")
        for row in network["rows"]:
            table.add_row(
                row["runtime"],
                _fmt(row["batch1_p50_ms"]),
                _fmt(row["batch1_min_ms"]),
                _fmt(row[f"batch{batch}_p50_ms"]),
                _fmt(row[f"batch{batch}_images_per_s"], 0),
                _fmt(row["max_prob_diff_vs_fp32"], 4),
            )
        console.print(table)
        train = network["training"]
        console.print(
            f"training (forward, backward, AdamW; {train['precision']}, batch {train['batch']}): "
            f"{train['images_per_s']:.0f} images/s"
        )
    for reason in result["skipped"]:
        console.print(f"not timed: {reason}")


# -- gateway benchmarks: e2e, ingest, stats -------------------------------------------------
DOCS_PATH = Path("docs/benchmarks.md")


def _check_docs(append: bool) -> None:
    """Refuse ``--append-docs`` before a long run when the docs file is not where it goes."""
    if append and not DOCS_PATH.is_file():
        raise ConfigError(f"--append-docs: {DOCS_PATH} not found; run from the repository root")


def _floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"{option} {text!r}: expected comma-separated numbers") from None
    if not values:
        raise ConfigError(f"{option} is empty")
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{option} {text!r}: expected finite numbers")
    return values


def _ints(text: str, option: str) -> tuple[int, ...]:
    values = _floats(text, option)
    if any(v != int(v) for v in values):
        raise ConfigError(f"{option} {text!r}: expected whole numbers")
    return tuple(int(v) for v in values)


def _command_line() -> str:
    return "overread " + " ".join(shlex.quote(a) for a in sys.argv[1:])


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Callable[[str, int, int], None]]:
    """A rich progress display with one bar per task name (nothing when disabled)."""
    if not enabled:
        yield lambda _task, _done, _total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bars: dict[str, TaskID] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as progress:

        def update(task: str, done: int, total: int) -> None:
            if task not in bars:
                bars[task] = progress.add_task(task, total=total)
            progress.update(bars[task], completed=done, total=total)

        yield update


def _ms(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value * 1000:.0f}"


def _e2e_tables(result: dict[str, Any]) -> list[Table]:
    from rich.table import Table

    from overread.bench.e2e import STAGES

    latency = Table(title="C-STORE start -> SR complete at the PACS (stable wait excluded)")
    columns = ("backend", "rate /s", "workers", "done", "p50 ms", "p95 ms", "p99 ms", "max ms")
    for column in (*columns, "p95 ms from last image"):
        latency.add_column(column, justify="left" if column == "backend" else "right")
    for row in result["latency"]:
        latency.add_row(
            row["backend"],
            f"{row['rate_per_s']:g}",
            str(row["workers"]),
            f"{row['completed']}/{row['sent']}",
            _ms(row["p50_s"]),
            _ms(row["p95_s"]),
            _ms(row["p99_s"]),
            _ms(row["max_s"]),
            _ms(row.get("stages", {}).get("after_receive_p95_s")),
        )
    saturation = Table(title="Throughput at saturation (all studies sent at once)")
    for column in ("backend", "workers", "done", "studies/s", "studies/day", "p50 ms", "p95 ms"):
        saturation.add_column(column, justify="left" if column == "backend" else "right")
    for row in result["saturation"]:
        saturation.add_row(
            row["backend"],
            str(row["workers"]),
            f"{row['completed']}/{row['studies']}",
            _fmt(row["studies_per_s"]),
            f"{row['studies_per_day']:,.0f}" if math.isfinite(row["studies_per_day"]) else "n/a",
            _ms(row.get("p50_s")),
            _ms(row.get("p95_s")),
        )
    tables = [latency, saturation]
    if "celery_scaling" in result:
        scaling = Table(title="Celery worker processes at saturation (the same studies each time)")
        for column in ("worker processes", "done", "studies/s", "vs first", "p50 ms", "p95 ms"):
            scaling.add_column(column, justify="right")
        for row in result["celery_scaling"]["runs"]:
            scaling.add_row(
                str(row["worker_processes"]),
                f"{row['completed']}/{row['studies']}",
                _fmt(row["studies_per_s"]),
                f"{row['ratio_to_first']:.2f}x" if math.isfinite(row["ratio_to_first"]) else "n/a",
                _ms(row.get("p50_s")),
                _ms(row.get("p95_s")),
            )
        tables.append(scaling)
    stages = Table(title="Mean time per stage, ms (share of end to end)")
    stages.add_column("stage")
    runs = [(f"{r['backend']} {r['rate_per_s']:g}/s", r["stages"]) for r in result["latency"]] + [
        (f"{r['backend']} sat x{r['workers']}", r["stages"]) for r in result["saturation"]
    ]
    if "stable" in result:
        runs.append(("stable wait", result["stable"]["stages"]))
    for name, _ in runs:
        stages.add_column(name, justify="right")
    for stage in (*STAGES, "total"):
        cells = []
        for _, data in runs:
            if stage == "total":
                cells.append(_ms(data.get("mean_total_s")))
            elif stage in data.get("mean_s", {}):
                cells.append(f"{_ms(data['mean_s'][stage])} ({data['share'][stage] * 100:.0f}%)")
            else:
                cells.append("n/a")
        stages.add_row(stage, *cells)
    summary = Table(show_header=False, title="summary")
    summary.add_column("measure")
    summary.add_column("value", justify="right")
    summary.add_row(
        "p50 / p95 at the lowest rate (s)",
        f"{_fmt(result['p50_s'], 3)} / {_fmt(result['p95_s'], 3)}",
    )
    summary.add_row(
        "p95 from the last image received at the gateway (s)",
        _fmt(result.get("p95_after_receive_s"), 3),
    )
    summary.add_row("stable_wait_s (measured)", _fmt(result.get("stable_wait_s"), 3))
    summary.add_row(
        "overhead_fraction (not the forward pass)", _fmt(result["overhead_fraction"], 3)
    )
    summary.add_row("ingest_ratio_vs_dcmtk (1 association)", _fmt(result["ingest_ratio_vs_dcmtk"]))
    summary.add_row(
        "phantom image sizes (MB of pixels)", ", ".join(f"{x:g}" for x in result["image_mb"])
    )
    if "celery_scaling_ratio" in result:
        summary.add_row(
            "celery_scaling_ratio (last process count's studies/s over the first's)",
            _fmt(result["celery_scaling_ratio"]),
        )
    if result["skipped"]:
        summary.add_row("skipped", "; ".join(result["skipped"]))
    return [*tables, stages, summary]


def _markdown(table: Table) -> str:
    """A rich table as a Markdown table (for --append-docs)."""
    headers = [str(c.header) for c in table.columns]
    cells = [list(c.cells) for c in table.columns]
    lines = []
    if table.title:
        lines.append(f"{table.title}:\n")
    if table.show_header:
        lines.append("| " + " | ".join(headers) + " |")
    else:
        lines.append("| " + " | ".join(" " for _ in headers) + " |")
    lines.append("| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |")
    for row in zip(*cells, strict=True):
        lines.append("| " + " | ".join(str(x) for x in row) + " |")
    return "\n".join(lines) + "\n"


def _emit(
    tables: list[Table],
    result: dict[str, Any],
    *,
    as_json: bool,
    append: bool,
    title: str,
    width: int | None = None,
) -> None:
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        from rich.console import Console

        console = Console(width=width)
        for table in tables:
            console.print(table)
    if append:
        from overread.bench.machine import append_to_docs

        append_to_docs(DOCS_PATH, title, _command_line(), "\n".join(_markdown(t) for t in tables))
        if not as_json:
            typer.echo(f"appended to {DOCS_PATH}")


@bench_app.command("e2e")
def bench_e2e(
    studies: int = typer.Option(30, "--studies", min=1, help="Timed studies per rate and per run."),
    rates: str = typer.Option("0.5,1,2", "--rates", help="Arrival rates, studies/s (comma list)."),
    workers: str = typer.Option("1,2,4", "--workers", help="Worker counts at saturation."),
    latency_workers: int = typer.Option(
        1,
        "--latency-workers",
        min=1,
        max=16,
        help="Workers in the latency runs (1: one study at a time; the service's default is 2).",
    ),
    backend: str = typer.Option(
        "embedded", "--backend", help="embedded (SQLite), celery (PostgreSQL+RabbitMQ), or both."
    ),
    arrival: str = typer.Option("poisson", "--arrival", help="poisson or fixed intervals."),
    sizes: str = typer.Option("2000,2500,3000", "--sizes", help="Phantom detector sizes, px."),
    stable_wait: float = typer.Option(2.0, "--stable-wait", min=0.1, help="Stable-age wait, s."),
    stable_studies: int = typer.Option(5, "--stable-studies", min=0, help="Studies in that run."),
    ingest_files: int = typer.Option(12, "--ingest-files", min=1, help="Files in the ingest run."),
    max_seconds: float = typer.Option(1200.0, "--max-seconds", min=10, help="Bound on the run."),
    model: str | None = typer.Option(None, "--model", "-m", help="Model alias (default route's)."),
    celery_worker_processes: str | None = typer.Option(
        None,
        "--celery-worker-processes",
        help="Also saturate the celery backend with each count of worker processes "
        "(e.g. 1,2), the same studies each time, and report the scaling.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    append_docs: bool = typer.Option(False, "--append-docs", help="Append to docs/benchmarks.md."),
) -> None:
    """Phantom CXR by storescu -> in-process gateway -> SR at a storescp PACS: latency, throughput, stages."""
    _check_docs(append_docs)
    from overread.bench.e2e import E2EOptions, benchmark_e2e

    backends = tuple(b.strip() for b in backend.split(",") if b.strip())
    options = E2EOptions(
        studies=studies,
        rates=_floats(rates, "--rates"),
        workers=_ints(workers, "--workers"),
        latency_workers=latency_workers,
        backends=backends,
        arrival=arrival,
        sizes=_ints(sizes, "--sizes"),
        stable_wait_s=stable_wait,
        stable_studies=stable_studies,
        ingest_files=ingest_files,
        max_seconds=max_seconds,
        model=model,
        celery_worker_processes=(
            _ints(celery_worker_processes, "--celery-worker-processes")
            if celery_worker_processes is not None
            else ()
        ),
    )
    options.validate()
    with _progress(not as_json) as update:
        result = benchmark_e2e(options, progress=update)
    _emit(
        _e2e_tables(result), result, as_json=as_json, append=append_docs, title="Gateway end to end"
    )


def _soak_tables(result: dict[str, Any], plot: Path | None) -> list[Table]:
    from rich.table import Table

    summary = Table(
        title=f"Soak: {result['options']['rate']:g} studies/s offered for "
        f"{result['sending_s']:.0f} s, {result['image_mb']:g} MB images, "
        f"{result['options']['workers']} worker(s)"
    )
    summary.add_column("")
    summary.add_column("", justify="right")
    rows = [
        (
            "sent / acknowledged / reported",
            f"{result['sent']} / {result['acknowledged']} / {result['reported']}",
        ),
        ("lost / duplicated", f"{result['lost']} / {result['duplicated']}"),
        ("offered studies/s", _fmt(result["offered_per_s"], 2)),
        ("completed studies/s (first send to last report)", _fmt(result["completed_per_s"], 2)),
        ("sustained", "yes" if result["sustained"] else "no"),
        (
            "p50 / p95 / max s",
            f"{_fmt(result['p50_s'], 3)} / {_fmt(result['p95_s'], 3)} / {_fmt(result['max_s'], 3)}",
        ),
        ("RSS growth, last quarter - first (MB)", _fmt(result["rss_growth_mb"], 1)),
        ("open files growth, last quarter - first", _fmt(result["open_files_growth"], 1)),
    ]
    if plot is not None:
        rows.append(("plot", str(plot)))
    for name, value in rows:
        summary.add_row(name, value)
    chunks = Table(title="Latency per chunk of studies, in sending order")
    for column in ("studies", "reported", "p50 s", "p95 s"):
        chunks.add_column(column, justify="left" if column == "studies" else "right")
    for chunk in result["chunks"]:
        chunks.add_row(
            chunk["studies"],
            str(chunk["reported"]),
            _fmt(chunk["p50_s"], 3),
            _fmt(chunk["p95_s"], 3),
        )
    over_time = Table(title="Over time")
    for column in ("t s", "sent", "reported", "jobs pending", "RSS MB", "open files", "threads"):
        over_time.add_column(column, justify="right")
    samples = result["samples"]
    step = max(1, len(samples) // 12)
    for sample in [*samples[:-1:step], samples[-1]]:
        over_time.add_row(
            f"{sample['t_s']:.0f}",
            str(sample["sent"]),
            str(sample["reported"]),
            str(sample["jobs_pending"]),
            f"{sample['rss_mb']:.0f}",
            str(sample["open_files"]),
            str(sample["threads"]),
        )
    return [summary, chunks, over_time]


@bench_app.command("soak")
def bench_soak(
    rate: float = typer.Option(4.0, "--rate", help="Studies per second offered (fixed gaps)."),
    duration: float = typer.Option(120.0, "--duration", min=1, help="Seconds of sending."),
    studies: int = typer.Option(100_000, "--studies", min=1, help="Stop sending after these."),
    size: int = typer.Option(1024, "--size", min=64, max=3000, help="Phantom image side, px."),
    workers: int = typer.Option(2, "--workers", min=1, max=16, help="Gateway worker threads."),
    chunk: int = typer.Option(1000, "--chunk", min=1, help="Studies per latency chunk."),
    sample_seconds: float = typer.Option(5.0, "--sample", min=0.5, help="Seconds between samples."),
    settle: float = typer.Option(120.0, "--settle", min=1, help="Wait for the last reports, s."),
    plot: Path | None = typer.Option(None, "--plot", help="Write the plot (PNG) here."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    append_docs: bool = typer.Option(False, "--append-docs", help="Append to docs/benchmarks.md."),
) -> None:
    """The gateway under a steady rate: throughput, latency, RSS and open files over time."""
    _check_docs(append_docs)
    from overread.bench.soak import SoakOptions, benchmark_soak, plot_soak

    options = SoakOptions(
        rate=rate,
        duration=duration,
        studies=studies,
        size=size,
        workers=workers,
        chunk=chunk,
        sample_seconds=sample_seconds,
        settle=settle,
    )
    options.validate()
    with _progress(not as_json) as update:
        result = benchmark_soak(options, progress=update)
    if plot is not None:
        result["plot"] = str(plot_soak(result, plot))
    points = result.pop("latency_points")
    result["latency_points"] = len(points)
    _emit(
        _soak_tables(result, plot),
        result,
        as_json=as_json,
        append=append_docs,
        title="Gateway soak",
    )


def _ingest_table(result: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(
        title=f"Ingest of {result['files']} x {result['mb_per_file']:.1f} MB, side by side "
        "(best of the alternating runs; median in brackets)"
    )
    for column in ("receiver", "associations", "MB/s", "instances/s", "vs storescp"):
        table.add_column(column, justify="left" if column == "receiver" else "right")
    for case in result["cases"]:
        for name, label in (
            ("storescp", "DCMTK storescp (no fsync)"),
            ("overread_fsync", "overread SCP (fsync + commit)"),
        ):
            row = case[name]
            processes = int(case.get("receivers", 1))
            if name == "overread_fsync" and processes > 1:
                label = f"{label}, {processes} processes"
            table.add_row(
                label,
                str(case["associations"]),
                f"{row['mb_s']:.1f} ({row['mb_s_median']:.1f})",
                f"{row['instances_s']:.1f} ({row['instances_s_median']:.1f})",
                "1.00x"
                if name == "storescp"
                else f"{case['ratio']:.2f}x ({case['ratio_median']:.2f}x)",
            )
    return table


@bench_app.command("ingest")
def bench_ingest(
    files: int = typer.Option(40, "--files", min=1, help="Files sent per run."),
    size: int = typer.Option(1600, "--size", min=64, help="Image side in pixels (1600: 5 MB)."),
    associations: int = typer.Option(4, "--associations", min=1, help="The concurrent case."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Alternating runs per receiver."),
    max_seconds: float = typer.Option(300.0, "--max-seconds", min=1, help="Stop repeating after."),
    receivers: int = typer.Option(
        0,
        "--receivers",
        min=0,
        help="overread's receiving processes in the concurrent case (0: as `serve` runs, one).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    append_docs: bool = typer.Option(False, "--append-docs", help="Append to docs/benchmarks.md."),
) -> None:
    """overread's SCP (fsync'd) vs DCMTK storescp on the same files, 1 and N associations."""
    _check_docs(append_docs)
    from overread.bench.ingest import benchmark_ingest_side_by_side

    with _progress(not as_json) as update:
        result = benchmark_ingest_side_by_side(
            files=files,
            size=size,
            associations=associations,
            repeats=repeats,
            max_seconds=max_seconds,
            receivers=receivers,
            progress=lambda task: update(task, 1, 1),
        )
    _emit(
        [_ingest_table(result), _ingest_costs_table(result)],
        result,
        as_json=as_json,
        append=append_docs,
        title="Gateway ingest",
    )


def _ingest_costs_table(result: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(
        title=f"Where overread's time per {result['mb_per_file']:.1f} MB instance goes "
        "(each step alone, median ms; against the receivers' wall ms per instance)"
    )
    table.add_column("step")
    table.add_column("ms", justify="right")
    costs = result.get("costs_ms", {})
    for name, value in costs.items():
        table.add_row(name.replace("_", " "), _fmt(value, 2))
    table.add_row("sum of the steps", _fmt(sum(costs.values()), 2))
    for count, walls in result.get("wall_ms_per_instance", {}).items():
        for name, value in walls.items():
            table.add_row(f"{name} wall, {count} association(s)", _fmt(value, 2))
    for case in result.get("cases", []):
        if case.get("overread_cpu_ms_per_mb") is not None:
            table.add_row(
                f"overread CPU ms per MB, {case['associations']} association(s)",
                _fmt(case["overread_cpu_ms_per_mb"], 2),
            )
    return table


def _trust_table(result: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(
        title=(
            f"Explanation trust, {result['model']} {result['runtime']}, {result['images']} "
            f"images x {result['rounds']}, {result['acted_on_findings_per_image']} acted-on "
            "findings per image"
        )
    )
    for header in ("path", "ms without", "ms with", "extra ms", "CPU ms without", "CPU ms with"):
        table.add_column(header, justify="left" if header == "path" else "right")
    for name in ("pipeline", "batched"):
        row = result[name]
        table.add_row(
            name,
            _fmt(row["median_ms_without_trust"], 1),
            _fmt(row["median_ms_with_trust"], 1),
            _fmt(row["median_extra_ms"], 1),
            _fmt(row["cpu_ms_per_image_without_trust"], 1),
            _fmt(row["cpu_ms_per_image_with_trust"], 1),
        )
    return table


@bench_app.command("trust")
def bench_trust(
    images: int = typer.Option(16, "--images", min=1, help="Phantom images (256 px)."),
    rounds: int = typer.Option(3, "--rounds", min=1, help="Passes over the images."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    append_docs: bool = typer.Option(False, "--append-docs", help="Append to docs/benchmarks.md."),
) -> None:
    """Extra cost per image of the explanation trust score (plain and batched pipeline)."""
    _check_docs(append_docs)
    from overread.bench.trust import benchmark_trust

    with _progress(not as_json) as update:
        result = benchmark_trust(
            images=images, rounds=rounds, progress=lambda task: update(task, 1, 1)
        )
    _emit([_trust_table(result)], result, as_json=as_json, append=append_docs, title="Trust score")


def _tta_table(result: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(
        title=(
            f"Test-time augmentation, {result['model']} {result['runtime']}, "
            f"{result['studies']} studies ({result['size']} px) x {result['rounds']}, "
            "side by side"
        )
    )
    for header in (
        "views",
        "ms per study",
        "x no TTA",
        "CPU ms per study",
        "CPU x no TTA",
        "spread",
    ):
        table.add_column(header, justify="right")
    for row in result["settings"]:
        table.add_row(
            "1 (no TTA)" if row["views"] == 1 else str(row["views"]),
            _fmt(row["median_ms"], 1),
            _fmt(row["ratio_to_single"], 2),
            _fmt(row["cpu_ms_per_study"], 1),
            _fmt(row["cpu_ratio_to_single"], 2),
            "" if row["mean_spread"] is None else _fmt(row["mean_spread"], 4),
        )
    return table


@bench_app.command("tta")
def bench_tta(
    studies: int = typer.Option(16, "--studies", min=1, help="Phantom studies (one image each)."),
    views: str = typer.Option("4,8", "--views", help="TTA view counts to time against none."),
    rounds: int = typer.Option(2, "--rounds", min=1, help="Passes over the studies."),
    size: int = typer.Option(1024, "--size", min=64, help="Image side in pixels."),
    model: str = typer.Option("cxr-default", "--model", help="Model package."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    append_docs: bool = typer.Option(False, "--append-docs", help="Append to docs/benchmarks.md."),
) -> None:
    """Time per study with and without test-time augmentation, side by side."""
    _check_docs(append_docs)
    from overread.bench.tta import benchmark_tta

    counts = _ints(views, "--views")
    if min(counts) < 1 or max(counts) > 64:
        raise ConfigError(f"--views {views!r}: view counts must lie in 1..64")
    with _progress(not as_json) as update:
        result = benchmark_tta(
            studies=studies,
            views=counts,
            rounds=rounds,
            size=size,
            model=model,
            progress=lambda task: update(task, 1, 1),
        )
    _emit(
        [_tta_table(result)],
        result,
        as_json=as_json,
        append=append_docs,
        title="Test-time augmentation",
    )


@bench_app.command("gateway")
def bench_gateway(
    files: int = typer.Option(40, "--files", min=2, help="Images sent in the ingest test."),
    size: int = typer.Option(1600, "--size", min=64, help="Image side in pixels (1600: 5 MB)."),
    associations: int = typer.Option(1, "--associations", min=1, help="Parallel storescu."),
    studies: int = typer.Option(12, "--studies", min=1, help="Studies timed end to end."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
) -> None:
    """SCP ingest (fsync'd) vs DCMTK storescp, and C-STORE to SR-at-PACS latency."""
    from overread.bench.gateway import benchmark_ingest, benchmark_latency

    ingest = benchmark_ingest(files=files, size=size, associations=associations)
    latency = benchmark_latency(studies=studies)
    if as_json:
        typer.echo(json.dumps({"ingest": ingest, "latency": latency}, indent=2))
        return
    typer.echo(
        f"ingest, {ingest['files']} x {ingest['mb_per_file']:.1f} MB, "
        f"{ingest['associations']} association(s):"
    )
    for name in ("storescp", "overread_fsync"):
        typer.echo(
            f"  {name:15s} {ingest[name]['mb_s']:7.1f} MB/s {ingest[name]['files_s']:6.1f} files/s"
        )
    typer.echo(f"  ratio overread/storescp: {ingest['ratio']:.2f}")
    typer.echo(
        f"C-STORE -> SR at PACS, {latency['studies']} studies of {latency['mb_per_image']:.1f} MB: "
        f"p50 {latency['p50_s']:.3f} s, p95 {latency['p95_s']:.3f} s, max {latency['max_s']:.3f} s"
    )


def _stats_table(result: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(
        title=f"Evaluation statistics (bootstrap: {result['resamples']} patient-level resamples)"
    )
    for column in (
        "predictions",
        "patients",
        "bootstrap s",
        "bootstrap CPU s",
        "ms/resample",
        "DeLong CI s",
        "paired DeLong s",
        "clustered DeLong s",
    ):
        table.add_column(column, justify="right")
    for row in result["sizes"]:
        if "skipped" in row:
            table.add_row(f"{row['n']:,}", row["skipped"], *[""] * 6)
            continue
        table.add_row(
            f"{row['n']:,}",
            f"{row['patients']:,}",
            _fmt(row["bootstrap_s"]),
            _fmt(row["bootstrap_cpu_s"]),
            _fmt(row["bootstrap_ms_per_resample"]),
            _fmt(row["delong_ci_s"], 3),
            _fmt(row["delong_test_s"], 3),
            _fmt(row["clustered_delong_s"], 3),
        )
    return table


@bench_app.command("stats")
def bench_stats(
    sizes: str = typer.Option("10000,100000,1000000", "--sizes", help="Predictions (comma list)."),
    resamples: int = typer.Option(1000, "--resamples", min=10, help="Bootstrap resamples."),
    max_seconds: float = typer.Option(600.0, "--max-seconds", min=1, help="Skip sizes past this."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    append_docs: bool = typer.Option(False, "--append-docs", help="Append to docs/benchmarks.md."),
) -> None:
    """Patient-level bootstrap and DeLong speed at 10k / 100k / 1M predictions."""
    _check_docs(append_docs)
    from overread.bench.stats import benchmark_stats

    with _progress(not as_json) as update:
        result = benchmark_stats(
            sizes=_ints(sizes, "--sizes"),
            resamples=resamples,
            max_seconds=max_seconds,
            progress=lambda task: update(task, 1, 1),
        )
    _emit(
        [_stats_table(result)],
        result,
        as_json=as_json,
        append=append_docs,
        title="Evaluation statistics",
    )


# -- chaos: the real service under faults ---------------------------------------------------
_CHAOS_COLUMNS = (
    ("fault", "fault"),
    ("sent", "sent"),
    ("acked", "acknowledged"),
    ("not acked", "unacknowledged"),
    ("stored", "stored"),
    ("lost", "lost"),
    ("studies delivered", None),
    ("receive audited", "receive_audited"),
    ("reports", "reports_delivered"),
    ("export audited", "export_audited"),
    ("dup SR differing", "conflicting_duplicates"),
    ("5xx", "http_5xx"),
)


def _chaos_tables(result: dict[str, Any]) -> list[Table]:
    from rich.table import Table

    tables = []
    for backend in result["backends"]:
        verdict = "PASSED" if backend["passed"] else "FAILED"
        table = Table(
            title=f"Chaos, {backend['backend']}: acknowledged vs stored vs delivered vs audited "
            f"per fault ({verdict}, {backend['seconds']:g} s, settled in "
            f"{backend['settle_seconds']:g} s)"
        )
        for header, _key in _CHAOS_COLUMNS:
            table.add_column(header, justify="left" if header == "fault" else "right")
        for row in backend["rows"]:
            table.add_row(
                *(
                    f"{row['studies_delivered']}/{row['studies_acknowledged']}"
                    if key is None
                    else str(row[key])
                    for _header, key in _CHAOS_COLUMNS
                )
            )
        tables.append(table)
        checks = Table(title=f"Chaos, {backend['backend']}: probes and oversized bodies")
        checks.add_column("check")
        checks.add_column("result", justify="right")
        for probe in backend["probes"]:
            outcome = "ok" if probe["passed"] else "FAILED"
            checks.add_row(f"{probe['name']}", f"{outcome}: {probe['detail']}")
        answers: dict[str, list[str]] = {}
        for answer in backend["http"]:
            answers.setdefault(answer["request"], []).append(
                "no answer" if answer["status"] is None else str(answer["status"])
            )
        for request, statuses in answers.items():
            checks.add_row(request, ", ".join(sorted(set(statuses))) + f" (x{len(statuses)})")
        checks.add_row(
            "all HTTP answers by status",
            ", ".join(f"{k}: {v}" for k, v in backend["http_answers"].items()) or "none",
        )
        for problem in backend["problems"]:
            checks.add_row("PROBLEM", problem)
        tables.append(checks)
    return tables


@bench_app.command("chaos")
def bench_chaos(
    backend: str = typer.Option(
        "both", "--backend", help="sqlite, postgres (PostgreSQL + Celery workers), or both."
    ),
    duration: float = typer.Option(
        150.0, "--duration", min=30, help="Seconds of faults per backend (then it settles)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds kill moments, victims and send gaps."),
    settle: float = typer.Option(
        240.0, "--settle", min=1, help="Longest wait for every acknowledged study's report, s."
    ),
    pacs_down: float = typer.Option(20.0, "--pacs-down", min=1, help="Seconds the PACS is down."),
    disk_full: float = typer.Option(10.0, "--disk-full", min=1, help="Seconds the disk is full."),
    idle_sockets: int = typer.Option(100, "--idle-sockets", min=1, help="Idle connections."),
    kills: int = typer.Option(3, "--kills", min=0, help="Fewest kill -9 in the kill phase."),
    keep: Path | None = typer.Option(
        None, "--keep", help="Keep the run's files (logs, PACS, database) in this folder."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    append_docs: bool = typer.Option(False, "--append-docs", help="Append to docs/benchmarks.md."),
) -> None:
    """kill -9, PACS down, disk full, idle sockets, oversized bodies against `overread serve`.

    Exits 1 when an acknowledged instance is lost or left without a report, a study
    has two reports of different content, an audit event is missing or an answer is
    a 5xx.
    """
    _check_docs(append_docs)
    import logging

    from overread.bench.chaos import Backend, ChaosOptions, benchmark_chaos

    names = {"both": (Backend.SQLITE, Backend.POSTGRES)}
    try:
        backends = names.get(backend) or (Backend(backend),)
    except ValueError:
        raise ConfigError(f"--backend {backend!r}: expected sqlite, postgres or both") from None
    options = ChaosOptions(
        backends=backends,
        duration_s=duration,
        seed=seed,
        settle_s=settle,
        pacs_down_s=pacs_down,
        disk_full_s=disk_full,
        idle_sockets=idle_sockets,
        kills=kills,
    )
    options.validate()
    # Refused associations are the point of the run: pynetdicom need not log each one.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    with _progress(not as_json) as update:
        result = benchmark_chaos(options, progress=update, keep=keep)
    _emit(
        _chaos_tables(result),
        result,
        as_json=as_json,
        append=append_docs,
        title="Chaos",
        width=max(140, shutil.get_terminal_size().columns),
    )
    if not result["passed"]:
        raise typer.Exit(1)


def _screen_table(result: dict[str, Any]) -> Table:
    from rich.table import Table

    table = Table(
        title=(
            f"Reading screens in Chromium (1600 x 1000), {result['studies']} studies on the "
            f"worklist ({result['rows_shown']} rows a page), {result['repeats']} loads each, "
            f"target ready < {result['target_ms'] / 1000:.0f} s"
        )
    )
    for header in ("page", "time from navigation start", "first load ms", "median ms", "worst ms"):
        table.add_column(
            header, justify="left" if header in ("page", "time from navigation start") else "right"
        )
    for page_name in ("worklist", "study"):
        for name, row in result[page_name].items():
            table.add_row(
                page_name,
                name,
                _fmt(row["first"], 0),
                _fmt(row["median"], 0),
                _fmt(row["worst"], 0),
            )
    return table


@bench_app.command("worklist")
def bench_worklist(
    studies: int = typer.Option(1000, "--studies", min=1, help="Studies on the worklist."),
    repeats: int = typer.Option(10, "--repeats", min=2, help="Loads of each page."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    append_docs: bool = typer.Option(False, "--append-docs", help="Append to docs/benchmarks.md."),
) -> None:
    """Worklist and study page: time until ready in a real Chromium, with N studies."""
    _check_docs(append_docs)
    from overread.bench.screen import benchmark_screen

    with _progress(not as_json) as update:
        result = benchmark_screen(
            studies=studies, repeats=repeats, progress=lambda task: update(task, 1, 1)
        )
    _emit(
        [_screen_table(result)],
        result,
        as_json=as_json,
        append=append_docs,
        title="Reading screens ready",
        width=140,
    )
    if result["console_errors"]:
        typer.echo(f"console errors: {'; '.join(result['console_errors'][:5])}", err=True)


def _sliding_window_table(result: dict[str, Any]) -> Table:
    from rich.table import Table

    first = result["rows"][0]
    table = Table(
        title=(
            f"CT sliding-window inference, {first['model']}, patch "
            f"{'x'.join(str(p) for p in first['patch_size'])} at overlap {first['overlap']}, "
            f"Gaussian blending, {result['threads']} torch threads, one process per size"
        )
    )
    headers = (
        "volume (slices x rows x cols)",
        "float32 MB",
        "resampled",
        "s total",
        "s resample",
        "s windows",
        "s back + nodules",
        "RSS with volume MB",
        "peak RSS MB",
        "peak - with volume MB",
    )
    for header in headers:
        table.add_column(header, justify="left" if header.startswith("volume") else "right")
    for row in result["rows"]:
        timings = row["timings"]
        table.add_row(
            "x".join(str(n) for n in row["shape"]),
            _fmt(row["volume_mb"], 0),
            "x".join(str(n) for n in row["resampled_shape"]),
            _fmt(row["seconds"], 1),
            _fmt(timings.get("resample"), 1),
            _fmt(timings.get("inference"), 1),
            _fmt(timings.get("postprocess"), 1),
            _fmt(row["rss_with_volume_mb"], 0),
            _fmt(row["peak_rss_mb"], 0),
            _fmt(row["peak_rss_mb"] - row["rss_with_volume_mb"], 0),
        )
    return table


@bench_app.command("sliding-window")
def bench_sliding_window(
    slices: str = typer.Option("75,150,300", "--slices", help="Slice counts (comma list)."),
    size: int = typer.Option(512, "--size", min=64, help="Rows and columns of each slice."),
    model: str = typer.Option(
        "ct-threshold-baseline", "--model", "-m", help="A CT package (alias, name or path)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
    append_docs: bool = typer.Option(False, "--append-docs", help="Append to docs/benchmarks.md."),
) -> None:
    """A CT volume through sliding-window inference: time and peak RSS per volume size."""
    _check_docs(append_docs)
    from overread.bench.sliding_window import benchmark_sliding_window

    counts = _ints(slices, "--slices")
    if any(c < 2 for c in counts):
        raise ConfigError("--slices: a volume needs at least 2 slices")
    with _progress(not as_json) as update:
        try:
            result = benchmark_sliding_window(counts, size, model, progress=update)
        except RuntimeError as exc:
            raise ConfigError(str(exc)) from None
    _emit(
        [_sliding_window_table(result)],
        result,
        as_json=as_json,
        append=append_docs,
        title="CT sliding-window inference",
        width=200,
    )
