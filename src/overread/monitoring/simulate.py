"""Prove monitoring on phantoms: replay cohorts with injected drifts through it.

The replay runs the bundled model on phantom chest radiographs (real DICOM, read
and preprocessed by the model's own chain), never on synthetic scores. To stay
within a few minutes on two cores, images are rendered and read by the model once
per *condition* into pools, and each simulated day then draws its studies from
the pools:

* ``base``: a phantom cohort over four sites (their own scanners and case mix);
* ``acquisition``: the drift site's studies of the base pool rendered again after
  a silent detector recalibration (lower dose, more blur, flatter gamma, shifted
  window; the header is unchanged, so only the pixels tell);
* ``output``: every base study rendered again with its findings at half severity
  (subtler disease: the labels stay, the model's outputs move).

Each run draws the same studies day by day from one seed (so the drift-free run
is the paired control of every drift run); from ``inject_day`` a drift run
changes what it draws:

* ``acquisition``: the drift site's studies come from the ``acquisition`` pool;
* ``prevalence``: studies positive for the prevalence label are drawn more often
  (its share about doubles);
* ``subgroup_performance``: reader labels of demographic group D become noisy
  (each flipped with probability ``label_flip``), so the model's measured
  performance drops for that group only;
* ``output``: studies come from the ``output`` pool.

Every study gets its phantom truth as its label (as if every study were read back).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from overread.errors import ConfigError
from overread.evaluation.delong import delong_ci
from overread.findings import Finding
from overread.monitoring.alerts import Alert, AlertKind
from overread.monitoring.drift import (
    DriftMonitor,
    DriftPoint,
    DriftSettings,
    PrevalenceMonitor,
    PrevalencePoint,
    PrevalenceSettings,
)
from overread.monitoring.fairness import FairnessMonitor, FairnessSettings
from overread.monitoring.observations import StudyObservation, observe
from overread.monitoring.performance import (
    PerformanceMonitor,
    PerformanceSettings,
    WindowMetrics,
)
from overread.phantom.cohort import CohortOptions, plan_header, study_spec
from overread.phantom.dicom import build_dataset, cohort_uids
from overread.phantom.render import render_study
from overread.phantom.sampling import CohortSampler, StudyPlan
from overread.phantom.sites import DEFAULT_SITES, Site
from overread.phantom.spec import FindingSpec

Progress = Callable[[str, int, int], None]


class Scenario(StrEnum):
    """An injected drift (or none)."""

    NONE = "none"
    ACQUISITION = "acquisition"
    PREVALENCE = "prevalence"
    SUBGROUP_PERFORMANCE = "subgroup_performance"
    OUTPUT = "output"


#: The alert kind that should detect each scenario.
DETECTED_BY: dict[Scenario, AlertKind] = {
    Scenario.ACQUISITION: AlertKind.ACQUISITION_DRIFT,
    Scenario.PREVALENCE: AlertKind.PREVALENCE,
    Scenario.SUBGROUP_PERFORMANCE: AlertKind.SUBGROUP_PERFORMANCE,
    Scenario.OUTPUT: AlertKind.OUTPUT_DRIFT,
}

_START = dt.date(2025, 1, 6)

#: The thresholds the simulation runs with (docs/monitoring.md gives their reasons).
SIMULATION_DRIFT = DriftSettings(mmd_permutations=50)
SIMULATION_PREVALENCE = PrevalenceSettings(cusum_k=1.0, cusum_h=8.0)
SIMULATION_PERFORMANCE = PerformanceSettings(
    confidence=0.999,
    min_positive=25,
    min_negative=25,
    false_critical_budget=0.15,
    attributes=("group",),
)
SIMULATION_FAIRNESS = FairnessSettings(tolerance={"tpr": 0.25, "ece": 0.3}, n_resamples=100)


@dataclass(frozen=True)
class SimulationOptions:
    """Size and drifts of a simulation (see docs/monitoring.md).

    Parameters
    ----------
    seed
        Seeds the pools and the daily draws.
    days, studies_per_day
        Length of each run (``days * studies_per_day`` studies).
    inject_day
        First day (0-based) of each injected drift.
    pool_size
        Studies rendered and read by the model for the base pool.
    image_size
        Rows and columns of the rendered images.
    drift_site
        The site whose detector is recalibrated.
    prevalence_label, prevalence_factor
        The label whose odds of being drawn are multiplied.
    drift_group, label_flip
        The demographic group whose labels become noisy, and the flip probability.
    severity_factor
        Severity multiplier of the ``output`` pool.
    """

    seed: int = 0
    days: int = 60
    studies_per_day: int = 40
    inject_day: int = 30
    pool_size: int = 1000
    image_size: int = 256
    drift_site: str = "NGH"
    prevalence_label: str = Finding.PLEURAL_EFFUSION.value
    prevalence_factor: float = 3.0
    drift_group: str = "D"
    label_flip: float = 0.3
    severity_factor: float = 0.5

    def validate(self) -> None:
        """Raise ConfigError naming the first invalid option."""
        if self.days < 20:
            raise ConfigError(f"--days {self.days} is below 20 (14 reference days plus a window)")
        if not 15 <= self.inject_day < self.days:
            raise ConfigError(f"--inject-day {self.inject_day} is outside 15..{self.days - 1}")
        if self.studies_per_day < 10:
            raise ConfigError(f"--studies-per-day {self.studies_per_day} is below 10")
        if self.pool_size < 100:
            raise ConfigError(f"--pool {self.pool_size} is below 100")
        if not 64 <= self.image_size <= 1024:
            raise ConfigError(f"image size {self.image_size} is outside 64..1024")
        if self.drift_site not in {s.code for s in DEFAULT_SITES}:
            raise ConfigError(f"drift site {self.drift_site!r} is not a phantom site")
        if not 0 < self.label_flip <= 0.5:
            raise ConfigError(f"label flip {self.label_flip} is outside (0, 0.5]")

    @property
    def studies(self) -> int:
        """Studies per run."""
        return self.days * self.studies_per_day


@dataclass(frozen=True)
class PoolStudy:
    """One rendered study read by the model: its observation and its truth."""

    observation: StudyObservation
    truth: dict[str, int]
    group: str


@dataclass
class Pools:
    """The studies of each condition; the variants are aligned with ``base`` by index
    (``acquisition`` only where the site is the drift site)."""

    base: list[PoolStudy]
    acquisition: dict[int, PoolStudy]
    output: list[PoolStudy]
    labels: tuple[str, ...]
    thresholds: dict[str, float]
    model: str


def recalibrated(site: Site) -> Site:
    """``site`` after a silent detector recalibration: the acquisition drifts as in
    :meth:`AcquisitionProfile.drifted`, the header (station, model, bit depth) does not."""
    profile = site.acquisition
    return replace(site, acquisition=replace(profile.drifted(), bits_stored=profile.bits_stored))


def _subtler(plan: StudyPlan, factor: float) -> StudyPlan:
    findings = tuple(
        FindingSpec(f.label, max(0.05, f.severity * factor), f.seed, f.side, f.kinds)
        if f.label != Finding.SUPPORT_DEVICES.value
        else f
        for f in plan.findings
    )
    return replace(plan, findings=findings)


def _read_pool(
    pipeline: Any,
    plans: Sequence[StudyPlan],
    options: SimulationOptions,
    folder: Path,
    tag: str,
    progress: Progress | None,
) -> list[PoolStudy]:
    """Render ``plans``, write them as DICOM, read and preprocess them with the model's
    chain, run the model in batches and keep each study's observation."""
    from overread.imaging import read
    from overread.inference.result import Prediction

    cohort = CohortOptions(
        n=len(plans),
        seed=options.seed,
        rows=options.image_size,
        cols=options.image_size,
        internal=128,
    )
    out: list[PoolStudy] = []
    batch = 32
    for start in range(0, len(plans), batch):
        chunk = plans[start : start + batch]
        inputs = []
        images = []
        for plan in chunk:
            rng = np.random.default_rng(np.random.SeedSequence([options.seed, 7, plan.index]))
            pixels, truth = render_study(study_spec(plan, cohort), rng)
            header = plan_header(
                plan,
                view=plan.positioning.view,
                uids=cohort_uids(options.seed, plan.index),
                accession=f"{plan.site.code}{plan.index + 1:07d}",
                window=(truth.window_center, truth.window_width),
                pixel_spacing_mm=cohort.field_of_view_mm / cohort.rows,
            )
            path = folder / f"{tag}-{plan.index}.dcm"
            build_dataset(header, pixels).save_as(path, enforce_file_format=True)
            image = read(path)
            x, _ = pipeline.preprocess(image)
            inputs.append(x)
            images.append((image, truth.labels, plan))
            path.unlink()
        probabilities = pipeline.predict_batch(np.stack(inputs))
        for (image, labels, plan), x, row in zip(images, inputs, probabilities, strict=True):
            prediction = Prediction(path=None, ok=True, model=pipeline.model)
            prediction.findings = pipeline.findings(row)
            observation = observe(image.dataset, x, prediction, site=plan.site.code)
            out.append(PoolStudy(observation, dict(labels), plan.patient.group))
        if progress:
            progress(f"pool {tag}", min(start + batch, len(plans)), len(plans))
    return out


