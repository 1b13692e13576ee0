"""``overread evaluate``: clinical metrics, ``metrics.json`` and ``report.html``.

Two ways in: a model package run on a phantom cohort (``--model PACKAGE
--data COHORT``), or prediction and label CSVs (``--predictions``,
``--labels``, optional ``--groups``). Both write the same outputs; the run
exits 1 when some images could not be evaluated (after writing the rest).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from overread.cli.app import app
from overread.cli.options import output_folder
from overread.errors import EvaluationError


@app.command("evaluate")
def evaluate_command(
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Directory for report.html and metrics.json."
    ),
    model: str | None = typer.Option(None, "--model", help="Model package (alias, name or path)."),
    data: Path | None = typer.Option(
        None, "--data", help="Phantom cohort directory (with truth.csv)."
    ),
    predictions: Path | None = typer.Option(
        None, "--predictions", help="CSV: id column + one score column per label."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="CSV: id column + one 0/1 column per label (blank = missing)."
    ),
    groups: Path | None = typer.Option(
        None, "--groups", help="CSV: id column + subgroup columns (and patient id)."
    ),
    id_column: str = typer.Option("id", "--id-column", help="Name of the id column in the CSVs."),
    patient_column: str = typer.Option(
        "patient_id", "--patient-column", help="Patient id column (bootstrap clusters)."
    ),
    subgroups: str = typer.Option(
        "", "--subgroups", help="Comma-separated subgroup columns, e.g. sex,age,site."
    ),
    resamples: int = typer.Option(
        2000,
        "--resamples",
        min=0,
        help="Patient-level bootstrap resamples for AUC CIs (at least 1; 0 only with "
        "--leave-one-site-out, for DeLong intervals).",
    ),
    subgroup_resamples: int = typer.Option(
        200, "--subgroup-resamples", help="Bootstrap resamples for fairness gaps."
    ),
    rule: str = typer.Option(
        "specificity",
        "--rule",
        help="Threshold rule when none is given: specificity, sensitivity, youden.",
    ),
    target: float = typer.Option(
        0.9, "--target", help="Target specificity or sensitivity for --rule."
    ),
    thresholds: Path | None = typer.Option(
        None, "--thresholds", help='JSON {"label": threshold} chosen on validation data.'
    ),
    prevalence: float | None = typer.Option(
        None, "--deployment-prevalence", help="Recompute PPV/NPV at this prevalence."
    ),
    seed: int = typer.Option(0, "--seed", help="Bootstrap seed."),
    compare: Path | None = typer.Option(
        None,
        "--compare",
        help="Second predictions CSV (same ids and labels): paired DeLong and McNemar tests.",
    ),
    compare_model: str | None = typer.Option(
        None, "--compare-model", help="Second model package, run on the same --data cohort."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print metrics.json to stdout as well."),
    tta: int | None = typer.Option(
        None, "--tta", min=1, help="With --model: test-time augmentation views per image."
    ),
    mc_dropout: int | None = typer.Option(
        None, "--mc-dropout", min=0, help="With --model: Monte Carlo dropout passes."
    ),
    leave_one_site_out: bool = typer.Option(
        False,
        "--leave-one-site-out",
        help="Hold out each site in turn (with --data and --model or --train): "
        "per-site AUC, ECE, sensitivity and each remedy's effect.",
    ),
    train: Path | None = typer.Option(
        None,
        "--train",
        help="With --leave-one-site-out: training config; one package per fold and chain "
        "(plain and harmonised) is trained on the other sites.",
    ),
    label: str | None = typer.Option(
        None, "--label", help="With --leave-one-site-out: the finding evaluated."
    ),
    site_column: str = typer.Option(
        "Site", "--site-column", help="With --leave-one-site-out: truth.csv column of the site."
    ),
    site_sample: int = typer.Option(
        0,
        "--site-sample",
        min=0,
        help="With --leave-one-site-out: patients of each held-out site labelled for its "
        "own calibration (left out of its figures).",
    ),
    calibration: str = typer.Option(
        "temperature",
        "--calibration",
        help="With --leave-one-site-out: per-site map: temperature or isotonic.",
    ),
    min_site_cases: int | None = typer.Option(
        None,
        "--min-site-cases",
        min=2,
        help="With --leave-one-site-out: fewest labelled studies for a site's own "
        "calibration map (the stated minimum).",
    ),
    remedies_table: Path | None = typer.Option(
        None,
        "--remedies-table",
        help="With --leave-one-site-out: Markdown file whose remedies-table section "
        "is (re)written with this run's table.",
    ),
    workdir: Path | None = typer.Option(
        None, "--workdir", help="With --train: folder for the fold runs (default: under --out)."
    ),
) -> None:
    """Evaluate a model or a predictions file: AUC with CIs, operating points, calibration, subgroups."""
    from overread.evaluation.operating_points import threshold_rule
    from overread.evaluation.report import json_safe, write_report
    from overread.evaluation.study import compare_models, evaluate, read_prediction_files
    from overread.inference.cohort import cohort_inputs

    if leave_one_site_out or train is not None:
        from overread.cli.held_out_sites import run_leave_one_site_out

        run_leave_one_site_out(
            model=model,
            train=train,
            data=data,
            out=out,
            as_json=as_json,
            tta=tta,
            label=label,
            site_column=site_column,
            site_sample=site_sample,
            calibration=calibration,
            min_site_cases=min_site_cases,
            resamples=resamples,
            seed=seed,
            remedies_table=remedies_table,
            workdir=workdir,
        )
        return
    if out is None:
        raise EvaluationError("--out is required")
    if resamples < 1:
        raise EvaluationError("--resamples: at least 1 (0 only with --leave-one-site-out)")
    # Bad options, missing inputs and an unwritable --out are refused before any work,
    # and the output folder is made only once the inputs are known to be there.
    threshold_rule(rule)
    if model is not None or data is not None:
        if model is None or data is None:
            raise EvaluationError("--model and --data go together")
        if predictions is not None or labels is not None:
            raise EvaluationError("use either --model/--data or --predictions/--labels, not both")
    elif predictions is None or labels is None:
        raise EvaluationError("give --model and --data, or --predictions and --labels")
    for given in (data, predictions, labels, groups, thresholds):
        if given is not None and not given.exists():
            raise EvaluationError(f"{given}: no such file or folder")
    output_folder(out)

    if model is not None or data is not None:
        assert model is not None and data is not None
        from overread.inference.ct_evaluation import (
            evaluate_ct_package,
            is_ct_cohort,
            write_ct_report,
        )

        if is_ct_cohort(data):
            ct_metrics = evaluate_ct_package(model, data, resamples=resamples, seed=seed)
            ct_paths = write_ct_report(ct_metrics, out)
            if as_json:
                typer.echo(json.dumps(ct_metrics, indent=2))
            typer.echo(f"wrote {ct_paths[1]} and {ct_paths[0]}")
            return
        from overread.inference.planar_evaluation import (
            evaluate_planar_package,
            is_cxr_cohort,
            is_planar_package,
            write_planar_report,
        )

        if is_cxr_cohort(data) and is_planar_package(model):
            seg_metrics = evaluate_planar_package(model, data, resamples=resamples, seed=seed)
            seg_paths = write_planar_report(seg_metrics, out)
            if as_json:
                typer.echo(json.dumps(seg_metrics, indent=2))
            ci = seg_metrics["ci95"]
            typer.echo(
                f"{seg_metrics['images']} images, {seg_metrics['patients']} patients: "
                f"Dice {seg_metrics['dice']} {ci['dice']}, HD95 {seg_metrics['hd95_mm']} mm "
                f"{ci['hd95_mm']}, NSD {seg_metrics['nsd']} {ci['nsd']}"
            )
            typer.echo(f"wrote {seg_paths[1]} and {seg_paths[0]}")
            return
        inputs = cohort_inputs(model, data, tta_views=tta, mc_dropout=mc_dropout)
    elif predictions is not None and labels is not None:
        inputs = read_prediction_files(
            predictions, labels, groups, id_column=id_column, patient_column=patient_column
        )
    else:
        raise EvaluationError("give --model and --data, or --predictions and --labels")
    if thresholds is not None:
        try:
            given = json.loads(thresholds.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise EvaluationError(f"{thresholds}: cannot read thresholds JSON ({exc})") from None
        if not isinstance(given, dict) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in given.values()
        ):
            raise EvaluationError(f'{thresholds}: expected {{"label": threshold, ...}}')
        inputs.thresholds.update({str(k): float(v) for k, v in given.items()})
    names = [s.strip() for s in subgroups.split(",") if s.strip()]
    metrics = evaluate(
        inputs,
        subgroups=names,
        n_resamples=resamples,
        subgroup_resamples=subgroup_resamples,
        rule=rule,
        target=target,
        deployment_prevalence={label: prevalence for label in inputs.labels}
        if prevalence is not None
        else None,
        seed=seed,
    )
    other = None
    if compare is not None:
        if labels is None:
            raise EvaluationError(
                "--compare works with --predictions/--labels; use --compare-model with --data"
            )
        other = read_prediction_files(
            compare, labels, groups, id_column=id_column, patient_column=patient_column
        )
        compare_names = (predictions.name if predictions else "A", compare.name)
    elif compare_model is not None:
        if data is None or model is None:
            raise EvaluationError("--compare-model needs --model and --data")
        other = cohort_inputs(compare_model, data)
        compare_names = (model, compare_model)
    if other is not None:
        metrics["comparison"] = compare_models(
            inputs, other, metrics, names=compare_names, rule=rule, target=target
        )
    metrics_path, report_path = write_report(metrics, inputs, out)
    if as_json:
        typer.echo(json.dumps(json_safe(metrics), indent=2))
    else:
        mean = metrics["mean_auc"]
        typer.echo(
            f"{metrics['n_cases']} cases, {metrics['n_labels']} labels: mean AUC "
            f"{'undefined' if mean is None else f'{mean:.4f}'}"
        )
        for name, entry in metrics["labels"].items():
            if entry.get("auc") is None:
                typer.echo(f"  {name}: {entry.get('reason')}")
            else:
                lo, hi = entry["auc_ci"]
                typer.echo(f"  {name}: AUC {entry['auc']:.4f} ({lo:.4f}-{hi:.4f})")
        typer.echo(f"wrote {report_path} and {metrics_path}")
    if other is not None and not as_json:
        for name, entry in metrics["comparison"]["labels"].items():
            if "p" in entry:
                typer.echo(
                    f"  {name}: AUC difference {entry['difference']:+.4f} "
                    f"(p {entry['p']:.4g}, Holm {entry['p_adjusted']:.4g})"
                )
    for warning in metrics["warnings"]:
        typer.echo(f"warning: {warning}", err=True)
    if inputs.failed:
        typer.echo(f"{inputs.failed} image(s) could not be evaluated", err=True)
        raise typer.Exit(1)
