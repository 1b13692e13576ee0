"""``overread deid``: de-identify DICOM files per PS3.15 for sharing (research, vendors)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from overread.cli.app import app
from overread.cli.options import output_file, output_folder, write_output
from overread.errors import ConfigError

SALT_ENV = "OVERREAD_DEID_SALT"


def _inputs(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _salt(salt_file: Path | None) -> str:
    if salt_file is not None:
        try:
            salt = salt_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(
                f"{salt_file}: cannot read the de-identification salt ({exc})"
            ) from None
        if not salt:
            raise ConfigError(f"{salt_file}: the de-identification salt file is empty")
        return salt
    salt = os.environ.get(SALT_ENV, "").strip()
    if not salt:
        raise ConfigError(
            f"de-identification needs the site's secret salt: --salt-file FILE or {SALT_ENV}"
        )
    return salt


@app.command("deid")
def deid(
    paths: list[Path] = typer.Argument(
        ..., help="DICOM files or folders to de-identify, then the output folder (last)."
    ),
    profile: list[str] = typer.Option(
        [],
        "--profile",
        help="basic (always) plus PS3.15 options: retain-modified-dates, "
        "retain-device-identity, clean-pixel-data (repeatable or comma-separated).",
    ),
    salt_file: Path | None = typer.Option(
        None,
        "--salt-file",
        help=f"The site's secret for repeatable pseudonyms (else ${SALT_ENV}).",
    ),
    date_shift_days: int | None = typer.Option(
        None,
        "--date-shift-days",
        help="Days to shift dates by with retain-modified-dates (default: the site's "
        "secret offset derived from the salt).",
    ),
    pixel_regions: Path | None = typer.Option(
        None,
        "--pixel-regions",
        help="TOML [[region]] rules of burned-in text per device (clean-pixel-data).",
    ),
    report: Path | None = typer.Option(
        None,
        "--report",
        help="Write the per-file report (source -> output, what changed) as JSON here; "
        "keep it away from the shared output, it links the two.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """De-identify DICOM files into OUT (created if missing), one file per instance.

    Applies the PS3.15 Basic Application Level Confidentiality Profile with the
    options asked for; UIDs and patient IDs become keyed pseudonyms (the same salt
    gives the same pseudonyms, so a patient's studies stay together). Outputs are
    named by their new SOP Instance UID, never by the input's name. A file that cannot
    be de-identified (unreadable, burned-in text with no region rule) is left out with
    one error line; the others carry on.
    """
    from overread.errors import OverreadError
    from overread.imaging.deid import (
        build_deidentifier,
        deidentify_file,
        load_pixel_regions,
        profile_options,
    )

    if len(paths) < 2:
        raise ConfigError("give at least one input and the output folder: overread deid IN... OUT")
    *inputs, out = paths
    profiles = profile_options(profile)
    salt = _salt(salt_file)
    if "clean-pixel-data" in profiles and pixel_regions is None:
        raise ConfigError(
            "clean-pixel-data needs --pixel-regions FILE (where each device burns text)"
        )
    deidentifier = build_deidentifier(
        salt,
        profiles,
        date_shift_days=date_shift_days,
        pixel_regions=load_pixel_regions(pixel_regions) if pixel_regions is not None else None,
    )
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: the output must be a folder")
    if report is not None:
        output_file(report, "--report")
    output_folder(out, "output")
    resolved_out = out.resolve()

    files: list[dict[str, Any]] = []
    refused: list[dict[str, str]] = []
    written: dict[str, str] = {}
    for source in _inputs(inputs):
        if resolved_out in source.resolve().parents:
            continue  # an earlier run's output inside an input folder
        staging = out / f".partial-{os.getpid()}.dcm"
        try:
            result = deidentify_file(source, staging, deidentifier)
            target = out / f"{result.dataset.SOPInstanceUID}.dcm"
            staging.replace(target)
            if target.name in written:
                typer.echo(
                    f"warning: {source}: the same instance as {written[target.name]}; "
                    f"written once as {target.name}",
                    err=True,
                )
            written.setdefault(target.name, str(source))
        except Exception as exc:  # one file's problem never stops the batch
            staging.unlink(missing_ok=True)
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if not isinstance(exc, (OSError, OverreadError)):
                reason = f"cannot de-identify it ({type(exc).__name__}: {exc})"
            refused.append({"source": str(source), "reason": reason})
            typer.echo(f"error: {source}: {reason}", err=True)
            continue
        files.append(
            {
                "source": str(source),
                "output": target.name,
                "changes": dict(sorted(result.changes.items())),
                "pixels_cleaned": result.pixels_cleaned,
                "warnings": result.warnings,
            }
        )
    summary = {
        "profile": list(profiles),
        "date_shift_days": deidentifier.date_shift_days,
        "deidentified": len(files),
        "refused": refused,
        "files": files,
    }
    if report is not None:
        write_output(report, json.dumps(summary, indent=2) + "\n", "--report")
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        changed = sorted({k for f in files for k in f["changes"]})
        typer.echo(
            f"de-identified {len(files)} file(s) into {out} ({', '.join(profiles)}); "
            f"{len(refused)} refused"
        )
        if changed:
            typer.echo(
                f"attributes changed: {', '.join(changed[:40])}"
                + (f" and {len(changed) - 40} more" if len(changed) > 40 else "")
            )
        for entry in files:
            for warning in entry["warnings"]:
                typer.echo(f"warning: {entry['output']}: {warning}", err=True)
    if not files:
        raise typer.Exit(2)
    if refused:
        raise typer.Exit(1)