def build_pools(options: SimulationOptions, progress: Progress | None = None) -> Pools:
    """Render and read every pool with the bundled model (the slow part, done once)."""
    from overread.inference.pipeline import Pipeline

    pipeline = Pipeline.from_name()
    sampler = CohortSampler(seed=options.seed, sites=DEFAULT_SITES)
    plans = sampler.plan(options.pool_size)
    with tempfile.TemporaryDirectory(prefix="overread-monitor-") as tmp:
        folder = Path(tmp)
        base = _read_pool(pipeline, plans, options, folder, "base", progress)
        drift_plans = [
            replace(p, site=recalibrated(p.site))
            for p in plans
            if p.site.code == options.drift_site
        ]
        drifted = _read_pool(pipeline, drift_plans, options, folder, "acquisition", progress)
        subtle = [_subtler(p, options.severity_factor) for p in plans]
        output = _read_pool(pipeline, subtle, options, folder, "output", progress)
    thresholds = pipeline.package.thresholds(None)
    labels = tuple(pipeline.labels)
    return Pools(
        base=base,
        acquisition={p.index: s for p, s in zip(drift_plans, drifted, strict=True)},
        output=output,
        labels=labels,
        thresholds={label: float(t) for label, t in zip(labels, thresholds, strict=True)},
        model=base[0].observation.model,
    )


