"""``overread bench``: benchmarks. Other areas add their own subcommands to ``bench_app``."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

from overread.cli.app import app

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
    as_json: bool = typer.Option(False, "--json", help="Print the whole result as JSON."),
) -> None:
    """Torch eager vs ONNX Runtime FP32 vs INT8 on the default model, side by side."""
    from overread.config import load_settings
    from overread.inference.bench import benchmark_inference
    from overread.models.registry import Registry

    settings = load_settings()
    package = Registry.from_settings(settings).load(model or settings.default_model)
    result = benchmark_inference(
        package, repeats=repeats, threads=threads, quantisation=quantisation
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
        f"load average {machine['load_average_1min']}"
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
    summary.add_row(f"read {pre['image']} (ms)", _fmt(pre["read_ms"], 1))
    summary.add_row("preprocessing chain to model input (ms)", _fmt(pre["chain_ms"], 1))
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
