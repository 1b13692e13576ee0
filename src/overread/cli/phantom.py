"""``overread phantom``: generate synthetic studies with known truth."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from overread.cli.app import app
from overread.cli.options import output_folder
from overread.errors import ConfigError

phantom_app = typer.Typer(
    help="Generate synthetic studies with exact ground truth.", no_args_is_help=True
)
app.add_typer(phantom_app, name="phantom")


def _prevalence(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        label, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--prevalence {item!r}: expected LABEL=FRACTION")
        try:
            out[label.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"--prevalence {item!r}: {value!r} is not a number") from None
    return out


@phantom_app.command("cxr")
def phantom_cxr(
    n: int = typer.Option(..., "--n", help="Number of studies."),
    out: str = typer.Option(..., "--out", help="Output folder."),
    seed: int = typer.Option(0, "--seed", help="Master seed (same seed, same bytes)."),
    size: int = typer.Option(1024, "--size", help="Image rows and columns (64..3000)."),
    internal: int = typer.Option(256, "--internal", help="Internal rendering resolution."),
    sites: int = typer.Option(4, "--sites", help="Number of sites/scanners (1..4)."),
    modality: str = typer.Option("DX", "--modality", help="DX, CR, or mixed (per site)."),
    monochrome1: float | None = typer.Option(
        None, "--monochrome1", help="Fraction stored as MONOCHROME1 (default: per site)."
    ),
    uncertain_rate: float = typer.Option(
        0.1, "--uncertain-rate", help="Fraction of positives reported uncertain (-1)."
    ),
    label_noise: float = typer.Option(
        0.01, "--label-noise", help="Probability a report label is flipped."
    ),
    prevalence: list[str] = typer.Option(
        [], "--prevalence", help="Override a label's prevalence: 'Edema=0.2' (repeatable)."
    ),
    drift_site: str | None = typer.Option(
        None, "--drift-site", help="Site code whose acquisition changes (NGH, RMC, SCH, LKC)."
    ),
    drift_date: str | None = typer.Option(
        None, "--drift-date", help="Date the drift starts (YYYY-MM-DD)."
    ),
    start_date: str = typer.Option("2024-01-01", "--start-date", help="First study date."),
    end_date: str = typer.Option("2025-12-31", "--end-date", help="Last study date."),
    workers: int = typer.Option(2, "--workers", help="Worker processes."),
    severity_scale: float = typer.Option(
        1.0, "--severity-scale", help="Scale every finding's severity (0.2..1): harder cohorts."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Generate a synthetic chest X-ray cohort (DICOM + labels.csv + truth)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    from overread.phantom import CohortOptions, plan_cohort, write_cohort

    options = CohortOptions(
        n=n,
        seed=seed,
        rows=size,
        cols=size,
        internal=internal,
        sites=sites,
        modality=modality,
        monochrome1_fraction=monochrome1,
        uncertain_rate=uncertain_rate,
        label_noise=label_noise,
        prevalence=_prevalence(prevalence),
        drift_site=drift_site,
        drift_date=drift_date,
        start_date=start_date,
        end_date=end_date,
        workers=workers,
        severity_scale=severity_scale,
    )
    plans = plan_cohort(options)  # validates every option before anything is written
    output_folder(Path(out))
    with Progress(
        TextColumn("phantom cxr"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task("render", total=n)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = write_cohort(out, options, progress=progress, plans=plans)
    typer.echo(
        f"wrote {summary.studies} studies of {summary.patients} patients to {summary.out_dir} "
        f"in {summary.seconds:.1f} s ({summary.studies_per_minute:.0f} studies/min)"
    )
    typer.echo("sites: " + json.dumps(summary.per_site, sort_keys=True))


@phantom_app.command("previews")
def phantom_previews(
    out: str = typer.Option("docs/img", "--out", help="Folder for the PNG previews."),
    size: int = typer.Option(512, "--size", help="Rendered image size."),
    seed: int = typer.Option(3, "--seed", help="Patient seed."),
) -> None:
    """Write PNG previews of every finding (with its mask outlined) and of each site."""
    output_folder(Path(out))
    from overread.phantom.previews import write_previews

    for path in write_previews(out, size=size, seed=seed):
        typer.echo(str(path))


@phantom_app.command("learnability")
def phantom_learnability(
    n: int = typer.Option(4000, "--n", help="Studies to render in memory."),
    size: int = typer.Option(128, "--size", help="Image size the model sees."),
    epochs: int = typer.Option(6, "--epochs", help="Training epochs."),
    seed: int = typer.Option(123, "--seed", help="Cohort and training seed."),
    workers: int = typer.Option(2, "--workers", help="Rendering processes."),
    severity_scale: float = typer.Option(
        1.0, "--severity-scale", help="Scale every finding's severity (0.2..1)."
    ),
) -> None:
    """Train a small CNN on in-memory phantoms and print held-out AUC per label."""
    from overread.phantom.learnability import check_learnability

    if n < 40 or not 32 <= size <= 512 or epochs < 1:
        raise ConfigError("learnability needs --n >= 40, --size 32..512 and --epochs >= 1")
    result = check_learnability(
        n=n,
        size=size,
        epochs=epochs,
        seed=seed,
        workers=workers,
        echo=typer.echo,
        severity_scale=severity_scale,
    )
    for label, value in result.auc.items():
        typer.echo(f"{label:28s} {value:.3f}")
    typer.echo(
        f"mean AUC {result.mean_auc:.3f} at {size}x{size} "
        f"({result.n_train} train / {result.n_test} held-out studies, {result.seconds:.0f} s)"
    )


@phantom_app.command("lateral")
def phantom_lateral(
    n: int = typer.Option(..., "--n", help="Number of lateral images."),
    out: str = typer.Option(..., "--out", help="Output folder."),
    seed: int = typer.Option(0, "--seed", help="Master seed."),
    size: int = typer.Option(512, "--size", help="Image rows and columns (64..3000)."),
) -> None:
    """Write plain lateral chest projections (input-gate tests; no findings, no truth)."""
    from overread.phantom.lateral import write_lateral_cohort

    if n < 1 or not 64 <= size <= 3000:
        raise ConfigError("phantom lateral needs --n >= 1 and --size 64..3000")
    output_folder(Path(out))
    written = write_lateral_cohort(out, n, seed, size=size)
    typer.echo(f"wrote {len(written)} lateral images to {out}")


@phantom_app.command("chexpert")
def phantom_chexpert(
    cohort: Path = typer.Option(..., "--from", help="A cohort written by 'phantom cxr'."),
    out: Path = typer.Option(..., "--out", help="Root folder for CheXpert-v1.0-small/."),
    valid_fraction: float = typer.Option(
        0.2, "--valid-fraction", help="Share of patients in valid.csv (exact labels)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the train/valid patient draw."),
    image_format: str = typer.Option("jpg", "--format", help="jpg (as CheXpert) or png."),
) -> None:
    """Rewrite a phantom cohort in CheXpert's layout (train.csv, valid.csv, 8-bit JPEGs)."""
    from overread.phantom.chexpert import write_chexpert_layout

    layout = write_chexpert_layout(
        cohort, out, valid_fraction=valid_fraction, seed=seed, image_format=image_format
    )
    typer.echo(
        f"wrote {layout.n_train} train and {layout.n_valid} valid images: "
        f"{layout.train_csv}, {layout.valid_csv} (paths relative to {layout.root})"
    )


