"""Leave-one-site-out runs: score a phantom cohort by held-out site, with each remedy.

Two ways in (:mod:`overread.evaluation.held_out_sites` holds the statistics):

- :func:`loso_with_package`: one model package, nothing trained. The cohort is
  read once; test-time augmentation's first view is the unaltered image, so one
  pass gives both ``none`` (view 0) and ``tta`` (the views' mean). For each
  held-out site, per-site calibration (:mod:`overread.evaluation.site_calibration`,
  what the service applies) is fitted on the *other* sites' studies and applied to
  it: a site without a labelled sample keeps the package's calibration, as in
  service; with ``site_sample`` patients of the held-out site labelled, those few
  studies are its sample (its map and its own operating point, when they meet the
  stated minimum) and are left out of every remedy's figures.
- :func:`loso_with_training`: one package per fold and per chain, trained on the
  other sites (patients with any study at the held-out site left out of training
  as well), so harmonisation, which changes the model's input, can be measured.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from overread.errors import EvaluationError
from overread.evaluation.held_out_sites import HeldOutCohort
from overread.evaluation.inputs import read_csv_table
from overread.inference.pipeline import Pipeline

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class LosoOptions:
    """Settings of a leave-one-site-out run.

    Parameters
    ----------
    label
        The finding evaluated (default: the label whose rarest site has the most
        positive studies, chosen from the truth alone).
    site_column
        The truth.csv column naming each study's site.
    tta_views
        Test-time augmentation views (the original included) for ``tta`` and ``all``.
    calibration
        Per-site map (:mod:`overread.evaluation.site_calibration`): ``temperature``
        or ``isotonic``.
    min_site_cases
        Fewest labelled studies for a site's own map (default: the stated minimum
        of :mod:`overread.evaluation.site_calibration`); fewer keep the package's.
    site_sample
        Patients of the held-out site whose labelled studies join the fitting as
        that site's own calibration sample (0: none, the unseen-site case).
    batch_size
        Images per forward pass.
    """

    label: str | None = None
    site_column: str = "Site"
    tta_views: int = 4
    calibration: str = "temperature"
    min_site_cases: int | None = None
    site_sample: int = 0
    batch_size: int = 16


@dataclass
class _Scored:
    """Probabilities of one package on the cohort's studies: none, TTA mean and spread."""

    none: np.ndarray
    tta: np.ndarray
    spread: np.ndarray
    ok: np.ndarray
    threshold: float
    point: str
    points: dict[str, float]


def _cohort_table(cohort: Path, site_column: str) -> pd.DataFrame:
    truth_path = cohort / "truth.csv"
    table = read_csv_table(truth_path, "truth")
    if site_column not in table.columns:
        raise EvaluationError(
            f"{truth_path}: no site column {site_column!r} (--site-column; the columns: "
            f"{', '.join(map(str, table.columns))})"
        )
    for column in ("Path", "PatientID"):
        if column not in table.columns:
            raise EvaluationError(
                f"{truth_path}: no {column} column; is {cohort} a phantom cohort?"
            )
    sites = sorted({str(s).strip() for s in table[site_column].dropna()} - {""})
    if len(sites) < 2:
        raise EvaluationError(
            f"{truth_path}: leave-one-site-out needs studies of at least two sites in "
            f"column {site_column!r}; found {len(sites)}{f' ({sites[0]})' if sites else ''}"
        )
    return table


def choose_label(table: pd.DataFrame, labels: Sequence[str], site_column: str) -> str:
    """The label whose rarest site has the most positives (then the most negatives)."""
    best: tuple[int, int, str] | None = None
    for label in labels:
        if label not in table.columns:
            continue
        y = pd.to_numeric(table[label], errors="coerce")
        per_site = y.groupby(table[site_column].astype(str))
        pos = int(per_site.apply(lambda s: int((s == 1).sum())).min())
        neg = int(per_site.apply(lambda s: int((s == 0).sum())).min())
        key = (min(pos, neg), pos, label)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None:
        raise EvaluationError("none of the model's labels is a column of the cohort's truth")
    return best[2]


