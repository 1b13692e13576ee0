"""``overread models``: list, show, verify and import model packages; manage aliases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from overread.cli.app import app
from overread.cli.options import output_file, write_output

if TYPE_CHECKING:
    from overread.models.package import ModelPackage
    from overread.models.registry import Registry
    from overread.service.db import Database
    from overread.service.rollout import ModelRollouts

models_app = typer.Typer(help="Model packages and the registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def _registry() -> Registry:
    # The registry loads packages with torch: import it when a command runs.
    from overread.models.registry import Registry

    return Registry.from_settings()


@models_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List imported and bundled packages and the aliases pointing at them."""
    registry = _registry()
    aliases = registry.aliases()
    rows = []
    for entry in registry.entries():
        ref = f"{entry.name}@{entry.version}"
        rows.append(
            {
                "name": entry.name,
                "version": entry.version,
                "source": entry.source,
                "trained": entry.trained,
                "calibrated": entry.calibrated,
                "path": str(entry.path),
                "aliases": sorted(a for a, target in aliases.items() if target == ref),
            }
        )
    if as_json:
        typer.echo(json.dumps({"models": rows, "aliases": aliases}, indent=2))
        return
    if not rows:
        typer.echo("no model packages found")
    for row in rows:
        flags = [str(row["source"])]
        if not row["trained"]:
            flags.append("UNTRAINED")
        if not row["calibrated"]:
            flags.append("UNCALIBRATED")
        names = [str(a) for a in row["aliases"]]  # type: ignore[attr-defined]
        alias_text = f"  aliases: {', '.join(names)}" if names else ""
        typer.echo(
            f"{row['name']} {row['version']}  [{', '.join(flags)}]  {row['path']}{alias_text}"
        )