@phantom_app.command("ct")
def phantom_ct(
    n: int = typer.Option(..., "--n", help="Number of CT cases."),
    out: str = typer.Option(..., "--out", help="Output folder (one sub-folder per case)."),
    seed: int = typer.Option(0, "--seed", help="Master seed (same seed, same volumes)."),
    size: int = typer.Option(128, "--size", help="Rows and columns per slice (64..1024)."),
    thickness: float | None = typer.Option(
        None, "--thickness", help="Slice thickness in mm (default: varied per case)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Generate chest CT series (DICOM) with lung/nodule/airway masks (NIfTI) and nodules (JSON)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from overread.phantom.ct import MAX_SIZE, MIN_SIZE, write_ct_cohort

    if n < 1 or not MIN_SIZE <= size <= MAX_SIZE:
        raise ConfigError(f"phantom ct needs --n >= 1 and --size {MIN_SIZE}..{MAX_SIZE}")
    if thickness is not None and not 0.5 <= thickness <= 10.0:
        raise ConfigError("phantom ct needs --thickness 0.5..10 mm")
    output_folder(Path(out))
    with Progress(
        TextColumn("phantom ct"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=quiet,
        transient=False,
    ) as bar:
        task = bar.add_task("render", total=n)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        summary = write_ct_cohort(out, n, seed, size=size, thickness=thickness, progress=progress)
    typer.echo(
        f"wrote {summary.cases} CT cases ({summary.nodules} nodules, {summary.missing} with a "
        f"missing slice) to {summary.out_dir} in {summary.seconds:.1f} s"
    )
