"""``overread explain``: compare explanation methods of a model on a phantom cohort."""

from __future__ import annotations

import json
import time
from pathlib import Path

import typer

from overread.cli.app import app
from overread.cli.options import output_folder

#: The method names (``overread.explain.EXPLAIN_METHODS``, named here so that
#: checking the option does not load torch).
_METHODS = ("cam", "gradcam", "gradcam++", "scorecam", "occlusion", "integrated-gradients")


def _methods(text: str) -> list[str]:
    names = [name.strip().lower() for name in text.split(",") if name.strip()]
    if not names:
        raise typer.BadParameter("give at least one method", param_hint="--method")
    for name in names:
        if name not in _METHODS:
            raise typer.BadParameter(
                f"unknown method {name!r}; known: {', '.join(_METHODS)}", param_hint="--method"
            )
    return list(dict.fromkeys(names))


@app.command("explain")
def explain_command(
    model: str | None = typer.Option(
        None, "--model", "-m", help="Alias, name@version or package path (as for predict)."
    ),
    data: Path = typer.Option(
        ..., "--data", help="Phantom cohort directory (with ground_truth.json)."
    ),
    method: str = typer.Option(
        "gradcam,gradcam++,scorecam",
        "--method",
        help="Comma-separated: cam, gradcam, gradcam++, scorecam, occlusion, integrated-gradients.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Write explanations.json, explanations.md, overlays and curves here."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the report as one JSON object."),
    limit: int | None = typer.Option(
        None, "--limit", "--n", min=1, help="Use only the first N images of the cohort."
    ),
    steps: int = typer.Option(10, "--steps", min=2, help="Steps of the deletion/insertion curves."),
    sanity_images: int = typer.Option(
        10, "--sanity-images", min=0, help="Images for the weight-randomisation check."
    ),
    target_layer: str | None = typer.Option(
        None, "--target-layer", help="Layer the layer methods hook, e.g. features.3."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of random maps, tie order and noise."),
) -> None:
    """Measure explanation methods against ground-truth masks and for faithfulness.

    Prints a table of the methods (pointing game, mask IoU, deletion and insertion
    AUC, ROAD, randomisation rank correlation, milliseconds per image); with --json
    stdout carries exactly one JSON object and progress goes to stderr.
    """
    names = _methods(method)
    from overread.errors import EvaluationError
    from overread.inference.explanation_report import comparison_table, write_study
    from overread.inference.explanation_study import read_cohort, run_explanation_study
    from overread.inference.pipeline import Pipeline

    read_cohort(data)  # a missing or broken cohort fails before the model loads
    # fp32: the perturbed images are scored by the same model the maps explain.
    pipeline = Pipeline.from_name(model, precision="fp32")
    if target_layer is not None:
        try:
            pipeline.network.get_submodule(target_layer)
        except AttributeError:
            raise EvaluationError(f"{pipeline.model.name} has no layer {target_layer!r}") from None
    if out is not None:
        output_folder(out)
    started = time.perf_counter()
    study = run_explanation_study(
        pipeline,
        data,
        names,
        limit=limit,
        steps=steps,
        sanity_images=sanity_images,
        target_layer=target_layer,
        seed=seed,
        progress=lambda line: typer.echo(line, err=True),
    )
    study.report["seconds"] = round(time.perf_counter() - started, 1)
    if out is not None:
        written = write_study(study, out)
        typer.echo(f"wrote {len(written)} files to {out}", err=True)
    if as_json:
        typer.echo(json.dumps(study.report))
        return
    images = study.report["images"]
    typer.echo(
        f"{pipeline.model.name} {pipeline.model.version} on {data}: {images['explained']} images, "
        f"{study.report['findings']} findings with masks, {study.report['seconds']:.0f} s"
    )
    typer.echo(comparison_table(study.report))
