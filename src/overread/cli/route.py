"""``overread route``: the routing rules in force, and why a study goes where it goes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from overread.cli.app import app
from overread.cli.options import service_settings

if TYPE_CHECKING:
    from overread.service.config import Route, ServiceConfig
    from overread.service.routing import InstanceFacts, RouteExplanation, Router


def _files(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        else:
            yield path


def _rule_line(route: Route) -> str:
    conditions = [
        f"{name}={','.join(values)}"
        for name in ("modality", "body_part", "view_position", "sop_class_uid", "calling_ae")
        if (values := getattr(route, name)) is not None
    ]
    if route.institution is not None:
        conditions.append(f"institution={','.join(route.institution)}")
    if route.series_description is not None:
        conditions.append(f"series_description=/{route.series_description}/")
    destinations = (
        "every destination"
        if route.destinations is None
        else ", ".join(route.destinations) or "no destination"
    )
    flags = " (fallback)" if route.fallback else ""
    return (
        f"{route.name}{flags} [priority {route.priority}]: "
        f"{' '.join(conditions) or 'every study'} -> {', '.join(route.models)} -> {destinations}"
    )


def _study_json(
    uid: str, labels: list[str], facts: list[InstanceFacts], router: Router, config: ServiceConfig
) -> dict[str, Any]:
    explanations = router.explain(facts, labels)
    return {
        "study_instance_uid": uid,
        "instances": labels,
        "routes": [e.to_dict() for e in explanations],
        "plan": [
            {
                "model": p.model,
                "priority": p.priority,
                "routes": p.routes,
                "destinations": (
                    [d.name for d in config.destinations]
                    if p.destinations is None
                    else sorted(p.destinations)
                ),
            }
            for p in router.plan(facts)
        ],
    }


def _print_study(study: dict[str, Any], explanations: list[RouteExplanation]) -> None:
    typer.echo(f"study {study['study_instance_uid']} ({len(study['instances'])} instance(s))")
    for explanation in explanations:
        mark = "applies" if explanation.applied else "skipped"
        typer.echo(f"  {mark:7} {explanation.route}: {explanation.note}")
        for label, checks in explanation.instances:
            shown = checks if explanation.matched else [c for c in checks if not c.satisfied]
            if explanation.matched and not all(c.satisfied for c in checks):
                continue  # another instance is the one that matched
            if shown:
                typer.echo(f"          {label}: " + "; ".join(c.reason for c in shown))
    if not study["plan"]:
        typer.echo("  plan: no rule applies; the study is stored and no model runs")
    for planned in study["plan"]:
        destinations = ", ".join(planned["destinations"]) or "no destination"
        typer.echo(
            f"  plan: {planned['model']} (priority {planned['priority']}, "
            f"from {', '.join(planned['routes'])}) -> {destinations}"
        )


@app.command("route")
def route(
    explain: list[Path] = typer.Option(
        [],
        "--explain",
        help="DICOM file or folder: say which rules match its studies and why (repeatable).",
    ),
    calling_ae: str = typer.Option(
        "", "--calling-ae", help="The calling AE title to assume for the files (default none)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object on stdout."),
) -> None:
    """Show the routing rules in force (overread.toml / OVERREAD_CONFIG), or explain them.

    Without --explain, lists the rules in the order they are evaluated. With it, reads
    each file's header as ingest would and prints, per study, every rule with the
    conditions that held or failed, and the models and destinations that would run.
    Unreadable files get one error line each; the others are still explained.
    """
    from overread.errors import OverreadError
    from overread.imaging import read_instance
    from overread.service.routing import InstanceFacts, Router

    config = service_settings(None, None)
    router = Router(config.routes, config.routing)
    if not explain:
        if as_json:
            rules = [r.model_dump(mode="json") for r in router.routes]
            typer.echo(json.dumps({"routing": config.routing.value, "routes": rules}, indent=2))
            return
        typer.echo(f"routing: {config.routing.value} (rules in evaluation order)")
        for rule in router.routes:
            typer.echo(f"  {_rule_line(rule)}")
        return

    studies: dict[str, tuple[list[str], list[InstanceFacts]]] = {}
    errors: list[str] = []
    for path in _files(explain):
        try:
            header = read_instance(path.read_bytes(), source=str(path))
        except (OSError, OverreadError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            errors.append(f"{path}: {reason}")
            typer.echo(f"error: {path}: {reason}", err=True)
            continue
        labels, facts = studies.setdefault(header.study_instance_uid or "", ([], []))
        labels.append(path.name)
        facts.append(InstanceFacts.of_header(header, calling_ae=calling_ae))
    if not studies:
        typer.echo("error: no readable DICOM file among the paths given", err=True)
        raise typer.Exit(2)
    results = [
        _study_json(uid, labels, facts, router, config) for uid, (labels, facts) in studies.items()
    ]
    if as_json:
        typer.echo(
            json.dumps(
                {"routing": config.routing.value, "studies": results, "errors": errors}, indent=2
            )
        )
    else:
        typer.echo(f"routing: {config.routing.value}")
        for uid, study in zip(studies, results, strict=True):
            labels, facts = studies[uid]
            _print_study(study, router.explain(facts, labels))
    if errors:
        raise typer.Exit(1)
