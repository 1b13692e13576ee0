"""``overread evaluate --leave-one-site-out``: held-out-site figures and the remedies table."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import typer

from overread.errors import EvaluationError

#: The markers around the generated section of a Markdown file.
TABLE_START = "<!-- remedies-table:start (written by overread evaluate --remedies-table) -->"
TABLE_END = "<!-- remedies-table:end -->"


def write_table_section(path: Path, body: str) -> None:
    """Replace the text between the markers in ``path`` (appending them when absent)."""
    try:
        text = path.read_text(encoding="utf-8") if path.exists() else ""
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot read ({exc})") from None
    section = f"{TABLE_START}\n{body.rstrip()}\n{TABLE_END}"
    if TABLE_START in text and TABLE_END in text:
        head, rest = text.split(TABLE_START, 1)
        _, tail = rest.split(TABLE_END, 1)
        text = f"{head}{section}{tail}"
    else:
        text = f"{text.rstrip()}\n\n{section}\n" if text else f"{section}\n"
    try:
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise EvaluationError(f"{path}: cannot write ({exc})") from None


def run_leave_one_site_out(
    *,
    model: str | None,
    train: Path | None,
    data: Path | None,
    out: Path | None,
    as_json: bool,
    tta: int | None,
    label: str | None,
    site_column: str,
    site_sample: int,
    calibration: str,
    min_site_cases: int | None,
    resamples: int,
    seed: int,
    remedies_table: Path | None,
    workdir: Path | None,
) -> None:
    """The ``--leave-one-site-out`` branch of ``overread evaluate``."""
    from overread.evaluation.held_out_sites import remedies_table as table_of
    from overread.evaluation.held_out_sites import summarise
    from overread.evaluation.report import json_safe
    from overread.inference.held_out_sites import (
        LosoOptions,
        loso_with_package,
        loso_with_training,
    )

    if data is None:
        raise EvaluationError("--leave-one-site-out needs --data COHORT (a phantom cohort)")
    if (model is None) == (train is None):
        raise EvaluationError("--leave-one-site-out needs exactly one of --model and --train")
    if not data.is_dir():
        raise EvaluationError(f"{data}: no such cohort folder")
    if calibration not in ("temperature", "isotonic"):
        raise EvaluationError(f"unknown --calibration {calibration!r}; use temperature or isotonic")
    if train is not None and not train.is_file():
        raise EvaluationError(f"{train}: no such training config")
    options = LosoOptions(
        label=label,
        site_column=site_column,
        tta_views=tta if tta is not None else 4,
        calibration=calibration,
        min_site_cases=min_site_cases,
        site_sample=site_sample,
    )
    if options.tta_views < 2:
        raise EvaluationError("--leave-one-site-out measures TTA: give --tta 2 or more views")

    def echo(message: str) -> None:
        typer.echo(message, err=True)

    started = time.perf_counter()
    if model is not None:
        cohort = loso_with_package(model, data, options, echo=echo)
    else:
        assert train is not None
        folder = workdir or ((out or Path("runs")) / "leave-one-site-out")
        cohort = loso_with_training(train, data, folder, options, echo=echo)
    summary = summarise(cohort, resamples=min(resamples, 1000), seed=seed)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "leave_one_site_out.json").write_text(
            json.dumps(json_safe(summary), indent=2), encoding="utf-8"
        )
    missing = [] if train is not None else ["harmonisation"]
    table = table_of(summary, missing=missing)
    if remedies_table is not None:
        command = "overread " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        body = (
            f"Command: `{command}`\n\n"
            f"Finding: **{summary['label']}**; {summary['n_studies']} held-out studies of "
            f"{summary['n_patients']} patients; each study scored by the fold that held its "
            "site out. AUC intervals: patient-clustered DeLong; ECE and sensitivity "
            "intervals: patient bootstrap; p: paired DeLong test against `none` on the "
            "pooled held-out studies.\n\n"
            + table
            + "\n"
            + "\n".join(f"- {note}" for note in summary["notes"])
        )
        write_table_section(remedies_table, body)
    if as_json:
        typer.echo(json.dumps(json_safe(summary)))
        return
    typer.echo(f"leave-one-site-out, {summary['label']}: {summary['n_studies']} studies")
    typer.echo(table)
    for note in summary["notes"]:
        typer.echo(f"note: {note}")
    if remedies_table is not None:
        typer.echo(f"wrote the remedies table to {remedies_table}")


__all__ = ["TABLE_END", "TABLE_START", "run_leave_one_site_out", "write_table_section"]