def score_package(
    package: str | Path,
    paths: Sequence[str],
    label: str,
    *,
    tta_views: int,
    batch_size: int = 16,
) -> _Scored:
    """One pass of ``package`` over ``paths`` with ``tta_views`` views: the unaltered
    view's probability, the views' mean and their standard deviation, for ``label``."""
    pipeline = Pipeline.from_name(str(package), tta_views=tta_views, mc_dropout=0)
    if label not in pipeline.labels:
        raise EvaluationError(f"{package}: the model has no label {label!r}")
    column = pipeline.labels.index(label)
    n = len(paths)
    none = np.full(n, np.nan)
    tta = np.full(n, np.nan)
    spread = np.full(n, np.nan)
    for start in range(0, n, batch_size):
        admitted = pipeline.admit(list(paths[start : start + batch_size]), False)
        ready = [(start + i, x) for i, (_, x) in enumerate(admitted) if x is not None]
        if not ready:
            continue
        samples, _ = pipeline.probability_samples(np.stack([x for _, x in ready]))
        per_view = samples.shape[0] // max(1, tta_views)
        rows = np.array([i for i, _ in ready])
        none[rows] = samples[:per_view, :, column].mean(axis=0)
        tta[rows] = samples[:, :, column].mean(axis=0)
        spread[rows] = samples[:, :, column].std(axis=0)
    manifest = pipeline.package.manifest
    threshold = float(pipeline.package.thresholds()[column])
    points = dict(manifest.operating_points.get(label, {}))
    return _Scored(
        none, tta, spread, np.isfinite(none), threshold, manifest.default_operating_point, points
    )


def _sample_patients(patients: np.ndarray, k: int) -> set[str]:
    """``k`` patients drawn by hash of their id (the same whatever the order)."""
    unique = sorted(set(patients.tolist()), key=lambda p: hashlib.sha256(p.encode()).hexdigest())
    return set(unique[:k])


