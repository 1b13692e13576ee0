"""``overread predict``: findings (and overlays) for DICOM, PNG or NIfTI files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from overread.cli.app import app
from overread.cli.options import output_folder, write_output
from overread.errors import OverreadError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from overread.inference.pipeline import Pipeline
    from overread.inference.result import Prediction
    from overread.results import FindingResult


#: The explanation methods (``overread.explain.EXPLAIN_METHODS``, named here so that
#: checking the option does not load torch).
_METHODS = ("cam", "gradcam", "gradcam++", "scorecam", "occlusion", "integrated-gradients")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _overlay_labels(prediction: Prediction) -> list[str]:
    """Labels worth an overlay: the positive ones, else the most probable one."""
    chosen = [f.label for f in prediction.findings if f.positive]
    if not chosen and prediction.findings:
        chosen = [max(prediction.findings, key=lambda f: f.probability).label]
    return chosen


def _write_overlays(prediction: Prediction, out: Path, index: int) -> list[str]:
    if prediction.heatmaps is None or prediction.model_input is None:
        return []
    from overread.explain.overlay import save_overlay

    stem = _slug(Path(prediction.path or "image").stem) or "image"
    written = []
    for label in _overlay_labels(prediction):
        target = out / f"{index:04d}_{stem}_{_slug(label)}.png"
        save_overlay(target, prediction.model_input, prediction.heatmaps[label])
        written.append(str(target))
    return written


@app.command("predict")
def predict_command(
    paths: list[Path] = typer.Argument(
        ..., help="DICOM/PNG/NIfTI files or folders (walked recursively)."
    ),
    model: str | None = typer.Option(
        None, "--model", "-m", help="Alias, name@version or package path."
    ),
    explain: bool = typer.Option(False, "--explain", help="Compute heatmaps (implied by --out)."),
    out: Path | None = typer.Option(
        None, "--out", help="Write results.json and PNG overlays here."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per input, per line."),
    runtime: str = typer.Option("onnx", "--runtime", help="onnx or torch."),
    precision: str = typer.Option(
        "auto", "--precision", help="auto (int8 if present), fp32 or int8."
    ),
    operating_point: str | None = typer.Option(
        None, "--operating-point", help="e.g. 'high sensitivity'."
    ),
    device: str | None = typer.Option(
        None, "--device", help="auto, cpu, cuda or cuda:N (default: the [inference] setting)."
    ),
    cam: str = typer.Option(
        "cam",
        "--cam",
        help="cam, gradcam, gradcam++, scorecam, occlusion or integrated-gradients.",
    ),
    tta: int | None = typer.Option(
        None,
        "--tta",
        min=1,
        help="Test-time augmentation views per image (1: none; default: the package's).",
    ),
    mc_dropout: int | None = typer.Option(
        None,
        "--mc-dropout",
        min=0,
        help="Monte Carlo dropout passes (torch network; refused without dropout).",
    ),
    trust: bool = typer.Option(
        True,
        "--trust/--no-trust",
        help="Explanation trust score of each positive or indeterminate finding "
        "(one extra forward pass per image).",
    ),
    analyse_anyway: bool = typer.Option(
        False,
        "--analyse-anyway",
        help="Analyse images the input gate refuses (marked outside the intended use).",
    ),
    pdf: Path | None = typer.Option(
        None,
        "--pdf",
        help="Also write the PDF report of the inputs (DICOM files of one study) to FILE.",
    ),
    site: str | None = typer.Option(
        None,
        "--site",
        help="Apply the package's calibration for this site (as the service would for a "
        "study from it); each result says which calibration it got.",
    ),
) -> None:
    """Run a model on images and print findings.

    Exit status 0 when every input was processed; 1 when some failed (each gets one
    line 'path: problem' on stderr, the others are still processed).
    """
    if cam not in _METHODS:
        raise typer.BadParameter(f"unknown CAM method {cam!r}", param_hint="--cam")
    # torch, MONAI and the imaging stack load here, not at CLI start.
    from overread.cli.predict_series import route_inputs, run_volume_model, skipped
    from overread.imaging.inspection import iter_files
    from overread.inference.pipeline import Pipeline, open_pipeline

    files = list(iter_files(paths))
    if model is None:
        # Grouped into series and routed as the service routes them.
        groups = dict(route_inputs(files).by_model)
    else:
        groups = {model: [f for f in files if not skipped(f)]}
    failures = 0
    results: list[dict[str, object]] = []
    classified: tuple[Pipeline, list[Prediction]] | None = None
    pipelines = [
        (
            alias,
            members,
            open_pipeline(
                alias,
                runtime=runtime,
                precision=precision,
                tta_views=tta,
                mc_dropout=mc_dropout,
                device=device,
            ),
        )
        for alias, members in groups.items()
        if members
    ]
    if operating_point is not None:
        for _, _, opened in pipelines:  # an unknown point: refused before any work
            opened.package.thresholds(operating_point)
    if out is not None:  # a folder that cannot be written: refused before any work
        output_folder(out)
    for alias, members, opened in pipelines:
        if not isinstance(opened, Pipeline):
            records, failed = run_volume_model(
                alias,
                members,
                out,
                as_json=as_json,
                device=device,
                operating_point=operating_point,
            )
            results.extend(records)
            failures += failed
            continue
        predictions, records, failed = _classify(
            opened,
            members,
            out=out,
            explain=explain or out is not None or pdf is not None,
            cam=cam,
            operating_point=operating_point,
            trust=trust,
            analyse_anyway=analyse_anyway,
            as_json=as_json,
            site=site,
        )
        classified = (opened, predictions)
        results.extend(records)
        failures += failed
    if out is not None:
        write_output(out / "results.json", json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    if pdf is not None:
        try:
            if classified is None:
                raise OverreadError("no image was read by a chest X-ray model")
            _write_pdf_report(*classified, pdf)
        except (OverreadError, OSError, ValueError) as exc:
            typer.echo(f"error: --pdf {pdf}: {exc}", err=True)
            raise typer.Exit(1) from None
        if not as_json:
            typer.echo(f"PDF report: {pdf}")
    if failures:
        raise typer.Exit(1)


def _classify(
    pipeline: Pipeline,
    files: Sequence[Path],
    *,
    out: Path | None,
    explain: bool,
    cam: str,
    operating_point: str | None,
    trust: bool,
    analyse_anyway: bool,
    as_json: bool,
    site: str | None = None,
) -> tuple[list[Prediction], list[dict[str, object]], int]:
    """A classifier on each file: predictions, result records, failures."""
    if not pipeline.package.manifest.trained:
        typer.echo(
            f"warning: model {pipeline.model.name} {pipeline.model.version} is an untrained "
            "placeholder; its findings carry no meaning",
            err=True,
        )
    predictions = pipeline.predict(
        list(files),
        explain=explain,
        cam_method=cam,  # type: ignore[arg-type]
        operating_point=operating_point,
        trust=trust,
        override_gate=analyse_anyway,
    )
    calibration = None
    if site is not None:
        from overread.inference.site_calibration import apply_site_calibration

        calibration = apply_site_calibration(
            predictions, pipeline.package, site, source="--site"
        ).to_dict()
        if not as_json:
            how = calibration.get("package_site") or calibration.get("reason", "")
            typer.echo(f"calibration: {calibration['calibration']} ({how})")
    failures = 0
    results: list[dict[str, object]] = []
    for index, prediction in enumerate(predictions):
        record = prediction.to_dict()
        if calibration is not None:
            record["calibration"] = calibration
        if out is not None and prediction.ok:
            record["overlays"] = _write_overlays(prediction, out, index)
        results.append(record)
        if not prediction.ok:
            failures += 1
            typer.echo(f"{prediction.path}: {prediction.error}", err=True)
        if as_json:
            typer.echo(json.dumps(record, ensure_ascii=False))
        elif prediction.ok:
            overlays = record.get("overlays", [])
            _print_findings(prediction, overlays if isinstance(overlays, list) else [])
    return list(predictions), results, failures


def _write_pdf_report(pipeline: Pipeline, predictions: Sequence[Prediction], target: Path) -> None:
    """The study's PDF report, as the gateway sends it, written to ``target``.

    Inputs that are not DICOM (or could not be read) are left out: the report names
    the patient and study from the DICOM headers.
    """
    from overread.config import load_settings
    from overread.imaging import read_dataset
    from overread.models.card import ModelCardSummary
    from overread.service.outputs import image_label, overlay_labels, render_report_pdf
    from overread.service.outputs.overlay import render_overlay
    from overread.service.outputs.pdf import OverlayThumbnail, ReportContext
    from overread.triage import TriageConfig, critical_findings

    readings = []
    for prediction in predictions:
        refused = prediction.gate is not None and prediction.gate.refused
        if prediction.path is None or not (prediction.ok or refused):
            continue
        try:
            readings.append((prediction, read_dataset(prediction.path, pixels=prediction.ok)))
        except (OverreadError, OSError):
            continue
    if not readings:
        raise OverreadError("no DICOM input was read; the report needs a patient and a study")
    studies = {str(ds.get("StudyInstanceUID", "")) for _, ds in readings}
    if len(studies) != 1:
        raise OverreadError(f"the inputs span {len(studies)} studies; a report covers one")
    alerts = TriageConfig.model_validate(load_settings().triage).alerts
    usable = [(p, ds) for p, ds in readings if p.ok]
    critical = {
        label
        for prediction, _ in usable
        for label, _, _ in critical_findings(prediction.findings, alerts)
    }
    thumbnails = [
        OverlayThumbnail(
            prediction.finding(label),
            image_label(source, index, len(usable)),
            render_overlay(prediction, source, label, max_dimension=512).rgb,
        )
        for index, (prediction, source) in enumerate(usable)
        if prediction.heatmaps
        for label in overlay_labels(prediction)
    ]
    context = ReportContext(
        card=ModelCardSummary.from_package(pipeline.package),
        critical=frozenset(critical),
        thumbnails=thumbnails,
    )
    document = render_report_pdf([p for p, _ in readings], readings[0][1], context)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(document)


def _uncertainty_text(finding: FindingResult) -> str:
    parts = []
    if finding.entropy is not None:
        parts.append(f"H {finding.entropy:.2f}")
    if finding.mutual_information is not None:
        parts.append(f"MI {finding.mutual_information:.3f}")
    if finding.conformal_set is not None:
        parts.append(f"set {finding.conformal_set}")
    return ("  " + "  ".join(parts)) if parts else ""


def _print_findings(prediction: Prediction, overlays: list[str]) -> None:
    from overread.results import Decision

    # How the text output names each decision (a close call is for a reader: "refer").
    spoken = {
        Decision.POSITIVE: "positive",
        Decision.INDETERMINATE: "refer",
        Decision.NEGATIVE: "negative",
    }
    model = prediction.model
    positives = [f.label for f in prediction.findings if f.decision is Decision.POSITIVE]
    refer = [f.label for f in prediction.findings if f.decision is Decision.INDETERMINATE]
    typer.echo(
        f"{prediction.path}  [{model.name} {model.version} {model.runtime}/{model.precision}]"
    )
    gate = prediction.gate
    if gate is not None:
        score = "" if gate.ood_score is None else f" (score {gate.ood_score:.2f})"
        typer.echo(
            f"  input gate: {gate.status}{score}" + (f": {gate.reason}" if gate.reason else "")
        )
    if prediction.outside_intended_use:
        typer.echo(
            "  OUTSIDE THE MODEL'S INTENDED USE: analysed although the input gate refused it"
        )
    typer.echo(f"  positive: {', '.join(positives) or 'none'}; refer: {', '.join(refer) or 'none'}")
    for finding in prediction.findings:
        trust = "" if finding.trust_score is None else f"  trust {finding.trust_score:.2f}"
        typer.echo(
            f"  {finding.label:<28} p={finding.probability:.3f}  t={finding.threshold:.2f}  "
            f"{spoken[finding.decision]:<8} proximity {finding.threshold_proximity or 0.0:.2f}"
            + _uncertainty_text(finding)
            + trust
        )
    for overlay in overlays:
        typer.echo(f"  overlay: {overlay}")
