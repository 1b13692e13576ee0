"""``overread export``: (re)build a package's ONNX FP32 and INT8 models from its weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from overread.cli.app import app
from overread.errors import ModelPackageError


@app.command("export")
def export_command(
    package_ref: str = typer.Argument(
        ..., metavar="PACKAGE", help="Alias, name@version or package path."
    ),
    onnx: bool = typer.Option(
        False, "--onnx", help="Export the FP32 ONNX model (with CAM output)."
    ),
    int8: bool = typer.Option(False, "--int8", help="Also write a static INT8 model."),
    out: Path | None = typer.Option(
        None, "--out", help="Write a new package here instead of in place."
    ),
    calibration: int = typer.Option(
        64, "--calibration-images", min=1, help="INT8 calibration images."
    ),
    method: str = typer.Option("minmax", "--calibration", help="minmax, entropy or percentile."),
    int8_target: float = typer.Option(
        0.03,
        "--int8-target",
        min=0.0,
        max=1.0,
        help="Keep the most drift-sensitive nodes in FP32 until INT8 is this close to FP32.",
    ),
    no_search: bool = typer.Option(
        False, "--no-int8-search", help="Quantise every node (the settings before the search)."
    ),
    keep_fp32: list[str] = typer.Option(
        [], "--keep-fp32", help="A node to keep in FP32 (repeatable)."
    ),
    sensitivity: str | None = typer.Option(
        None,
        "--int8-sensitivity",
        help="Also report each node's drift: 'only' (that node alone quantised) or "
        "'exclude' (that node alone left in FP32).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Export ONNX from the package's torch weights and re-sign the package.

    Checks that ONNX Runtime FP32 agrees with torch (max |logit difference|) and,
    with --int8, reports how far INT8 probabilities move from FP32 on the
    calibration images (phantoms when the generator is available, else synthetic
    chest images).
    """
    if method not in ("minmax", "entropy", "percentile"):
        raise typer.BadParameter(
            f"{method!r}: expected minmax, entropy or percentile", param_hint="--calibration"
        )
    if sensitivity not in (None, "only", "exclude"):
        raise typer.BadParameter(
            f"{sensitivity!r}: expected only or exclude", param_hint="--int8-sensitivity"
        )
    if (sensitivity is not None or keep_fp32) and not int8:
        raise typer.BadParameter(
            "--int8-sensitivity and --keep-fp32 need --int8", param_hint="--int8"
        )
    if not onnx:
        raise typer.BadParameter(
            "nothing to do: pass --onnx (and optionally --int8)", param_hint="--onnx"
        )
    # Imported here: torch and the exporters load in seconds, and every other
    # command (demo, serve, ...) would pay for them at start.
    import torch

    from overread.models.calibration import calibration_images
    from overread.models.export import export_onnx
    from overread.models.int8_tuning import (
        Int8Options,
        export_guard,
        int8_sensitivity,
        quantize_tuned,
    )
    from overread.models.package import (
        ONNX_FP32_NAME,
        ONNX_INT8_NAME,
        load_package,
        resign_package,
    )
    from overread.models.registry import Registry, bundled_dir

    registry = Registry.from_settings()
    source = load_package(registry.resolve(package_ref), key=registry.key)
    if out is not None:
        if out.exists():
            raise ModelPackageError(f"{out}: already exists")
        try:
            shutil.copytree(source.path, out)
        except OSError as exc:
            shutil.rmtree(out, ignore_errors=True)  # a part-copy would block every retry
            raise ModelPackageError(f"{out}: cannot write there ({exc.strerror or exc})") from None
        target = out
    else:
        if bundled_dir() in source.path.parents:
            raise ModelPackageError(f"{source.path}: bundled packages are read-only; use --out DIR")
        target = source.path
    spec = source.manifest.input
    network = source.build_network()
    example = torch.from_numpy(
        calibration_images(1, spec.size, spec.chain, spec.channels, seed=123)[0]
    )
    report = export_onnx(network, target / ONNX_FP32_NAME, example)
    result: dict[str, object] = {
        "package": str(target),
        "onnx_fp32": str(target / ONNX_FP32_NAME),
        "cam_output": report.has_cam,
        "fp32_vs_torch_max_abs_diff": report.max_abs_diff,
    }
    runtime = {
        "torch_state_dict": source.manifest.runtime.torch_state_dict,
        "onnx_fp32": ONNX_FP32_NAME,
    }
    int8_section: dict[str, object] | None = None
    if int8:
        images, origin = calibration_images(calibration, spec.size, spec.chain, spec.channels)
        options = Int8Options(method=method, exclude=tuple(keep_fp32))
        _, section = quantize_tuned(
            target / ONNX_FP32_NAME,
            target / ONNX_INT8_NAME,
            images,
            options=options,
            target=None if no_search else int8_target,
            origin=origin,
            guard=export_guard(spec.size, spec.chain, spec.channels),
        )
        int8_section = section.model_dump(mode="json")
        runtime["onnx_int8"] = ONNX_INT8_NAME
        result["onnx_int8"] = str(target / ONNX_INT8_NAME)
        result["calibration"] = origin
        result["int8_vs_fp32_max_prob_diff"] = section.max_prob_diff  # on ``images``
        result["int8_fp32_nodes"] = section.exclude
        result["int8_drift_before_search"] = section.baseline_max_prob_diff
        if sensitivity is not None:
            ranking = int8_sensitivity(
                target / ONNX_FP32_NAME,
                images,
                options=options,
                mode="only" if sensitivity == "only" else "exclude",
            )
            result["int8_sensitivity"] = ranking.to_dict()
    elif source.manifest.runtime.onnx_int8:
        (target / source.manifest.runtime.onnx_int8).unlink(missing_ok=True)  # stale now
    cam = "onnx-output" if report.has_cam else "none"
    manifest = resign_package(target, key=registry.key, runtime=runtime, cam=cam, int8=int8_section)
    load_package(target, key=registry.key)  # verify what was written
    result["sha256"] = manifest.content_sha256()
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    for key, value in result.items():
        typer.echo(f"{key}: {value}")