def _site_calibrated(
    truth: np.ndarray,
    raw: np.ndarray,
    sites: np.ndarray,
    patients: np.ndarray,
    fit_rows: np.ndarray,
    apply_rows: np.ndarray,
    scored: _Scored,
    label: str,
    options: LosoOptions,
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """Per-site calibration (:mod:`overread.evaluation.site_calibration`, as the service
    applies it) fitted on ``fit_rows``, applied to ``apply_rows``: the probabilities,
    each study's threshold at the package's operating point, and why the held-out
    site kept the package's calibration (None when it got its own map)."""
    from overread.evaluation.site_calibration import (
        find_site,
        fit_sites,
        site_probabilities,
        site_thresholds,
    )

    known = fit_rows & np.isfinite(truth)
    global_points = {label: scored.points}
    section = fit_sites(
        truth[known][:, None],
        raw[known][:, None],
        sites[known],
        [label],
        method=options.calibration,
        min_images=options.min_site_cases,
        global_points=global_points,
        groups=patients[known],
    )
    values = raw[apply_rows].copy()
    thresholds = np.full(values.shape, scored.threshold)
    held_out = {str(s) for s in sites[apply_rows]}
    reason: str | None = None
    for site in held_out:
        name = find_site(section, site)
        rows = sites[apply_rows] == site
        if name is None:
            reason = "no labelled sample of this site: the package's calibration is kept"
            continue
        entry = section.sites[name]
        if label in entry.fallback:
            reason = entry.fallback[label]
        values[rows] = site_probabilities(values[rows][:, None], entry, [label])[:, 0]
        thresholds[rows] = site_thresholds(entry, [label], scored.point, global_points)[0]
    return values, thresholds, reason


def _calibration_note(options: LosoOptions) -> str:
    if options.site_sample == 0:
        return (
            "per-site calibration: fitted per site on the other sites' studies; a held-out "
            "site has no labelled sample, so it keeps the package's calibration (the "
            "service's fallback for a site without one): give --site-sample to measure it"
        )
    return (
        f"per-site calibration ({options.calibration}, minimum sample: "
        f"{options.min_site_cases or 'the library default'}): {options.site_sample} patients of each held-out site form its labelled "
        "sample and are left out of every remedy's figures"
    )


def _fold_rows(
    sites: np.ndarray, patients: np.ndarray, site: str, sample: int
) -> tuple[np.ndarray, np.ndarray]:
    """(fitting rows, evaluated rows) of the fold that holds ``site`` out."""
    here = sites == site
    fit = ~here
    evaluated = here.copy()
    if sample > 0:
        chosen = _sample_patients(patients[here], sample)
        own = here & np.isin(patients, list(chosen))
        fit = fit | own
        evaluated = here & ~own
    return fit, evaluated


def loso_with_package(
    package: str,
    cohort: Path,
    options: LosoOptions = LosoOptions(),
    *,
    echo: Echo | None = None,
) -> HeldOutCohort:
    """Leave-one-site-out scores of one package and the remedies that need no training."""
    say: Echo = echo or (lambda msg: log.info("%s", msg))
    table = _cohort_table(cohort, options.site_column)
    probe = Pipeline.from_name(package, tta_views=1, mc_dropout=0)
    label = options.label or choose_label(table, probe.labels, options.site_column)
    paths = [str(cohort / p) for p in table["Path"].astype(str)]
    started = time.perf_counter()
    scored = score_package(
        package, paths, label, tta_views=options.tta_views, batch_size=options.batch_size
    )
    say(
        f"scored {len(paths)} studies with {options.tta_views} view(s) in "
        f"{time.perf_counter() - started:.1f} s"
    )
    truth = pd.to_numeric(table[label], errors="coerce").to_numpy(dtype=np.float64)
    sites = table[options.site_column].astype(str).to_numpy()
    patients = table["PatientID"].astype(str).to_numpy()
    usable = scored.ok & np.isfinite(truth)
    notes = []
    if (~scored.ok).any():
        notes.append(f"{int((~scored.ok).sum())} studies could not be analysed and are left out")
    n = len(paths)
    out = {name: np.full(n, np.nan) for name in ("none", "tta", "per_site_calibration", "all")}
    limits = {name: np.full(n, np.nan) for name in out}
    evaluated_any = np.zeros(n, dtype=bool)
    for site in sorted(set(sites[usable].tolist())):
        fit, evaluated = _fold_rows(sites, patients, site, options.site_sample)
        fit &= usable
        evaluated &= usable
        evaluated_any |= evaluated
        out["none"][evaluated] = scored.none[evaluated]
        limits["none"][evaluated] = scored.threshold
        out["tta"][evaluated] = scored.tta[evaluated]
        limits["tta"][evaluated] = scored.threshold
        for name, raw in (("per_site_calibration", scored.none), ("all", scored.tta)):
            values, thresholds, reason = _site_calibrated(
                truth, raw, sites, patients, fit, evaluated, scored, label, options
            )
            if reason:
                notes.append(f"{name} at {site}: {reason}")
            out[name][evaluated] = values
            limits[name][evaluated] = thresholds
    notes.append(_calibration_note(options))
    rows = evaluated_any
    result = HeldOutCohort(
        label=label, truth=truth[rows], sites=sites[rows], patients=patients[rows], notes=notes
    )
    for name in out:
        result.add(name, out[name][rows], limits[name][rows])
    result.notes.append(
        f"TTA: {options.tta_views} views, mean aggregated; mean spread (SD across views) "
        f"{float(np.nanmean(scored.spread[rows])):.4f}"
    )
    return result


def _fold_labels(cohort: Path, site: str, site_column: str, folder: Path) -> Path:
    """labels.csv of the other sites' studies, without patients seen at ``site``."""
    labels = read_csv_table(cohort / "labels.csv", "labels")
    if site_column not in labels.columns or "PatientID" not in labels.columns:
        raise EvaluationError(f"{cohort}/labels.csv: no {site_column} or PatientID column")
    seen = set(labels.loc[labels[site_column].astype(str) == site, "PatientID"].astype(str))
    keep = (labels[site_column].astype(str) != site) & ~labels["PatientID"].astype(str).isin(seen)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "labels.csv"
    labels.loc[keep].to_csv(path, index=False)
    return path


#: Harmonisation measured when the training config asks for none.
DEFAULT_HARMONISATION: dict[str, Any] = {
    "vendor_lut": "ignore",
    "intensity": "histogram_match",
    "clahe": True,
}


def loso_with_training(
    config_path: Path,
    cohort: Path,
    workdir: Path,
    options: LosoOptions = LosoOptions(),
    *,
    echo: Echo | None = None,
) -> HeldOutCohort:
    """Leave-one-site-out with two packages trained per fold: the config's plain
    chain and its harmonised chain (the config's ``[harmonisation]``, or
    :data:`DEFAULT_HARMONISATION` when it asks for none)."""
    from overread.training.config import HarmonisationConfig, load_config
    from overread.training.run import run_training

    say: Echo = echo or (lambda msg: log.info("%s", msg))
    config = load_config(config_path)
    harmonised = config.harmonisation
    notes: list[str] = []
    if harmonised == HarmonisationConfig():
        harmonised = HarmonisationConfig(**DEFAULT_HARMONISATION)
        notes.append(f"harmonisation (config has none): {DEFAULT_HARMONISATION}")
    else:
        notes.append(f"harmonisation: {harmonised.model_dump()}")
    table = _cohort_table(cohort, options.site_column)
    truth_labels = [c for c in table.columns if c not in ("Path", "PatientID", options.site_column)]
    label = options.label or choose_label(table, truth_labels, options.site_column)
    paths = [str(cohort / p) for p in table["Path"].astype(str)]
    truth = pd.to_numeric(table[label], errors="coerce").to_numpy(dtype=np.float64)
    sites = table[options.site_column].astype(str).to_numpy()
    patients = table["PatientID"].astype(str).to_numpy()
    n = len(paths)
    names = ("none", "harmonisation", "per_site_calibration", "tta", "all")
    out = {name: np.full(n, np.nan) for name in names}
    limits = {name: np.full(n, np.nan) for name in names}
    evaluated_any = np.zeros(n, dtype=bool)
    plain_data = config.data.model_copy(
        update={"phantom": None, "test_phantom": None, "format": "phantom", "root": cohort}
    )
    for site in sorted(set(sites.tolist())):
        folder = workdir / f"fold-{site}"
        fold_csv = _fold_labels(cohort, site, options.site_column, folder)
        data = plain_data.model_copy(update={"labels_csv": fold_csv})
        packages = {}
        for kind, section in (("plain", HarmonisationConfig()), ("harmonised", harmonised)):
            fold_config = config.model_copy(
                update={
                    "data": data,
                    "harmonisation": section,
                    "output": folder / kind / "run",
                    "progress": False,
                }
            )
            started = time.perf_counter()
            result = run_training(fold_config, resume=False, echo=lambda _msg: None)
            if result.package is None:
                raise EvaluationError(f"fold {site} ({kind}): training wrote no package")
            packages[kind] = result.package
            say(f"fold {site}: trained {kind} in {time.perf_counter() - started:.0f} s")
        plain = score_package(
            packages["plain"],
            paths,
            label,
            tta_views=options.tta_views,
            batch_size=options.batch_size,
        )
        harm = score_package(
            packages["harmonised"],
            paths,
            label,
            tta_views=options.tta_views,
            batch_size=options.batch_size,
        )
        usable = plain.ok & harm.ok & np.isfinite(truth)
        fit, evaluated = _fold_rows(sites, patients, site, options.site_sample)
        fit &= usable
        evaluated &= usable
        evaluated_any |= evaluated
        for name, values, threshold in (
            ("none", plain.none, plain.threshold),
            ("harmonisation", harm.none, harm.threshold),
            ("tta", plain.tta, plain.threshold),
        ):
            out[name][evaluated] = values[evaluated]
            limits[name][evaluated] = threshold
        for name, raw, source in (
            ("per_site_calibration", plain.none, plain),
            ("all", harm.tta, harm),
        ):
            values, thresholds, reason = _site_calibrated(
                truth, raw, sites, patients, fit, evaluated, source, label, options
            )
            if reason:
                notes.append(f"{name} at {site}: {reason}")
            out[name][evaluated] = values
            limits[name][evaluated] = thresholds
    notes.append(_calibration_note(options))
    rows = evaluated_any
    result_cohort = HeldOutCohort(
        label=label, truth=truth[rows], sites=sites[rows], patients=patients[rows], notes=notes
    )
    for name in names:
        result_cohort.add(name, out[name][rows], limits[name][rows])
    return result_cohort


__all__ = [
    "DEFAULT_HARMONISATION",
    "LosoOptions",
    "choose_label",
    "loso_with_package",
    "loso_with_training",
    "score_package",
]