@models_app.command("show")
def show_model(
    ref: str = typer.Argument(..., help="Alias, name, name@version or package path."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest (plus 'path') as JSON."),
) -> None:
    """Show a package's manifest (without loading its weights)."""
    from overread.models.registry import manifest_of

    registry = _registry()
    path = registry.resolve(ref)
    manifest = manifest_of(path) if path.is_dir() else registry.load(ref).manifest
    if as_json:
        data = manifest.model_dump(mode="json")
        data["path"] = str(path.resolve())
        data["sha256"] = manifest.content_sha256()
        typer.echo(json.dumps(data, indent=2, ensure_ascii=False))
        return
    typer.echo(f"{manifest.name} {manifest.version}  ({manifest.task.value})")
    typer.echo(f"  path: {path.resolve()}")
    typer.echo(f"  sha256: {manifest.content_sha256()}")
    if not manifest.trained:
        typer.echo("  UNTRAINED placeholder: findings carry no meaning")
    if manifest.onboarded is not None:
        o = manifest.onboarded
        typer.echo(
            f"  onboarded from {o.source} ({o.format.value}{', ' + o.layout if o.layout else ''}; "
            f"outputs {o.outputs.value}{' inferred' if o.outputs_inferred else ''})"
        )
        if not o.calibrated:
            typer.echo("  UNCALIBRATED: every threshold 0.5 until `overread models calibrate`")
    typer.echo(f"  intended use: {manifest.intended_use}")
    typer.echo(
        f"  architecture: {manifest.architecture}  input {manifest.input.size}px x {manifest.input.channels}"
    )
    accepts = manifest.accepts
    typer.echo(
        f"  accepts: modality {', '.join(accepts.modalities) or 'any'}; "
        f"view {', '.join(accepts.view_positions) or 'any'}"
    )
    runtime = manifest.runtime
    files = [f for f in (runtime.torch_state_dict, runtime.onnx_fp32, runtime.onnx_int8) if f]
    typer.echo(f"  runtime files: {', '.join(files) or 'none'}")
    if manifest.ensemble is not None:
        members = ", ".join(
            f"{m.name} {m.version} ({m.sha256[:12]})" for m in manifest.ensemble.members
        )
        typer.echo(f"  ensemble of: {members}")
    if manifest.uncertainty is not None:
        u = manifest.uncertainty
        typer.echo(
            f"  uncertainty: {u.tta_views} TTA view(s), {u.mc_dropout_passes} dropout pass(es)"
        )
    if manifest.conformal is not None:
        c = manifest.conformal
        typer.echo(
            f"  conformal: alpha {c.alpha:g}, {c.method}, calibrated on {c.n} images"
            f" ({c.calibration.get('cohort', 'cohort not recorded')})"
        )
    typer.echo(f"  labels ({len(manifest.labels)}):")
    for label in manifest.labels:
        points = manifest.operating_points.get(label.name, {})
        point_text = ", ".join(f"{k} {v:g}" for k, v in sorted(points.items()))
        code_text = "; ".join(f"{c.scheme} {c.value}" for c in label.codes)
        typer.echo(f"    {label.name}: {point_text}" + (f"  [{code_text}]" if code_text else ""))


@models_app.command("verify")
def verify_model(
    ref: str = typer.Argument(..., help="Alias, name, name@version or package path."),
) -> None:
    """Verify every checksum and the signature; exit 1 on any mismatch."""
    from overread.models.package import verify_package
    from overread.models.registry import manifest_of

    registry = _registry()
    path = registry.resolve(ref)
    if path.is_file():
        try:
            package = registry.load(ref)
        except Exception as exc:
            typer.echo(f"{path}: {exc}", err=True)
            raise typer.Exit(1) from None
        path = package.path
    problems = verify_package(path, key=registry.key)
    if problems:
        for problem in problems:
            typer.echo(problem, err=True)
        raise typer.Exit(1)
    manifest = manifest_of(path)
    note = "" if manifest.calibrated else "; UNCALIBRATED onboarded model: every threshold 0.5"
    typer.echo(
        f"{manifest.name} {manifest.version}: ok ({len(manifest.files)} files, "
        f"sha256 {manifest.content_sha256()}){note}"
    )


@models_app.command("ct-operating-points")
def ct_operating_points_command(
    data: Path = typer.Option(
        ..., "--data", help="A TRAINING phantom CT cohort (overread phantom ct), never a test one."
    ),
    model: str = typer.Option("ct-nodule-cad", "--model", help="A blob-cad package."),
    write: Path | None = typer.Option(
        None, "--write", help="Package directory to set them in (hashed and signed again)."
    ),
    cohort: str = typer.Option(
        "", "--cohort", help="How the cohort was made, recorded in the manifest and card."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Choose a nodule CAD's operating points on a tuning cohort's FROC: half way between
    the lowest score with at most 1 false positive per scan (balanced), 4 (high
    sensitivity), and the next lower score."""
    from overread.errors import ConfigError
    from overread.inference.ct_evaluation import _nodule_points, fit_operating_points
    from overread.training.ct_cad import check_cad_target, write_operating_points
    from overread.training.ct_eval import cohort_nodules, figures_at

    # Everything checked before the minutes of evaluation.
    if cohort_nodules(data) == 0:
        raise ConfigError(f"--data {data}: the cohort has no nodules; its FROC chooses no point")
    registry = _registry()
    package = registry.load(model)
    if not _nodule_points(package):
        raise ConfigError(
            f"--model {model}: {package.name} {package.version} is not a blob-cad package "
            "(no nodule operating points to choose)"
        )
    if write is not None:
        target = check_cad_target(write)
        if (target.name, target.version, target.content_sha256()) != (
            package.name,
            package.version,
            package.sha256,
        ):
            raise ConfigError(
                f"--write {write}: holds {target.name} {target.version}, not the evaluated "
                f"--model {model} ({package.name} {package.version} at {package.path})"
            )
    points, metrics = fit_operating_points(str(package.path), data)
    figures = {name: figures_at(metrics["detection"], t) for name, t in points.items()}
    if write is not None:
        write_operating_points(
            write,
            points,
            cohort=cohort or f"{metrics['cases']} cases of {data.name}",
            metrics=metrics,
            key=registry.key,
        )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "cases": metrics["cases"],
                    "nodules": metrics["nodules"],
                    "score_floor": metrics.get("score_floor"),
                    "operating_points": figures,
                },
                indent=2,
            )
        )
        return
    for name, f in figures.items():
        typer.echo(
            f"{name}: score >= {f['threshold']:.4f}  sensitivity {f['sensitivity']:.3f}  "
            f"{f['fp_per_scan']:.2f} FP/scan  ({metrics['cases']} cases, {metrics['nodules']} nodules)"
        )
    if write is not None:
        typer.echo(f"wrote them to {write}/manifest.json (signed again)")


@models_app.command("import")
def import_model(source: Path = typer.Argument(..., help="Package directory or .zip.")) -> None:
    """Verify a package and copy it into the registry as <name>/<version>."""
    from overread.models.registry import manifest_of

    target = _registry().import_package(source)
    manifest = manifest_of(target)
    typer.echo(f"imported {manifest.name} {manifest.version} -> {target}")


def _operator() -> str:
    import getpass

    try:
        return f"os:{getpass.getuser()}"
    except (KeyError, OSError):
        return "os:unknown"


def _database() -> Database:
    """The gateway's database (rollout state, cohorts, audit log), from the settings."""
    from overread.cli.options import service_settings
    from overread.service.db import Database

    return Database(service_settings(None, None).database_url)


def _rollouts(registry: Registry | None = None) -> ModelRollouts:
    from overread.service.rollout import ModelRollouts

    return ModelRollouts(registry or _registry(), _database())


@models_app.command("alias")
def set_alias(
    alias: str = typer.Argument(..., help="Alias name, e.g. cxr-default or chest."),
    ref: str = typer.Argument(..., help="Target: name@version or name."),
    shadow: bool = typer.Option(
        False, "--shadow", help="Run REF beside the active version; store, never send."
    ),
    canary: float | None = typer.Option(
        None, "--canary", help="Send REF's results for this share (0-1] of studies."
    ),
    min_studies: int = typer.Option(5, "--min-studies", help="Canary studies before judging."),
    max_failure_rate: float = typer.Option(0.2, "--max-failure-rate"),
    max_positive_increase: float = typer.Option(
        0.25, "--max-positive-increase", help="Positive-finding rate above the active's."
    ),
    max_critical_increase: float = typer.Option(
        0.1, "--max-critical-increase", help="Critical-finding study rate above the active's."
    ),
    max_refusal_increase: float = typer.Option(
        0.1, "--max-refusal-increase", help="Gate refusal rate above the active's."
    ),
    max_latency_ratio: float = typer.Option(3.0, "--max-latency-ratio"),
    gate: bool = typer.Option(
        True, "--gate/--no-gate", help="Promotion: pass the registered test cohorts first."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Point an alias at a version (promotion, through the release gate when test
    cohorts are registered), or start a shadow or canary of it (a running service
    follows without restart)."""
    from overread.errors import ConfigError
    from overread.service.rollout import CanaryBounds, RolloutState

    if shadow and canary is not None:
        raise ConfigError("--shadow and --canary exclude each other")
    registry = _registry()
    if shadow or canary is not None:
        bounds = CanaryBounds(
            min_studies=min_studies,
            max_failure_rate=max_failure_rate,
            max_positive_rate_increase=max_positive_increase,
            max_critical_rate_increase=max_critical_increase,
            max_refusal_rate_increase=max_refusal_increase,
            max_latency_ratio=max_latency_ratio,
        )
        state = RolloutState.SHADOW if shadow else RolloutState.CANARY
        rollout = _rollouts(registry).start(
            alias, ref, state, actor=_operator(), canary_share=canary or 0.0, bounds=bounds
        )
        if as_json:
            typer.echo(json.dumps(rollout.to_dict()))
            return
        share = f" on {rollout.canary_share:.1%} of studies" if canary is not None else ""
        typer.echo(
            f"{alias}: {rollout.candidate_ref} in {rollout.state.value}{share} "
            f"beside {rollout.active_ref}"
        )
        return
    from overread.service.release_gate import promote

    typer.echo(
        f"promoting {ref} on {alias} (release gate when test cohorts are registered)", err=True
    )
    outcome = promote(_rollouts(registry), alias, ref, actor=_operator(), gate=gate)
    if outcome.decision is not None:
        for check in outcome.decision.checks:
            if not check.passed:
                typer.echo(f"  FAILED {check.cohort}: {check.check} {check.figures}", err=True)
        for problem in outcome.decision.problems:
            typer.echo(f"  FAILED: {problem}", err=True)
    if as_json:
        typer.echo(json.dumps(outcome.to_dict()))
    if not outcome.promoted:
        typer.echo(f"error: {ref} did not pass the release gate; {alias} unchanged", err=True)
        raise typer.Exit(1)
    if not as_json:
        typer.echo(f"{alias} -> {outcome.target}")


@models_app.command("rollback")
def rollback_alias(
    alias: str = typer.Argument(..., help="Alias to roll back."),
    reason: str = typer.Option("", "--reason", help="Why (kept in the audit log)."),
) -> None:
    """End the alias's shadow or canary (the active version stays); with none, point
    the alias back at the version it named before."""
    target = _rollouts().rollback(alias, actor=_operator(), reason=reason)
    typer.echo(f"{alias} -> {target}")


@models_app.command("rollouts")
def list_rollouts(
    alias: str | None = typer.Argument(None, help="One alias (default: every one)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Each alias's rollout: state, versions, canary share and its figures so far."""
    rollouts = _rollouts()
    rows = []
    for rollout in rollouts.store.all():
        if alias is not None and rollout.alias != alias:
            continue
        row = rollout.to_dict()
        if rollout.state.value == "canary":
            row["figures"] = rollouts.store.figures(rollout).to_dict()
        rows.append(row)
    if as_json:
        typer.echo(json.dumps({"rollouts": rows, "kill_switches": rollouts.store.kill_switches()}))
        return
    if not rows:
        typer.echo("no rollouts")
    for row in rows:
        share = f" {row['canary_share']:.1%}" if row["state"] == "canary" else ""
        typer.echo(
            f"{row['alias']}: {row['state']}{share}  active {row['active']}  "
            f"candidate {row['candidate']}  since {row['started_at']}"
            + (f"  ({row['reason']})" if row["reason"] else "")
        )
        figures = row.get("figures")
        if isinstance(figures, dict):
            typer.echo(f"  breaches: {', '.join(figures['breaches']) or 'none'}")


@models_app.command("compare")
def compare_models(
    alias: str = typer.Argument(..., help="Alias in (or after) a shadow or canary."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """The candidate's readings against the active's on the studies both read:
    agreement and McNemar per label, AUCs and DeLong where readers gave labels."""
    from overread.errors import ConfigError
    from overread.service.rollout_compare import compare_rollout

    store = _rollouts().store
    rollout = store.current(alias)
    if rollout is None:
        raise ConfigError(f"alias {alias!r} has never had a shadow or canary")
    report = compare_rollout(store.database, rollout)
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    agreement = report.decision_agreement
    typer.echo(
        f"{alias}: {report.candidate} vs {report.active} ({report.state}), "
        f"{report.paired_studies} studies read by both, decisions agree "
        + ("n/a" if agreement is None else f"{agreement:.1%}")
    )
    for label in report.labels:
        auc = ""
        if label.auc_active is not None:
            auc = (
                f"  AUC {label.auc_candidate} vs {label.auc_active} "
                f"(DeLong p {label.delong_p}, {label.labelled} labelled)"
            )
        typer.echo(
            f"  {label.label}: agree {label.agreement:.1%}, positive "
            f"{label.candidate_positive} vs {label.active_positive} "
            f"(McNemar p {label.mcnemar_p:.3g}){auc}"
        )


@models_app.command("kill")
def kill_model(
    model: str = typer.Argument(..., help="Package name (every version) or name@version."),
    release: bool = typer.Option(False, "--release", help="Release the switch instead."),
    reason: str = typer.Option("", "--reason", help="Why (kept in the audit log)."),
) -> None:
    """Stop sending a model's results at once (exports held, not lost), or release it."""
    from overread.errors import ConfigError

    store = _rollouts().store
    if release:
        released = store.release(model, actor=_operator(), reason=reason)
        if released is None:
            raise ConfigError(f"no kill switch engaged for {model!r}")
        typer.echo(f"{model}: kill switch released, {released} held export(s) queued")
        return
    if not store.kill(model, actor=_operator(), reason=reason):
        typer.echo(f"{model}: kill switch already engaged")
        return
    typer.echo(f"{model}: kill switch engaged; its exports are held")


cohorts_app = typer.Typer(help="Labelled cohorts of the release gate.", no_args_is_help=True)
models_app.add_typer(cohorts_app, name="cohorts")


@cohorts_app.command("add")
def add_cohort(
    name: str = typer.Argument(..., help="Cohort name."),
    folder: Path = typer.Argument(..., help="Folder with truth.csv and its images."),
    purpose: str = typer.Option(
        "test", "--purpose", help="test (judged on) or operating-points (fitted on)."
    ),
) -> None:
    """Register a labelled cohort, storing its files' hashes (verified before each use)."""
    from overread.errors import ConfigError
    from overread.service.release_gate import CohortPurpose, CohortRegistry

    if purpose not in {p.value for p in CohortPurpose}:
        raise ConfigError(f"--purpose must be test or operating-points, not {purpose!r}")
    cohort = CohortRegistry(_database()).add(
        name, folder, purpose=CohortPurpose(purpose), actor=_operator()
    )
    typer.echo(
        f"registered cohort {cohort.name} ({cohort.purpose.value}): {cohort.images} images, "
        f"sha256 {cohort.digest}"
    )


@cohorts_app.command("list")
def list_cohorts(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Registered cohorts."""
    from overread.service.release_gate import CohortRegistry

    cohorts = CohortRegistry(_database()).list()
    if as_json:
        typer.echo(json.dumps({"cohorts": [c.to_dict() for c in cohorts]}))
        return
    if not cohorts:
        typer.echo("no cohorts registered")
    for c in cohorts:
        typer.echo(f"{c.name}  {c.purpose.value}  {c.images} images  {c.path}  {c.digest[:12]}")


@models_app.command("governance-report")
def governance_report_command(
    out: Path = typer.Option(..., "--out", help="HTML file to write."),
    since: str | None = typer.Option(None, "--since", help="Start (ISO 8601; default 30 days)."),
    until: str | None = typer.Option(None, "--until", help="End, exclusive (default now)."),
) -> None:
    """The period's rollout decisions, kill switches and alerts as one HTML file."""
    from datetime import timedelta

    from overread.audit import parse_time
    from overread.db import utcnow
    from overread.service.governance import GovernancePeriod, governance_report

    end = parse_time(until) if until else utcnow()
    start = parse_time(since) if since else end - timedelta(days=30)
    output_file(out)
    text, summary = governance_report(_database(), GovernancePeriod(start, end))
    write_output(out, text)
    counts = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in summary.to_dict().items())
    typer.echo(f"wrote {out}: {counts}")


@models_app.command("conformal")
def conformal_model(
    model: str = typer.Option(..., "--model", help="Package to calibrate (alias, name or path)."),
    data: Path = typer.Option(
        ..., "--data", help="Held-out labelled phantom cohort (truth.csv), not train or test."
    ),
    out: Path = typer.Option(..., "--out", help="Directory for the new package version."),
    alpha: float = typer.Option(0.1, "--alpha", help="Miscoverage: sets cover >= 1 - alpha."),
    method: str = typer.Option(
        "class-conditional",
        "--method",
        help="Sets served: class-conditional (per true class) or marginal.",
    ),
    version: str | None = typer.Option(
        None, "--version", help="New version (default: the source's with '+conformal')."
    ),
    tta: int | None = typer.Option(None, "--tta", min=1, help="TTA views (as served)."),
    mc_dropout: int | None = typer.Option(
        None, "--mc-dropout", min=0, help="Monte Carlo dropout passes (as served)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Calibrate split-conformal sets on a cohort and write a new package version."""
    from overread.errors import ConfigError, ModelPackageError
    from overread.evaluation.conformal import ConformalMethod
    from overread.inference.conformal import write_conformal_package

    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"--alpha must be between 0 and 1, not {alpha}")
    if method not in {m.value for m in ConformalMethod}:
        raise ConfigError(f"--method must be class-conditional or marginal, not {method!r}")
    registry = _registry()
    source = registry.load(model)
    new_version = version or f"{source.version}+conformal"
    if new_version == source.version:
        raise ModelPackageError(
            f"{source.name} {source.version}: a derived package needs a new version number"
        )
    if out.exists():
        raise ModelPackageError(f"{out}: already exists; a package version is never overwritten")
    typer.echo(f"calibrating {source.name} {source.version} on {data} ...", err=True)
    package, section = write_conformal_package(
        model,
        data,
        out,
        version=new_version,
        alpha=alpha,
        method=method,
        tta_views=tta,
        mc_dropout=mc_dropout,
        key=registry.key,
    )
    if as_json:
        typer.echo(_package_json(package, conformal=section))
        return
    typer.echo(_wrote(package))
    typer.echo(f"  alpha {alpha}, {method}, {section['n']} images")
    for label, q in section["quantiles"].items():
        typer.echo(
            f"  {label}: n+ {q['n_positive']} n- {q['n_negative']}  q {q['marginal']}  "
            f"q0 {q['negative']}  q1 {q['positive']}"
        )


def _prevalence_pairs(items: list[str]) -> dict[str, tuple[float, float]]:
    from overread.errors import ConfigError

    pairs: dict[str, tuple[float, float]] = {}
    for item in items:
        label, sep, values = item.partition("=")
        fitted, colon, served = values.partition(":")
        try:
            if not (sep and colon and label.strip()):
                raise ValueError
            pairs[label.strip()] = (float(fitted), float(served))
        except ValueError:
            raise ConfigError(
                f"--prevalence {item!r}: expected LABEL=FITTED:SERVED, e.g. Fracture=0.12:0.05"
            ) from None
    if not pairs:
        raise ConfigError("--prevalence: name at least one label")
    return pairs


def _wrote(package: ModelPackage) -> str:
    """The line a command that wrote a package version prints."""
    return f"wrote {package.name} {package.version} -> {package.path} (sha256 {package.sha256})"


def _package_json(package: ModelPackage, **extra: Any) -> str:
    """The ``--json`` object of a command that wrote a package version."""
    return json.dumps(
        {
            "name": package.name,
            "version": package.version,
            "sha256": package.sha256,
            "path": str(package.path),
            **extra,
        }
    )


@models_app.command("prior-shift")
def prior_shift_model(
    model: str = typer.Option(..., "--model", help="Package (alias, name or path)."),
    prevalence: list[str] = typer.Option(
        ...,
        "--prevalence",
        help="LABEL=FITTED:SERVED: the prevalence its calibration was fitted at and the one "
        "it will serve (repeatable), e.g. Fracture=0.12:0.05.",
    ),
    out: Path = typer.Option(..., "--out", help="Directory for the new package version."),
    version: str | None = typer.Option(
        None, "--version", help="New version (default: the source's with '+shifted')."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Move labels' calibration and thresholds to another prevalence (a new package version)."""
    from overread.errors import ModelPackageError
    from overread.training.operating import write_prior_shift_package

    pairs = _prevalence_pairs(prevalence)
    registry = _registry()
    source = registry.load(model)
    new_version = version or f"{source.version}+shifted"
    if out.exists():
        raise ModelPackageError(f"{out}: already exists; a package version is never overwritten")
    package = write_prior_shift_package(
        source, out, version=new_version, prevalences=pairs, key=registry.key
    )
    if as_json:
        typer.echo(
            _package_json(
                package, prior_shift={k: {"fitted": a, "served": b} for k, (a, b) in pairs.items()}
            )
        )
        return
    typer.echo(_wrote(package))


@models_app.command("order-points")
def order_points_model(
    model: str = typer.Option(..., "--model", help="Package (alias, name or path)."),
    out: Path = typer.Option(..., "--out", help="Directory for the new package version."),
    version: str | None = typer.Option(
        None, "--version", help="New version (default: the source's with '+ordered')."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Order each label's named points, high sensitivity <= balanced <= high specificity
    (a new package version)."""
    from overread.errors import ModelPackageError
    from overread.training.operating import write_ordered_points_package

    registry = _registry()
    source = registry.load(model)
    new_version = version or f"{source.version}+ordered"
    if out.exists():
        raise ModelPackageError(f"{out}: already exists; a package version is never overwritten")
    package, record = write_ordered_points_package(
        source, out, version=new_version, key=registry.key
    )
    moved, moved_sites = record["moved"], record.get("moved_sites", {})
    if as_json:
        typer.echo(_package_json(package, moved=moved, moved_sites=moved_sites))
        return
    count = sum(len(names) for names in moved.values())
    at_sites = sum(len(n) for labels in moved_sites.values() for n in labels.values())
    typer.echo(
        f"{_wrote(package)}; {count} point(s) of {len(moved)} label(s) moved to balanced"
        + (f", and {at_sites} of {len(moved_sites)} site(s)" if moved_sites else "")
    )


@models_app.command("ensemble")
def ensemble_model(
    members: list[str] = typer.Argument(..., help="Member packages (two or more)."),
    name: str = typer.Option(..., "--name", help="The ensemble's name."),
    version: str = typer.Option(..., "--version", help="The ensemble's version."),
    out: Path = typer.Option(..., "--out", help="Directory for the ensemble package."),
) -> None:
    """Write an ensemble package naming its members by hash (import it to serve it)."""
    from overread.models.package import write_ensemble_package

    registry = _registry()
    package = write_ensemble_package(
        out, [registry.load(m) for m in members], name=name, version=version, key=registry.key
    )
    typer.echo(
        f"wrote ensemble {package.name} {package.version} of {len(members)} members -> "
        f"{package.path} (sha256 {package.sha256})"
    )


def _cohort_files(data: Path) -> list[Path]:
    """A phantom cohort's images in truth.csv order, else every image file under ``data``."""
    from overread.errors import ConfigError
    from overread.imaging.inspection import iter_files

    if not data.exists():
        raise ConfigError(f"--data {data}: no such file or folder")
    truth = data / "truth.csv"
    if truth.is_file():
        import csv

        with truth.open(newline="", encoding="utf-8") as handle:
            return [data / row["Path"] for row in csv.DictReader(handle) if row.get("Path")]
    return sorted(Path(p) for p in iter_files([data]))


@models_app.command("gate")
def gate_model(
    model: str = typer.Option(..., "--model", "-m", help="Alias, name@version or package path."),
    data: Path = typer.Option(..., "--data", help="Images the model was made for (a cohort)."),
    out: Path = typer.Option(..., "--out", help="Folder for the new package version."),
    version: str | None = typer.Option(
        None, "--version", help="The new version (default: the last number plus one)."
    ),
    min_age: float | None = typer.Option(
        None, "--min-age", help="Minimum patient age in years (younger: see --below-min-age)."
    ),
    below_min_age: str = typer.Option("refuse", "--below-min-age", help="refuse or flag."),
    refuse_rate: float = typer.Option(
        0.01, "--refuse-rate", help="Held-out false-refusal rate the refuse threshold is set for."
    ),
    flag_rate: float = typer.Option(
        0.05, "--flag-rate", help="Held-out rate of normal images flagged or refused."
    ),
    features: bool = typer.Option(
        True,
        "--features/--no-features",
        help="Include the detector on the network's own features (a second torch pass).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Fit the input gate on images the model was made for; write a NEW package version."""
    import sys

    from overread.errors import ConfigError
    from overread.inference.gate_fit import fit_package_gate, write_gated_package

    if below_min_age not in ("refuse", "flag"):
        raise ConfigError(f"--below-min-age {below_min_age!r}: use refuse or flag")
    if not 0 < refuse_rate <= flag_rate < 1:
        raise ConfigError("need 0 < --refuse-rate <= --flag-rate < 1")
    registry = _registry()
    package = registry.load(model)
    files = _cohort_files(data)
    if len(files) < 30:
        raise ConfigError(f"--data {data}: {len(files)} images; the gate needs at least 30")
    print(f"measuring {len(files)} images with {package.name} {package.version}", file=sys.stderr)
    spec = fit_package_gate(
        package,
        files,
        min_age_years=min_age,
        below_min_age=below_min_age,
        flag_rate=flag_rate,
        refuse_rate=refuse_rate,
        provenance={"data": data.name, "from_version": package.version},
        features=features,
    )
    written = write_gated_package(package, spec, out, version=version, key=registry.key)
    summary = {
        "name": written.name,
        "version": written.version,
        "path": str(written.path),
        "sha256": written.sha256,
        "flag_threshold": spec.flag_threshold,
        "refuse_threshold": spec.refuse_threshold,
        "fit": spec.fit,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    typer.echo(
        f"{written.name} {written.version}: gate fitted on {spec.fit['images']} images "
        f"(flag above {spec.flag_threshold:g}, refuse above {spec.refuse_threshold:g}; "
        f"held-out refusal {spec.fit['refused_on_fit']:.1%}) -> {written.path}"
    )


@models_app.command("gate-report")
def gate_report(
    model: str = typer.Option(..., "--model", "-m", help="A package with a fitted gate."),
    data: Path = typer.Option(..., "--data", help="Normal images (another seed than the fit)."),
    spoiled: int = typer.Option(
        40, "--spoiled", help="Images of --data spoiled each way (inverted, noisy...)."
    ),
    lateral: int = typer.Option(40, "--lateral", help="Lateral phantoms to render."),
    seed: int = typer.Option(303, "--seed", help="Seed of the lateral phantoms."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Detection rate per kind of unsuitable image and false refusals on normal ones."""
    import os
    import sys
    import tempfile

    import pydicom

    from overread.inference.gate_fit import evaluate_gate
    from overread.inference.pipeline import Pipeline
    from overread.phantom.corrupt import write_corrupted
    from overread.phantom.lateral import write_lateral_cohort

    pipeline = Pipeline(_registry().load(model))
    normal = _cohort_files(data)
    groups: dict[str, list[Path]] = {"normal (false refusals)": normal}
    with tempfile.TemporaryDirectory(prefix="overread-gate-") as scratch:
        root = Path(scratch)
        print(
            f"writing {spoiled} spoiled copies of each kind and {lateral} laterals", file=sys.stderr
        )
        for kind, paths in write_corrupted(normal[:spoiled], root / "spoiled").items():
            groups[kind] = paths
        groups["lateral phantom"] = write_lateral_cohort(root / "lateral", lateral, seed, size=512)
        test_files = Path(os.path.dirname(pydicom.__file__)) / "data" / "test_files"
        for path in sorted(test_files.glob("*.dcm")):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:
                continue
            if "Rows" not in ds:
                continue
            groups.setdefault(f"pydicom {ds.get('Modality') or 'no modality'}", []).append(path)
        print(
            f"running the gate of {pipeline.model.name} {pipeline.model.version}", file=sys.stderr
        )
        counts = evaluate_gate(pipeline, groups)
    rows = [c.to_dict() for c in counts]
    if as_json:
        typer.echo(json.dumps({"model": pipeline.model.to_dict(), "groups": rows}))
        return
    typer.echo(
        f"{'kind':26s} {'n':>4s} {'refused':>8s} {'flagged':>8s} {'pixels only':>12s} "
        f"{'unreadable':>10s}"
    )
    for row in rows:
        typer.echo(
            f"{row['kind']:26s} {row['images']:4d} {row['refused_rate']:8.1%} "
            f"{row['flagged']:8d} {row['refused_pixels_only_rate']:12.1%} {row['unreadable']:10d}"
        )


@models_app.command("package")
def package_model_command(
    onnx: Path | None = typer.Option(None, "--onnx", help="An ONNX model file."),
    torchscript: Path | None = typer.Option(None, "--torchscript", help="A TorchScript file."),
    monai_bundle: Path | None = typer.Option(
        None, "--monai-bundle", help="A MONAI bundle folder (configs/metadata.json, models/)."
    ),
    state_dict: Path | None = typer.Option(
        None, "--state-dict", help="A state dict for --architecture (TorchXRayVision layout too)."
    ),
    architecture: str | None = typer.Option(
        None, "--architecture", help="The factory architecture of --state-dict (densenet121)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="A TOML file with these settings (options given here win)."
    ),
    name: str | None = typer.Option(None, "--name", help="Package name."),
    version: str | None = typer.Option(None, "--version", help="Package version."),
    labels: str | None = typer.Option(None, "--labels", help="Output labels in order: A,B,..."),
    size: int | None = typer.Option(None, "--size", min=8, help="Input size in pixels."),
    channels: int | None = typer.Option(None, "--channels", min=1, help="Input channels."),
    outputs: str | None = typer.Option(
        None, "--outputs", help="logits or probabilities (default: inferred on phantoms)."
    ),
    input_range: str | None = typer.Option(
        None, "--input-range", help="LOW,HIGH the model expects (default 0,1)."
    ),
    intended_use: str | None = typer.Option(None, "--intended-use", help="Intended use."),
    operating_points: Path | None = typer.Option(
        None, "--operating-points", help='JSON {"label": {"balanced": t, ...}}; else 0.5.'
    ),
    int8: bool = typer.Option(True, "--int8/--no-int8", help="Add a static INT8 ONNX model."),
    out: Path = typer.Option(..., "--out", help="The package folder to write."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Turn an ONNX, TorchScript, MONAI bundle or state-dict model into a verified package."""
    from dataclasses import replace

    from overread.errors import ConfigError
    from overread.models.manifest import OutputKind, SourceFormat
    from overread.models.onboard import (
        OnboardSpec,
        package_model,
        parse_labels,
        parse_range,
        spec_from_toml,
    )

    spec, sources = spec_from_toml(config) if config is not None else (OnboardSpec(), {})
    given = {
        "onnx": onnx,
        "torchscript": torchscript,
        "monai_bundle": monai_bundle,
        "state_dict": state_dict,
    }
    chosen = {k: str(v) for k, v in given.items() if v is not None} or {
        k: v for k, v in sources.items() if k != "architecture"
    }
    if len(chosen) != 1:
        raise ConfigError("give exactly one of --onnx, --torchscript, --monai-bundle, --state-dict")
    ((kind, source),) = chosen.items()
    if outputs is not None and outputs not in {o.value for o in OutputKind}:
        raise ConfigError(f"--outputs must be logits or probabilities, not {outputs!r}")
    points = None
    if operating_points is not None:
        try:
            points = json.loads(operating_points.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--operating-points {operating_points}: {exc}") from None
    overrides: dict[str, Any] = {
        "name": name,
        "version": version,
        "labels": parse_labels(labels) if labels is not None else None,
        "size": size,
        "channels": channels,
        "outputs": OutputKind(outputs) if outputs is not None else None,
        "input_range": parse_range(input_range) if input_range is not None else None,
        "intended_use": intended_use,
        "operating_points": points,
    }
    spec = replace(spec, **{k: v for k, v in overrides.items() if v is not None})
    if not int8:
        spec = replace(spec, int8=False)
    fmt = SourceFormat(kind.replace("_", "-"))
    registry = _registry()
    typer.echo(f"packaging {source} ({fmt.value}) ...", err=True)
    package = package_model(
        fmt,
        Path(source),
        out,
        spec,
        architecture=architecture or sources.get("architecture"),
        key=registry.key,
    )
    manifest = package.manifest
    onboarded = manifest.onboarded
    assert onboarded is not None
    summary = {
        "name": package.name,
        "version": package.version,
        "path": str(package.path),
        "sha256": package.sha256,
        "format": fmt.value,
        "architecture": manifest.architecture,
        "labels": package.labels,
        "outputs": onboarded.outputs.value,
        "outputs_inferred": onboarded.outputs_inferred,
        "calibrated": onboarded.calibrated,
        "runtime": manifest.runtime.model_dump(),
        "cam": manifest.cam,
        "validation": onboarded.validation,
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    how = "inferred" if onboarded.outputs_inferred else "given"
    typer.echo(_wrote(package))
    typer.echo(
        f"  {len(package.labels)} labels, {manifest.input.size}px, outputs "
        f"{onboarded.outputs.value} ({how}), runtimes "
        + ", ".join(k for k, v in manifest.runtime.model_dump().items() if v)
        + f", CAM {'yes' if manifest.cam == 'onnx-output' else 'no'}"
    )
    if not onboarded.calibrated:
        typer.echo(
            "  UNCALIBRATED: every threshold is 0.5 until `overread models calibrate` "
            "fits them on a labelled local cohort"
        )


@models_app.command("calibrate")
def calibrate_model_command(
    model: str = typer.Option(..., "--model", "-m", help="Alias, name@version or package path."),
    data: Path = typer.Option(..., "--data", help="A labelled local cohort (truth.csv)."),
    out: Path = typer.Option(..., "--out", help="Folder for the new package version."),
    version: str | None = typer.Option(
        None, "--version", help="New version (default: the source's with '+calibrated')."
    ),
    alpha: float = typer.Option(0.1, "--alpha", help="Conformal miscoverage (sets cover 1-alpha)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the fit / held-out patient split."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    site: list[str] = typer.Option(
        [],
        "--site",
        help="Fit this site's own calibration and thresholds (repeatable): its name as the "
        "service identifies it (institution, station or calling AE).",
    ),
    method: str = typer.Option(
        "temperature", "--method", help="Per-site map: temperature or isotonic (with --site)."
    ),
    min_images: int | None = typer.Option(
        None,
        "--min-images",
        min=10,
        help="A site's minimum labelled images (default 30 temperature, 100 isotonic).",
    ),
    whole_cohort: bool = typer.Option(
        False,
        "--whole-cohort",
        help="Every image of --data is from the one --site (e.g. a calling AE title).",
    ),
) -> None:
    """Fit calibration, operating points and conformal sets on a labelled cohort; write a
    NEW package version carrying the evaluation report. With --site: fit per-site
    calibration and thresholds on that site's images instead."""
    from overread.errors import ConfigError, ModelPackageError
    from overread.inference.onboard_calibration import calibrate_package

    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"--alpha must be between 0 and 1, not {alpha}")
    if not (data / "truth.csv").is_file():
        raise ConfigError(f"--data {data}: no truth.csv; give a labelled cohort")
    if method not in ("temperature", "isotonic"):
        raise ConfigError(f"--method must be temperature or isotonic, not {method!r}")
    if whole_cohort and len(site) != 1:
        raise ConfigError("--whole-cohort needs exactly one --site")
    registry = _registry()
    source = registry.load(model)
    if site:
        _calibrate_sites(
            source, data, out, site, version, method, min_images, whole_cohort, seed, as_json
        )
        return
    new_version = version or f"{source.version}+calibrated"
    if out.exists():
        raise ModelPackageError(f"{out}: already exists; a package version is never overwritten")
    typer.echo(f"calibrating {source.name} {source.version} on {data} ...", err=True)
    package, summary = calibrate_package(
        source, data, out, version=new_version, alpha=alpha, seed=seed, key=registry.key
    )
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "name": package.name,
                    "version": package.version,
                    "path": str(package.path),
                    "sha256": package.sha256,
                    **summary,
                }
            )
        )
        return
    cohort = summary["cohort"]
    mean_auc = summary["mean_auc"]
    typer.echo(_wrote(package))
    typer.echo(
        f"  fitted on {cohort['fit_images']} images, checked on {cohort['held_out_images']} "
        f"held out: mean AUC "
        + ("n/a" if mean_auc is None else f"{mean_auc:.3f}")
        + f"; report in {package.path / 'evaluation' / 'report.html'}"
    )
    for label, figures in summary["labels"].items():
        auc = figures.get("auc")
        typer.echo(
            f"  {label}: AUC {'n/a' if auc is None else f'{auc:.3f}'}  "
            f"threshold {package.manifest.operating_points[label]['balanced']:.3f}"
        )


def _calibrate_sites(
    source: Any,
    data: Path,
    out: Path,
    sites: list[str],
    version: str | None,
    method: str,
    min_images: int | None,
    whole_cohort: bool,
    seed: int,
    as_json: bool,
) -> None:
    """``models calibrate --site``: per-site calibration into a new package version."""
    from overread.cli.options import service_settings
    from overread.inference.site_calibration import calibrate_sites

    registry = _registry()
    new_version = version or f"{source.version}+sites"
    # The images of a site are matched as the service will match its studies.
    rule = service_settings(None, None).site_calibration
    typer.echo(
        f"calibrating {source.name} {source.version} for {', '.join(sites)} on {data} "
        f"(images matched by {rule.source.value} through [service.site_calibration] sites, "
        f"{len(rule.sites)} value(s)) ...",
        err=True,
    )
    package, summary = calibrate_sites(
        source,
        data,
        out,
        sites=sites,
        version=new_version,
        method=method,
        min_images=min_images,
        whole_cohort=whole_cohort,
        seed=seed,
        key=registry.key,
        site_source=rule.source.value,
        site_map=rule.sites,
    )
    for warning in summary.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "name": package.name,
                    "version": package.version,
                    "path": str(package.path),
                    "sha256": package.sha256,
                    **summary,
                }
            )
        )
        return
    typer.echo(_wrote(package))
    typer.echo(
        f"  minimum sample: {summary['min_images']} images, {summary['min_per_class']} of each "
        f"class per label; sites in the package: {', '.join(summary['sites_in_package'])}"
    )
    for name, fitted in summary["sites"].items():
        typer.echo(
            f"  site {name}: {fitted['images']} images, {fitted['method']}, "
            f"{len(fitted['labels'])} label(s) fitted, {len(fitted['fallback'])} on the "
            "global calibration"
        )
        for label, f in fitted["labels"].items():
            scale = "" if f["temperature"] is None else f"T {f['temperature']:.2f}  "
            typer.echo(
                f"    {label}: {scale}ECE {f['ece_before']:.3f} -> {f['ece_after']:.3f} "
                f"(cross-validated)  threshold {f['operating_points']['balanced']:.3f}"
            )
        for label, reason in fitted["fallback"].items():
            typer.echo(f"    {label}: global calibration ({reason})")
        if not fitted["labels"]:
            typer.echo(
                f"  WARNING: site {name} has no label with a site map (too small a sample, "
                "or no map helped): its studies keep the global calibration",
                err=True,
            )