def validated_baseline(pools: Pools, min_positive: int = 20) -> dict[str, float]:
    """The AUC per label on the base pool (the model's validation figure here);
    labels with fewer than ``min_positive`` positives are not judged."""
    out = {}
    for i, label in enumerate(pools.labels):
        y = np.array([s.truth.get(label, 0) for s in pools.base], dtype=bool)
        if y.sum() < min_positive or (~y).sum() < min_positive:
            continue
        p = np.array([s.observation.probabilities[i] for s in pools.base])
        out[label] = float(delong_ci(y, p).auc)
    return out


@dataclass
class RunResult:
    """What one run raised, and its charts for the plots."""

    scenario: Scenario
    alerts: list[tuple[int, int, Alert]]  # (day, studies so far, alert)
    drift: list[DriftPoint]
    prevalence: list[PrevalencePoint]
    performance: list[WindowMetrics]
    group_auc: list[tuple[int, float, float]]  # (day, AUC, CI high) of the drift group


@dataclass
class Detection:
    """One injected drift and when its alert fired."""

    kind: AlertKind
    scenario: Scenario
    injected_at_study: int
    detected_at_study: int | None
    injected_at_day: int
    detected_at_day: int | None
    false_alarms_before: int

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` entry."""
        return {
            "kind": self.kind.value,
            "scenario": self.scenario.value,
            "injected_at_study": self.injected_at_study,
            "detected_at_study": self.detected_at_study,
            "injected_at_day": self.injected_at_day,
            "detected_at_day": self.detected_at_day,
            "delay_studies": None
            if self.detected_at_study is None
            else self.detected_at_study - self.injected_at_study,
            "delay_days": None
            if self.detected_at_day is None
            else self.detected_at_day - self.injected_at_day,
            "false_alarms_before_injection": self.false_alarms_before,
        }


@dataclass
class SimulationReport:
    """The outcome of :func:`simulate`."""

    options: SimulationOptions
    detections: list[Detection]
    clean: RunResult
    runs: dict[Scenario, RunResult]
    baseline_auc: dict[str, float]
    pool_sizes: dict[str, int] = field(default_factory=dict)

    @property
    def false_alarms_no_drift(self) -> int:
        """Alerts of any kind raised on the drift-free run."""
        return len(self.clean.alerts)

    def as_dict(self) -> dict[str, Any]:
        """The ``--json`` document."""
        return {
            "detections": [d.as_dict() for d in self.detections],
            "false_alarms_no_drift": self.false_alarms_no_drift,
            "false_alarms": [
                {"day": day, "study": study, **alert.as_dict()}
                for day, study, alert in self.clean.alerts
            ],
            "studies_per_run": self.options.studies,
            "days": self.options.days,
            "seed": self.options.seed,
            "pools": self.pool_sizes,
            "options": {k: v for k, v in dataclasses.asdict(self.options).items() if k != "seed"},
        }


def _monitors(
    pools: Pools, baseline: dict[str, float], seed: int
) -> tuple[DriftMonitor, PrevalenceMonitor, PerformanceMonitor, FairnessMonitor]:
    fair_labels = [
        label
        for label in (
            Finding.LUNG_OPACITY.value,
            Finding.PLEURAL_EFFUSION.value,
            Finding.SUPPORT_DEVICES.value,
        )
        if label in pools.thresholds
    ]
    return (
        DriftMonitor(SIMULATION_DRIFT, seed=seed),
        PrevalenceMonitor(SIMULATION_PREVALENCE),
        PerformanceMonitor(replace(SIMULATION_PERFORMANCE, baseline_auc=baseline)),
        FairnessMonitor(
            replace(SIMULATION_FAIRNESS, thresholds={k: pools.thresholds[k] for k in fair_labels}),
            seed=seed,
        ),
    )


def run_scenario(
    pools: Pools,
    options: SimulationOptions,
    scenario: Scenario,
    baseline: dict[str, float],
    progress: Progress | None = None,
) -> RunResult:
    """Replay ``options.days`` days through every monitor, drifting from ``inject_day``."""
    drift, prevalence, performance, fairness = _monitors(pools, baseline, options.seed)
    label_index = pools.labels.index(options.prevalence_label)
    odds = np.array(
        [
            options.prevalence_factor if s.truth.get(options.prevalence_label) else 1.0
            for s in pools.base
        ]
    )
    weights = odds / odds.sum()
    alerts: list[tuple[int, int, Alert]] = []
    seen: list[StudyObservation] = []
    truth: dict[str, dict[str, int]] = {}
    group_auc: list[tuple[int, float, float]] = []
    studies = 0
    for day in range(options.days):
        date = _START + dt.timedelta(days=day)
        rng = np.random.default_rng(np.random.SeedSequence([options.seed, 11, day]))
        drifting = scenario is not Scenario.NONE and day >= options.inject_day
        if drifting and scenario is Scenario.PREVALENCE:
            picks = rng.choice(len(pools.base), size=options.studies_per_day, p=weights)
        else:
            picks = rng.integers(0, len(pools.base), size=options.studies_per_day)
        flips = rng.random((options.studies_per_day, len(pools.labels))) < options.label_flip
        todays: list[StudyObservation] = []
        for k, index in enumerate(picks):
            study = pools.base[int(index)]
            if drifting and scenario is Scenario.ACQUISITION:
                study = pools.acquisition.get(int(index), study)
            elif drifting and scenario is Scenario.OUTPUT:
                study = pools.output[int(index)]
            uid = f"sim-{day}-{k}"
            labels = dict(study.truth)
            flipped = drifting and scenario is Scenario.SUBGROUP_PERFORMANCE
            if flipped and study.group == options.drift_group:
                labels = {
                    label: (1 - v) if flips[k, pools.labels.index(label)] else v
                    for label, v in labels.items()
                    if label in pools.labels
                }
            truth[uid] = labels
            todays.append(
                replace(
                    study.observation,
                    study_instance_uid=uid,
                    date=date,
                    patient_id=f"sim-{day}-{k}",
                )
            )
        studies += len(todays)
        seen.extend(todays)
        raised = drift.update(date, todays) + prevalence.update(date, todays)
        performance.add(todays, {o.study_instance_uid: truth[o.study_instance_uid] for o in todays})
        raised += performance.evaluate(date)
        if day >= 14 and day % 7 == 0:
            start = date - dt.timedelta(days=fairness.settings.window_days - 1)
            seen = [o for o in seen if o.date >= start]
            raised += fairness.evaluate(date, seen, truth)
        alerts.extend((day, studies, a) for a in raised)
        group = [
            o
            for o in performance.observations
            if o.group == options.drift_group and o.date > date - dt.timedelta(days=30)
        ]
        y = np.array([truth[o.study_instance_uid].get(options.prevalence_label, 0) for o in group])
        if 2 <= y.sum() < len(y) - 1:
            p = np.array([o.probabilities[label_index] for o in group])
            est = delong_ci(y.astype(bool), p, 0.99)
            group_auc.append((day, est.auc, float(est.ci[1])))
        if progress:
            progress(f"run {scenario.value}", day + 1, options.days)
    return RunResult(
        scenario=scenario,
        alerts=alerts,
        drift=drift.history,
        prevalence=prevalence.history,
        performance=performance.history,
        group_auc=group_auc,
    )


def simulate(
    options: SimulationOptions,
    *,
    scenarios: Sequence[Scenario] = tuple(DETECTED_BY),
    progress: Progress | None = None,
) -> SimulationReport:
    """Build the pools, replay the drift-free run and one run per scenario."""
    options.validate()
    pools = build_pools(options, progress)
    baseline = validated_baseline(pools)
    clean = run_scenario(pools, options, Scenario.NONE, baseline, progress)
    runs = {s: run_scenario(pools, options, s, baseline, progress) for s in scenarios}
    detections = []
    injected_study = options.inject_day * options.studies_per_day
    for scenario, result in runs.items():
        kind = DETECTED_BY[scenario]
        before = [a for a in result.alerts if a[2].kind is kind and a[0] < options.inject_day]
        after = [a for a in result.alerts if a[2].kind is kind and a[0] >= options.inject_day]
        first = after[0] if after else None
        detections.append(
            Detection(
                kind=kind,
                scenario=scenario,
                injected_at_study=injected_study,
                detected_at_study=None if first is None else first[1],
                injected_at_day=options.inject_day,
                detected_at_day=None if first is None else first[0],
                false_alarms_before=len(before),
            )
        )
    return SimulationReport(
        options=options,
        detections=detections,
        clean=clean,
        runs=runs,
        baseline_auc=baseline,
        pool_sizes={
            "base": len(pools.base),
            "acquisition": len(pools.acquisition),
            "output": len(pools.output),
        },
    )


def save_plots(report: SimulationReport, folder: Path) -> list[Path]:
    """Draw the charts of each detection and the delays as PNGs in ``folder``.

    ``drift_charts.png``: per scenario, the statistic that detected it, drift run
    against the drift-free run, with the injection day and the alarm bound;
    ``detection_delays.png``: days from injection to the first alert of each kind.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    o = report.options
    start = _START.toordinal()
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), layout="constrained")

    def drift_series(run: RunResult, site: str | None, attr: str) -> tuple[list[int], list[float]]:
        best: dict[int, float] = {}
        for p in run.drift:
            if site is None or p.site == site:
                d = p.date.toordinal() - start
                best[d] = max(best.get(d, 0.0), float(getattr(p, attr)))
        days = sorted(best)
        return days, [best[d] for d in days]

    def prevalence_series(run: RunResult) -> tuple[list[int], list[float]]:
        best: dict[int, float] = {}
        for p in run.prevalence:
            if p.label == o.prevalence_label:
                best[p.date.toordinal() - start] = max(p.upper, p.lower)
        days = sorted(best)
        return days, [best[d] for d in days]

    panels: list[
        tuple[Scenario, str, Callable[[RunResult], tuple[list[int], list[float]]], float]
    ] = [
        (
            Scenario.ACQUISITION,
            f"acquisition: CUSUM at site {o.drift_site}",
            lambda r: drift_series(r, o.drift_site, "acquisition_cusum"),
            SIMULATION_DRIFT.cusum_h,
        ),
        (
            Scenario.OUTPUT,
            "output: largest output CUSUM over sites",
            lambda r: drift_series(r, None, "output_cusum"),
            SIMULATION_DRIFT.cusum_h,
        ),
        (
            Scenario.PREVALENCE,
            f"prevalence: CUSUM of {o.prevalence_label} calls",
            prevalence_series,
            SIMULATION_PREVALENCE.cusum_h,
        ),
        (
            Scenario.SUBGROUP_PERFORMANCE,
            f"group {o.drift_group}: 30-day {o.prevalence_label} AUC (99% CI high)",
            lambda r: ([d for d, _, _ in r.group_auc], [h for _, _, h in r.group_auc]),
            report.baseline_auc.get(o.prevalence_label, float("nan"))
            - SIMULATION_PERFORMANCE.margin,
        ),
    ]
    for ax, (scenario, title, series, bound) in zip(axes.ravel(), panels, strict=True):
        if scenario in report.runs:
            ax.plot(*series(report.runs[scenario]), color="tab:red", label="drift run")
        ax.plot(*series(report.clean), color="tab:blue", linestyle="--", label="drift-free run")
        ax.axvline(o.inject_day, color="grey", linestyle=":", label="injected")
        ax.axhline(bound, color="black", linewidth=0.8, label="alarm bound")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("day")
        ax.legend(fontsize=7)
    charts = folder / "drift_charts.png"
    fig.savefig(charts, dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
    names = [d.kind.value for d in report.detections]
    delays = [
        float("nan") if d.detected_at_day is None else d.detected_at_day - d.injected_at_day
        for d in report.detections
    ]
    ax.barh(names, delays, color="tab:orange")
    for i, value in enumerate(delays):
        text = "missed" if np.isnan(value) else f"{value:.0f} d"
        ax.text(0 if np.isnan(value) else value, i, f" {text}", va="center", fontsize=8)
    ax.set_xlabel(f"days from injection to first alert ({o.studies_per_day} studies/day)")
    delays_path = folder / "detection_delays.png"
    fig.savefig(delays_path, dpi=90)
    plt.close(fig)
    return [charts, delays_path]


__all__ = [
    "DETECTED_BY",
    "Detection",
    "PoolStudy",
    "Pools",
    "RunResult",
    "Scenario",
    "SimulationOptions",
    "SimulationReport",
    "build_pools",
    "recalibrated",
    "run_scenario",
    "save_plots",
    "simulate",
    "validated_baseline",
]
