"""``overread inspect``: read image files and report what they hold and what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from overread.cli.app import app
from overread.errors import ConfigError

if TYPE_CHECKING:
    from overread.imaging.inspection import Inspection

# pydicom and the imaging package are imported when the command runs.


def _describe(result: Inspection) -> list[str]:
    from pydicom.uid import UID

    meta = result.metadata
    assert meta is not None
    ts = UID(meta.transfer_syntax).name if meta.transfer_syntax else meta.source_format
    photometric = meta.photometric_interpretation or "-"
    stored = meta.stored_photometric_interpretation
    if stored and stored != photometric:
        photometric = f"{stored} (as {photometric})"
    lines = [
        result.path,
        f"  {meta.modality or '-'}  {meta.rows}x{meta.columns}  frames {meta.frames}  "
        f"{photometric}  {ts}",
    ]
    if meta.sop_instance_uid:
        lines.append(f"  SOP Instance UID {meta.sop_instance_uid}")
    if meta.patient_id or meta.study_date:
        lines.append(f"  patient {meta.patient_id or '-'}  study date {meta.study_date or '-'}")
    if meta.pixel_spacing:
        lines.append(f"  pixel spacing {meta.pixel_spacing[0]:g} x {meta.pixel_spacing[1]:g} mm")
    if meta.window_center and meta.window_width:
        lines.append(
            f"  window C={meta.window_center[0]:g} W={meta.window_width[0]:g}"
            f" {meta.voi_lut_function or 'LINEAR'}"
        )
    if result.pixel_min is not None:
        applied = meta.modality_lut_applied or ""
        unit = " (after Modality LUT)" if applied and "identity" not in applied else ""
        lines.append(
            f"  pixels min {result.pixel_min:g}  max {result.pixel_max:g}  "
            f"mean {result.pixel_mean:.4g}{unit}"
        )
    lines.extend(f"  warning: {w}" for w in result.warnings)
    return lines


@app.command("inspect")
def inspect_command(
    paths: list[Path] | None = typer.Argument(
        None, help="Files or directories (walked recursively)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per file, per line."),
    codecs: bool = typer.Option(
        False, "--codecs", help="List the compressed transfer syntaxes this install can decode."
    ),
) -> None:
    """Read DICOM / NIfTI / PNG / JPEG files: metadata, pixel statistics, warnings.

    Exit status 0 when every file was read; 1 when some could not be (each gets
    one line 'path: what is wrong' on stderr and the others are still read).
    """
    from overread.config import load_settings
    from overread.imaging.codecs import codec_availability
    from overread.imaging.inspection import inspect, iter_files

    if codecs:
        report = codec_availability()
        if as_json:
            typer.echo(json.dumps(report, sort_keys=True))
        else:
            width = max(len(name) for name in report)
            for name, status in report.items():
                typer.echo(f"{name:<{width}}  {status}")
        if not paths:
            return
    if not paths:
        raise ConfigError("inspect needs at least one file or directory (or --codecs)")
    settings = load_settings().imaging
    failures = 0
    for file in iter_files(paths):
        result = inspect(file, settings=settings)
        if as_json:
            typer.echo(json.dumps(result.to_json(), sort_keys=True, default=str))
        elif result.ok:
            typer.echo("\n".join(_describe(result)))
        if not result.ok:
            failures += 1
            typer.echo(result.error, err=True)
    if failures:
        raise typer.Exit(1)
