"""``overread predict`` without ``--model``: DICOM input grouped into series and routed.

Each series is routed by the service's rules (``overread route`` shows them) as if
it had been received: CT series go to the CT package, chest radiographs to the
chest X-ray one; a series no rule matches goes to the default model, as a
``predict`` without ``--model`` always did. Files that are not images to analyse
(``.json``, ``.nii``, ``.nii.gz`` - a phantom's ground truth, say) are skipped; other
non-DICOM files (PNG) go to the default model.

A volumetric package writes, per series, its SEG (segmentation) and its TID 1500 SR
as ``.dcm`` files under ``--out``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer

from overread.errors import OverreadError

#: Ground-truth and side files a folder of series may hold: never inputs.
SKIPPED_SUFFIXES = (".json", ".nii", ".nii.gz", ".csv", ".txt", ".md")


def skipped(path: Path) -> bool:
    """Whether ``path`` is a side file (ground truth, notes) rather than an input."""
    name = path.name.lower()
    return any(name.endswith(suffix) for suffix in SKIPPED_SUFFIXES)


@dataclass
class RoutedInputs:
    """The inputs grouped by the model that reads them, each in the order given."""

    by_model: dict[str, list[Path]] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)


def route_inputs(files: list[Path]) -> RoutedInputs:
    """Group files by series and route each series (see the module)."""
    from overread.cli.options import service_settings
    from overread.config import load_settings
    from overread.imaging import read_instance
    from overread.service.routing import InstanceFacts, Router

    default = load_settings().default_model
    config = service_settings(None, None)
    router = Router(config.routes, config.routing)
    routed = RoutedInputs()
    series: dict[str, list[tuple[Path, InstanceFacts]]] = defaultdict(list)
    models: dict[Path, list[str]] = {}
    for path in files:
        if skipped(path):
            routed.skipped.append(path)
            continue
        try:
            header = read_instance(path.read_bytes(), source=str(path))
        except (OSError, OverreadError):
            models[path] = [default]  # not DICOM (or unreadable): the default model says why
            continue
        uid = header.series_instance_uid or f"(no series) {path}"
        series[uid].append((path, InstanceFacts.of_header(header)))
    for members in series.values():
        plan = [planned.model for planned in router.plan([facts for _, facts in members])]
        for path, _ in members:
            models[path] = plan or [default]
    for path in files:
        for model in models.get(path, []):
            routed.by_model.setdefault(model, []).append(path)
    return routed


def run_volume_model(
    alias: str,
    files: list[Path],
    out: Path | None,
    *,
    as_json: bool,
    device: str | None = None,
    operating_point: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """Run a volumetric package on its series (on ``device``: auto, cpu, cuda or
    cuda:N; default the ``[inference]`` setting) at its default operating point or at
    ``operating_point`` (an unknown one is refused before any series is read); write SEG
    and SR under ``out``.

    Returns the result records and the number of series that failed.
    """
    from overread.inference import open_pipeline
    from overread.service.outputs.volume import build_volume_outputs

    pipeline: Any = open_pipeline(alias, device=device)
    records: list[dict[str, Any]] = []
    failures = 0
    baseline = bool(pipeline.package.manifest.metrics.get("baseline"))
    planar = bool(getattr(pipeline, "planar", False))
    for output in pipeline.predict_series(files, operating_point=operating_point):
        prediction = output.prediction
        record = prediction.to_dict()
        if not prediction.ok:
            failures += 1
            typer.echo(f"{prediction.path}: {prediction.error}", err=True)
            records.append(record)
            continue
        written: list[str] = []
        if out is not None:
            folder = out / _series_folder(prediction)
            if planar:  # a radiograph series may hold several images: one folder each
                folder = folder / str(getattr(prediction.metadata, "sop_instance_uid", "image"))
            folder.mkdir(parents=True, exist_ok=True)
            for dataset in build_volume_outputs(
                prediction,
                output.source_datasets(),
                output.label_map,
                output.labels,
                baseline=baseline,
                planar=planar,
            ):
                target = folder / f"{pipeline.model.name}-{dataset.Modality}.dcm"
                dataset.save_as(target, enforce_file_format=True)
                written.append(str(target))
        record["outputs"] = written
        records.append(record)
        if as_json:
            typer.echo(json.dumps(record, ensure_ascii=False))
        else:
            print_volume(prediction, written, label_map=output.label_map if planar else None)
    return records, failures


def _series_folder(prediction: Any) -> str:
    uid = getattr(prediction.metadata, "series_instance_uid", None)
    return str(uid or "series")


def print_volume(prediction: Any, written: list[str], *, label_map: Any = None) -> None:
    """The text form of one series' result (``label_map``: a radiograph's mask)."""
    from overread.inference.nodules import growth_text

    model = prediction.model
    regions = prediction.regions or []
    typer.echo(f"{prediction.path}  [{model.name} {model.version} {prediction.task}]")
    for warning in prediction.warnings:
        typer.echo(f"  warning: {warning}")
    if label_map is not None:
        for value, finding in enumerate(prediction.findings, start=1):
            share = float((label_map == value).mean())
            typer.echo(f"  {finding.label}: {100 * share:.1f}% of the image")
        for path in written:
            typer.echo(f"  wrote: {path}")
        return
    typer.echo(f"  nodules: {len(regions) or 'none'}")
    for finding in prediction.findings:
        # The study-level finding's decision: "none" above can be an unmeasured
        # candidate at or above the operating point (INDETERMINATE, a reader must look).
        typer.echo(
            f"  {finding.label}: {finding.decision.value} "
            f"(score {finding.probability:.3f}, operating point {finding.operating_point})"
        )
    for r in regions:
        x0, y0, z0, x1, y1, z1 = r.box_mm
        typer.echo(
            f"  #{r.index} {r.longest_diameter_mm:5.1f} mm  {r.volume_mm3:8.1f} mm3  "
            f"{r.mean_hu:7.1f} HU  {r.density:<12} category {r.category}  "
            f"score {r.score:.2f}  growth {growth_text(r.growth)}  "
            f"box ({x0:.1f}, {y0:.1f}, {z0:.1f})-({x1:.1f}, {y1:.1f}, {z1:.1f}) mm"
        )
    for path in written:
        typer.echo(f"  wrote: {path}")


__all__ = ["SKIPPED_SUFFIXES", "RoutedInputs", "route_inputs", "run_volume_model", "skipped"]
