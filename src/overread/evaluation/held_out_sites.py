"""Held-out-site validation: how a model and each remedy fare at a site it never saw.

Leave-one-site-out: every site in turn is held out; anything that is fitted (a
recalibration map and its operating point, or a whole model with ``--train``) is
fitted on the other sites only, then applied to the held-out site. Each study is
therefore scored exactly once, by the fold that held its site out, and the
pooled held-out scores of all folds give each remedy's overall figures.

This module holds the statistics only; running models is
:mod:`overread.inference.held_out_sites`. Each remedy is a column of held-out
scores and per-study thresholds (each fold has its own operating point):

- per site: AUC with a patient-clustered DeLong interval (Obuchowski 1997),
  expected calibration error (15 equal-width bins) and sensitivity at the
  operating point, both with patient-level bootstrap intervals;
- per remedy, pooled over the held-out sites: the same, plus the paired DeLong
  test of its AUC against ``none`` on the same studies.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray
from overread.evaluation.bootstrap import bootstrap_statistic
from overread.evaluation.calibration import calibration_error
from overread.evaluation.delong import clustered_delong_ci, delong_test

#: The baseline every remedy is compared with.
BASELINE = "none"

#: Remedies in the order the table lists them.
REMEDY_ORDER = ("none", "harmonisation", "per_site_calibration", "tta", "all")


@dataclass(frozen=True)
class HeldOutScores:
    """One remedy's held-out scores: one per study, and the threshold that applied to it."""

    scores: FloatArray
    thresholds: FloatArray


@dataclass
class HeldOutCohort:
    """The studies of a leave-one-site-out run and every remedy's held-out scores."""

    label: str
    truth: FloatArray
    sites: np.ndarray
    patients: np.ndarray
    remedies: dict[str, HeldOutScores] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.truth)
        if len(self.sites) != n or len(self.patients) != n:
            raise EvaluationError("truth, sites and patients differ in length")

    def add(self, name: str, scores: FloatArray, thresholds: FloatArray) -> None:
        """Record a remedy's held-out scores (one per study, in cohort order)."""
        s = np.asarray(scores, dtype=np.float64)
        t = np.asarray(thresholds, dtype=np.float64)
        if s.shape != self.truth.shape or t.shape != self.truth.shape:
            raise EvaluationError(f"remedy {name}: {s.shape} scores for {self.truth.shape} studies")
        self.remedies[name] = HeldOutScores(s, t)

    @property
    def site_names(self) -> list[str]:
        return sorted({str(s) for s in self.sites})


