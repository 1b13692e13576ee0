"""``overread train``: train a classifier from a TOML config or a shipped preset."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import typer

from overread.cli.app import app
from overread.errors import ConfigError


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are TOML (``2``, ``0.5``, ``"u-ones"``, ``[1, 2]``) or bare text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.epochs=2")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        out[key.strip()] = value
    return out


def _train_ct(config: Path | None, preset: str | None, values: dict[str, Any], show: bool) -> bool:
    """Run a ``kind = "ct-segmentation"`` config (3-D lung/nodule); False for other configs."""
    from overread.training.ct import ct_toml, parse_ct_config

    data = ct_toml(config, preset)
    if data is None:
        return _train_ct_detection(config, preset, values, show)
    cfg = parse_ct_config(data, values)
    if show:
        typer.echo(cfg.model_dump_json(indent=2))
        return True
    from overread.training.ct_eval import run_ct_training

    result = run_ct_training(cfg, echo=typer.echo)
    typer.echo(f"checkpoint: {result.checkpoint}")
    if result.package is not None:
        typer.echo(f"package: {result.package}")
    return True


def _train_seg(config: Path | None, preset: str | None, values: dict[str, Any], show: bool) -> bool:
    """Run a ``kind = "cxr-segmentation"`` config (2-D lung fields); False for other configs."""
    from overread.training.cxr_seg import parse_seg_config, seg_toml

    data = seg_toml(config, preset)
    if data is None:
        return False
    values = {k: v for k, v in values.items() if k != "device"}
    cfg = parse_seg_config(data, values)
    if show:
        typer.echo(cfg.model_dump_json(indent=2))
        return True
    from overread.training.cxr_seg import run_seg_training

    result = run_seg_training(cfg, echo=typer.echo)
    typer.echo(f"package: {result.package}")
    return True


def _train_ct_detection(
    config: Path | None, preset: str | None, values: dict[str, Any], show: bool
) -> bool:
    """Run a ``kind = "ct-detection"`` config (3-D nodule detector); False for other configs."""
    from overread.training.ct_detect import detection_toml, parse_detection_config

    data = detection_toml(config, preset)
    if data is None:
        return False
    cfg = parse_detection_config(data, values)
    if show:
        typer.echo(cfg.model_dump_json(indent=2))
        return True
    from overread.training.ct_detect import run_detection_training

    result = run_detection_training(cfg, echo=typer.echo)
    typer.echo(f"checkpoint: {result.checkpoint}")
    if result.package is not None:
        typer.echo(f"package: {result.package}")
    return True


@app.command("train")
def train(
    config: Path | None = typer.Argument(None, help="Training config (TOML)."),
    preset: str | None = typer.Option(
        None, "--preset", help="A shipped preset instead of a file (see --list-presets)."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a config value: --set optim.epochs=2 (repeatable)."
    ),
    output: Path | None = typer.Option(None, "--output", "-o", help="Output folder."),
    device: str | None = typer.Option(
        None, "--device", help="auto, cpu, cuda or cuda:N (default: the config's, auto)."
    ),
    no_resume: bool = typer.Option(
        False, "--no-resume", help="Start afresh even if the output has a checkpoint."
    ),
    list_presets: bool = typer.Option(False, "--list-presets", help="List presets and exit."),
    show_config: bool = typer.Option(
        False, "--show-config", help="Print the resolved config and exit without training."
    ),
) -> None:
    """Train a chest X-ray classifier and write a model package, metrics and a report.

    Runs under ``torchrun`` as well (distributed data parallel: gloo on CPU, NCCL
    on GPU). An interrupted run continues from its last checkpoint when started
    again with the same output folder.
    """
    from overread.training import load_config, preset_names
    from overread.training.run import run_training

    if list_presets:
        for name in preset_names():
            typer.echo(name)
        return
    values = _parse_overrides(overrides)
    if output is not None:
        values["output"] = str(output.resolve())
    if device is not None:
        values["device"] = device
    if _train_ct(config, preset, values, show_config):
        return
    if _train_seg(config, preset, values, show_config):
        return
    cfg = load_config(config, preset=preset, overrides=values)
    if show_config:
        typer.echo(cfg.model_dump_json(indent=2))
        return
    result = run_training(cfg, resume=not no_resume, echo=typer.echo)
    if result.package is None and result.metrics:
        typer.echo("no model package written", err=True)
    for name, block in result.metrics.get("evaluations", {}).items():
        focus = ""
        if isinstance(block.get("focus_mean_auc"), float):
            focus = f", {len(block['focus_labels'])} focus labels {block['focus_mean_auc']:.3f}"
        typer.echo(f"{name}: mean AUC {block['mean_auc']:.3f}{focus} ({block['description']})")
    if result.package is not None:
        typer.echo(f"package: {result.package}")
