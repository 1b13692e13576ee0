"""``overread labels``: inspect dataset label files.

``overread labels stats --dataset chexpert --csv train.csv --policy u-ones``
prints, per label, how many images are positive, negative, uncertain and blank
in the file, and what the label policy turns them into; with ``--json``, one
JSON object. Rows that could not be read are listed on stderr and make the
command exit 1 after printing the counts of the rest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from overread.cli.app import app
from overread.cli.options import output_folder

labels_app = typer.Typer(help="Inspect dataset label files.", no_args_is_help=True)
app.add_typer(labels_app, name="labels")

_MAX_SKIPPED_SHOWN = 20


def _print_table(stats: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=(
            f"{stats['dataset']}: {stats['images']} images, {stats['studies']} studies, "
            f"{stats['patients']} patients; policy {stats['policy']}"
        )
    )
    for column in ("label", "pos", "neg", "unc", "blank", "→ pos", "→ neg", "→ soft", "→ ignored"):
        table.add_column(column, justify="left" if column == "label" else "right")
    for name, counts in stats["labels"].items():
        after = counts["after"]
        table.add_row(
            name,
            *(str(counts[k]) for k in ("positive", "negative", "uncertain", "blank")),
            *(str(after[k]) for k in ("positive", "negative", "soft", "ignored")),
        )
    Console(width=140).print(table)


@labels_app.command("stats")
def stats_command(
    dataset: str = typer.Option(
        ..., "--dataset", "-d", help="chexpert, nih, mimic, siim, folder, phantom or phantom-truth."
    ),
    csv: Path = typer.Option(..., "--csv", help="The dataset's label CSV (gzip is fine)."),
    policy: str = typer.Option(
        "u-ignore",
        "--policy",
        "-p",
        help="u-ones, u-zeros, u-ignore, u-lsr, or a full policy such as "
        "'u-ignore;Atelectasis=u-ones;blank=zero'.",
    ),
    root: Path | None = typer.Option(
        None, "--root", help="Image folder; rows whose image is missing are skipped."
    ),
    label_set: str | None = typer.Option(
        None, "--label-set", help="NIH only: 'nih' (its own 15 labels, default) or 'overread'."
    ),
    metadata: Path | None = typer.Option(
        None, "--metadata", help="MIMIC only: mimic-cxr-2.0.0-metadata.csv (one row per image)."
    ),
    split: Path | None = typer.Option(
        None, "--split", help="MIMIC only: mimic-cxr-2.0.0-split.csv (adds the official split)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Count labels per value, before and after an uncertainty policy."""
    from overread.data import LabelPolicy, label_stats, read_labels

    parsed = LabelPolicy.parse(policy)
    options: dict[str, Any] = {}
    for name, value in (("label_set", label_set), ("metadata", metadata), ("split", split)):
        if value is not None:
            options[name] = value
    table = read_labels(dataset, csv, root=root, **options)
    stats = label_stats(table, parsed)
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
    else:
        _print_table(stats)
        for warning in table.warnings:
            typer.echo(f"warning: {warning}", err=True)
    if table.skipped:
        for row in table.skipped[:_MAX_SKIPPED_SHOWN]:
            typer.echo(f"skipped: {csv}: {row}", err=True)
        more = len(table.skipped) - _MAX_SKIPPED_SHOWN
        if more > 0:
            typer.echo(f"skipped: ... and {more} more", err=True)
        typer.echo(
            f"warning: {len(table.skipped)} row(s) of {csv} skipped; counts cover the "
            f"{len(table)} rows read",
            err=True,
        )
        raise typer.Exit(1)


@labels_app.command("split")
def split_command(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name, as for 'stats'."),
    csv: Path = typer.Option(..., "--csv", help="The dataset's label CSV."),
    out: Path = typer.Option(..., "--out", help="Folder for train.csv, val.csv, test.csv."),
    fractions: str = typer.Option(
        "0.7,0.1,0.2", "--fractions", help="Patient fractions, comma-separated."
    ),
    seed: int = typer.Option(0, "--seed", help="Shuffle seed."),
    holdout_site: list[str] = typer.Option(
        [], "--holdout-site", help="Hold this site out as external.csv (repeatable)."
    ),
    root: Path | None = typer.Option(
        None, "--root", help="Image folder (rows without images are skipped)."
    ),
) -> None:
    """Split a label file by patient (stratified by label) into CSVs, checked for leakage."""
    from overread.data import patient_split, read_labels, site_split
    from overread.errors import ConfigError

    try:
        shares = [float(v) for v in fractions.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(
            f"--fractions must be numbers separated by commas, not {fractions!r}"
        ) from None
    names = (
        ["train", "val", "test"] if len(shares) == 3 else [f"split{i}" for i in range(len(shares))]
    )
    table = read_labels(dataset, csv, root=root)
    parts = {}
    if holdout_site:
        table, external = site_split(table, holdout_site)
        parts["external"] = external
    for name, part in zip(names, patient_split(table, shares, seed=seed), strict=True):
        parts[name] = part
    output_folder(out)
    for name, part in parts.items():
        part.frame.to_csv(out / f"{name}.csv", index=False)
        typer.echo(
            f"{name}: {part.n_patients} patients, {part.n_studies} studies, {len(part)} images "
            f"-> {out / f'{name}.csv'}"
        )
    if table.skipped:
        typer.echo(
            f"warning: {len(table.skipped)} row(s) of {csv} skipped, first: {table.skipped[0]}",
            err=True,
        )
        raise typer.Exit(1)