def _metrics(
    truth: FloatArray,
    scores: FloatArray,
    thresholds: FloatArray,
    patients: np.ndarray,
    *,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    n_pos = int((truth == 1).sum())
    n_neg = int((truth == 0).sum())
    out: dict[str, Any] = {"n": int(truth.size), "n_positive": n_pos}
    if n_pos >= 2 and n_neg >= 2:
        est = clustered_delong_ci(truth, scores, patients)
        out["auc"] = est.auc
        out["auc_ci"] = [
            None if not np.isfinite(est.ci[0]) else est.ci[0],
            None if not np.isfinite(est.ci[1]) else est.ci[1],
        ]
    else:
        out["auc"] = None
        out["auc_ci"] = [None, None]
        out["reason"] = f"{n_pos} positive and {n_neg} negative studies: AUC not estimable"
    out["ece"] = calibration_error(truth, scores).ece if truth.size else None
    called = scores >= thresholds
    positive = truth == 1
    out["sensitivity"] = float(called[positive].mean()) if n_pos else None
    out["specificity"] = float((~called[~positive]).mean()) if n_neg else None

    def rates(rows: np.ndarray) -> FloatArray:
        y, s, c = truth[rows], scores[rows], called[rows]
        pos = y == 1
        if not pos.any():
            raise EvaluationError("no positives in the resample")
        return np.array([float(c[pos].mean()), calibration_error(y, s).ece])

    if n_pos and resamples > 0:
        boot = bootstrap_statistic(
            rates, int(truth.size), patients, n_resamples=resamples, seed=seed
        )
        lo, hi = boot.ci_low, boot.ci_high
        out["sensitivity_ci"] = [float(lo[0]), float(hi[0])]
        out["ece_ci"] = [float(lo[1]), float(hi[1])]
    return out


def summarise(cohort: HeldOutCohort, *, resamples: int = 500, seed: int = 0) -> dict[str, Any]:
    """The ``--json`` object: per held-out site (baseline figures, and every remedy's),
    and per remedy pooled over the held-out sites, with DeLong tests against ``none``."""
    if BASELINE not in cohort.remedies:
        raise EvaluationError("a leave-one-site-out summary needs the 'none' scores")
    base = cohort.remedies[BASELINE]
    sites: dict[str, Any] = {}
    for site in cohort.site_names:
        rows = cohort.sites.astype(str) == site
        per = {
            name: _metrics(
                cohort.truth[rows],
                r.scores[rows],
                r.thresholds[rows],
                cohort.patients[rows],
                resamples=resamples,
                seed=seed,
            )
            for name, r in cohort.remedies.items()
        }
        entry = dict(per[BASELINE])
        entry["remedies"] = {
            name: {k: m[k] for k in ("auc", "auc_ci", "ece", "sensitivity")}
            for name, m in per.items()
        }
        sites[site] = entry
    remedies: dict[str, Any] = {}
    for name in sorted(cohort.remedies, key=_order):
        r = cohort.remedies[name]
        entry = _metrics(
            cohort.truth, r.scores, r.thresholds, cohort.patients, resamples=resamples, seed=seed
        )
        if name != BASELINE:
            test = delong_test(cohort.truth, r.scores, base.scores)
            entry["auc_difference"] = test.difference
            entry["delong_p"] = test.p if np.isfinite(test.p) else None
        remedies[name] = entry
    return {
        "label": cohort.label,
        "n_studies": int(cohort.truth.size),
        "n_patients": len(set(cohort.patients.astype(str).tolist())),
        "sites": sites,
        "remedies": remedies,
        "notes": list(cohort.notes),
    }


def _order(name: str) -> tuple[int, str]:
    return (REMEDY_ORDER.index(name) if name in REMEDY_ORDER else len(REMEDY_ORDER), name)


def _fmt(value: Any, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _interval(pair: Sequence[Any] | None) -> str:
    if not pair or pair[0] is None or pair[1] is None:
        return ""
    return f" ({pair[0]:.3f}-{pair[1]:.3f})"


_TITLES = {
    "none": "none",
    "harmonisation": "harmonisation",
    "per_site_calibration": "per-site calibration",
    "tta": "test-time augmentation",
    "all": "all",
}


def remedies_table(summary: Mapping[str, Any], *, missing: Sequence[str] = ()) -> str:
    """The remedies table (Markdown) of a :func:`summarise` result.

    ``missing`` names remedies that were not run (a row saying so keeps the
    table's shape the same from one run to the next).
    """
    lines = [
        "| remedy | AUC (95% CI) | ΔAUC vs none | DeLong p | ECE (95% CI) | sensitivity (95% CI) |",
        "|---|---|---|---|---|---|",
    ]
    remedies = summary["remedies"]
    for name in sorted(set(remedies) | set(missing), key=_order):
        title = _TITLES.get(name, name)
        entry = remedies.get(name)
        if entry is None:
            lines.append(f"| {title} | not run | | | | |")
            continue
        diff = entry.get("auc_difference")
        p = entry.get("delong_p")
        lines.append(
            f"| {title} | {_fmt(entry['auc'])}{_interval(entry['auc_ci'])} | "
            f"{'' if diff is None else f'{diff:+.3f}'} | "
            f"{'' if p is None else f'{p:.3g}'} | "
            f"{_fmt(entry['ece'])}{_interval(entry.get('ece_ci'))} | "
            f"{_fmt(entry['sensitivity'])}{_interval(entry.get('sensitivity_ci'))} |"
        )
    lines.append("")
    lines.append(
        "| held-out site | studies | AUC (95% CI) | ECE | sensitivity | "
        + " | ".join(
            f"AUC {_TITLES.get(n, n)}" for n in sorted(remedies, key=_order) if n != BASELINE
        )
        + " |"
    )
    others = [n for n in sorted(remedies, key=_order) if n != BASELINE]
    lines.append("|---|---|---|---|---|" + "---|" * len(others))
    for site, entry in summary["sites"].items():
        cells = [_fmt(entry["remedies"][n]["auc"]) for n in others]
        lines.append(
            f"| {site} | {entry['n']} | {_fmt(entry['auc'])}{_interval(entry['auc_ci'])} | "
            f"{_fmt(entry['ece'])} | {_fmt(entry['sensitivity'])} | " + " | ".join(cells) + " |"
        )
    return "\n".join(lines) + "\n"


__all__ = [
    "BASELINE",
    "REMEDY_ORDER",
    "HeldOutCohort",
    "HeldOutScores",
    "remedies_table",
    "summarise",
]
