"""Operating points and calibration fitted on the validation split, for the model package.

Thresholds are chosen on validation data, never on the test set, so the test
numbers in the model card are honest. Three operating points per label:
``balanced`` (Youden's J, max sensitivity + specificity), ``high sensitivity``
(the highest threshold keeping sensitivity >= 0.9, for triage/rule-out, and never
above balanced) and ``high specificity`` (the lowest keeping specificity >= 0.9, for
alerts, and never below balanced).
Calibration is Platt scaling per label (a logistic fit on the logit), which
corrects the over-confidence that ``pos_weight`` deliberately introduces.

The serving pipeline calibrates first and then compares the *calibrated*
probability with the threshold, so the thresholds must be chosen on calibrated
validation probabilities (:func:`apply_platt` then :func:`operating_points`):
a threshold chosen on raw scores, applied to calibrated ones, can lie above every
calibrated probability and give a sensitivity of 0.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from overread.errors import ConfigError
from overread.evaluation.operating_points import order_points, standard_points

if TYPE_CHECKING:
    from overread.models.package import ModelPackage


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.asarray(np.log(p / (1 - p)))


def operating_points(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str]
) -> dict[str, dict[str, float]]:
    """``{label: {"balanced": t, "high sensitivity": t, "high specificity": t}}``.

    A label without both classes in validation gets 0.5 everywhere. The points are
    ordered (:func:`~overread.evaluation.operating_points.order_points`): a strong
    label whose balanced point already keeps 90 % sensitivity has its ``high
    sensitivity`` point at balanced, never above it.
    """
    out: dict[str, dict[str, float]] = {}
    for c, label in enumerate(labels):
        keep = mask[:, c] > 0
        y = targets[keep, c] > 0.5
        if y.all() or not y.any():
            out[label] = {"balanced": 0.5, "high sensitivity": 0.5, "high specificity": 0.5}
            continue
        out[label] = standard_points(y, probs[keep, c])
    return out


def platt_calibration(
    probs: np.ndarray, targets: np.ndarray, mask: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    """Per-label ``p' = sigmoid(a * logit + b)`` fitted on validation (the manifest's format).

    Labels with a single class in validation keep the identity (a=1, b=0).
    """
    params: dict[str, dict[str, float]] = {}
    for c, label in enumerate(labels):
        keep = mask[:, c] > 0
        y = (targets[keep, c] > 0.5).astype(int)
        if y.min() == y.max():
            params[label] = {"a": 1.0, "b": 0.0}
            continue
        model = LogisticRegression(C=100.0)
        model.fit(_logit(probs[keep, c])[:, None], y)
        a, b = float(model.coef_[0, 0]), float(model.intercept_[0])
        params[label] = {"a": a if math.isfinite(a) else 1.0, "b": b if math.isfinite(b) else 0.0}
    return {"method": "platt", "parameters": params}


def apply_platt(probs: np.ndarray, calibration: dict[str, Any], labels: list[str]) -> np.ndarray:
    """Calibrated probabilities ``sigmoid(a * logit(p) + b)`` per label (as served)."""
    params = calibration.get("parameters", {})
    out = np.array(probs, dtype=np.float64, copy=True)
    for c, label in enumerate(labels):
        ab = params.get(label)
        if ab:
            z = ab["a"] * _logit(out[:, c]) + ab["b"]
            out[:, c] = 1.0 / (1.0 + np.exp(-z))
    return out


def prior_shift(
    calibration: dict[str, Any],
    points: dict[str, dict[str, float]],
    prevalences: dict[str, tuple[float, float]],
) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Platt calibration and thresholds moved from a training prevalence to another.

    ``prevalences`` maps a label to ``(fitted at, served at)``: a label enriched in
    the cohort the calibration was fitted on (a phantom cohort generated with
    ``Fracture`` at 12 % when the population has 5 %) over-states its probability
    by the ratio of prior odds. The standard prior-shift correction (Saerens et al.,
    Neural Computation 2002) adds ``logit(served) - logit(fitted)`` to the label's
    calibrated logit, so ``b`` moves by that much; each threshold moves the same way
    on the logit scale, so every image is on the same side of each threshold
    (positive or not). Threshold proximity, which decides *indeterminate*, is measured
    on the probability scale, so the band of indeterminate findings around a threshold
    moves with it. Only Platt calibration can be shifted (a ValueError otherwise).
    """
    if calibration.get("method", "platt") != "platt":
        raise ValueError(f"a prior shift needs Platt calibration, not {calibration['method']!r}")
    params = copy.deepcopy(calibration.get("parameters", {}))
    moved = copy.deepcopy(points)
    for label, (fitted, served) in prevalences.items():
        if not (0.0 < fitted < 1.0 and 0.0 < served < 1.0):
            raise ValueError(f"{label}: prevalences {fitted}, {served} must lie in (0, 1)")
        delta = math.log(served / (1 - served)) - math.log(fitted / (1 - fitted))
        ab = params.setdefault(label, {"a": 1.0, "b": 0.0})
        ab["b"] = float(ab["b"] + delta)
        for name, threshold in moved.get(label, {}).items():
            z = float(_logit(np.array([threshold]))[0]) + delta
            moved[label][name] = 1.0 / (1.0 + math.exp(-z))
    return {**calibration, "method": "platt", "parameters": params}, moved


def write_prior_shift_package(
    source: ModelPackage,
    out: Path,
    *,
    version: str,
    prevalences: dict[str, tuple[float, float]],
    key: bytes | None = None,
) -> ModelPackage:
    """A new version of ``source`` with :func:`prior_shift` applied to the named labels.

    The manifest's training record keeps what was shifted (``prior_shift``), and the
    model card gets a section saying so: its evaluation figures were computed before
    the shift (sensitivity and specificity at each operating point hold; calibration
    errors and the indeterminate band do not).
    """
    from overread.models.package import derive_package

    manifest = source.manifest
    already = sorted(set(prevalences) & set(manifest.training.get("prior_shift") or {}))
    if already:
        raise ConfigError(
            f"prior shift: {', '.join(map(repr, already))} is already shifted in {source.name} "
            f"{source.version} (its training record); shifting again would double it"
        )
    unknown = sorted(set(prevalences) - set(source.labels))
    if unknown:
        raise ConfigError(
            f"prior shift: {', '.join(map(repr, unknown))} is not a label of {source.name}"
        )
    try:
        calibration, points = prior_shift(
            manifest.calibration.model_dump(mode="python"),
            {label: dict(p) for label, p in manifest.operating_points.items()},
            prevalences,
        )
    except ValueError as exc:
        raise ConfigError(f"prior shift: {exc}") from None
    training = dict(manifest.training)
    done = dict(training.get("prior_shift") or {})
    for label, (fitted, served) in prevalences.items():
        done[label] = {"fitted": fitted, "served": served, "version": version}
    training["prior_shift"] = done

    def note(staging: Path) -> None:
        card = staging / "MODEL_CARD.md"
        if not card.is_file():
            return
        lines = [f"\n## Prior shift ({source.version} -> {version})\n"]
        for label, (fitted, served) in prevalences.items():
            delta = math.log(served / (1 - served)) - math.log(fitted / (1 - fitted))
            lines.append(
                f"- {label}: calibration and thresholds moved from a prevalence of {fitted:g} "
                f"to {served:g} (logit {delta:+.3f})."
            )
        lines.append(
            "- The evaluation figures above were computed before the shift: sensitivity and "
            "specificity at each operating point hold (every image stays on the same side "
            "of each threshold); calibration errors and the indeterminate band do not."
        )
        text = card.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(lines) + "\n"
        card.write_text(text, encoding="utf-8")

    return derive_package(
        source,
        out,
        version=version,
        key=key,
        contents=note,
        calibration=calibration,
        operating_points=points,
        training=training,
    )


def _same(a: Any, b: float) -> bool:
    return isinstance(a, int | float) and math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12)


def write_ordered_points_package(
    source: ModelPackage, out: Path, *, version: str, key: bytes | None = None
) -> tuple[ModelPackage, dict[str, Any]]:
    """A new version of ``source`` with every label's named points ordered
    (:func:`~overread.evaluation.operating_points.order_points`), and the record of
    what moved (``{"version", "from_version", "moved", "moved_sites"?}``).

    A site recalibration's own points (``site_calibration``) are ordered too.
    Calibration, weights and every image's probability are unchanged; only a
    ``high sensitivity`` point above ``balanced`` (or a ``high specificity`` point
    below it) moves to ``balanced``, which still keeps its target. The manifest's
    training record keeps what moved (``points_ordered``, keyed by version) and the
    model card gets a section saying so. Nothing to move is refused (a ConfigError), so a version is
    never issued that changes nothing.
    """
    from overread.models.package import derive_package

    points: dict[str, dict[str, float]] = {}
    moved: dict[str, dict[str, dict[str, float]]] = {}
    for label, named in source.manifest.operating_points.items():
        points[label] = order_points(named)
        for name, threshold in named.items():
            if points[label][name] != float(threshold):
                moved.setdefault(label, {})[name] = {
                    "from": float(threshold),
                    "to": points[label][name],
                }
    # A site's recalibration carries its own named points: ordered the same way.
    sites = source.manifest.site_calibration
    moved_sites: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    if sites is not None:
        entries = {}
        for site, entry in sites.sites.items():
            maps = {}
            for label, label_map in entry.labels.items():
                ordered = order_points(label_map.operating_points)
                for name, threshold in label_map.operating_points.items():
                    if ordered[name] != float(threshold):
                        moved_sites.setdefault(site, {}).setdefault(label, {})[name] = {
                            "from": float(threshold),
                            "to": ordered[name],
                        }
                maps[label] = label_map.model_copy(update={"operating_points": ordered})
            entries[site] = entry.model_copy(update={"labels": maps})
        sites = sites.model_copy(update={"sites": entries})
    if not moved and not moved_sites:
        every_point_set: list[Mapping[str, float]] = list(source.manifest.operating_points.values())
        if sites is not None:
            every_point_set += [
                m.operating_points for e in sites.sites.values() for m in e.labels.values()
            ]
        orderable = any(
            "balanced" in p and {"high sensitivity", "high specificity"} & set(p)
            for p in every_point_set
        )
        raise ConfigError(
            f"order points: every label's named points of {source.name} {source.version} "
            "are already ordered (high sensitivity <= balanced <= high specificity)"
            if orderable
            else f"order points: {source.name} {source.version} has no balanced point with "
            "a high sensitivity or high specificity point to order"
        )
    record: dict[str, Any] = {"from_version": source.version, "moved": moved}
    if moved_sites:
        record["moved_sites"] = moved_sites
    training = dict(source.manifest.training)
    # Kept per version, so a later reissue adds to the history rather than replacing it.
    training["points_ordered"] = {**(training.get("points_ordered") or {}), version: record}
    # A moved point's threshold is now balanced's, so its recorded sensitivity and
    # specificity on an evaluated split are balanced's, where the split was measured
    # at this package's own thresholds. Figures measured at other thresholds (before
    # a prior shift, or by another package) would be stale: they are dropped.
    metrics = copy.deepcopy(dict(source.manifest.metrics))
    for evaluation in (metrics.get("evaluations") or {}).values():
        recorded = evaluation.get("operating_points") if isinstance(evaluation, dict) else None
        if not isinstance(recorded, dict):
            continue
        for label, names in moved.items():
            figures = recorded.get(label)
            if not isinstance(figures, dict):
                continue
            balanced = figures.get("balanced") or {}
            own = _same(balanced.get("threshold"), points[label]["balanced"])
            for name, change in names.items():
                if own and _same((figures.get(name) or {}).get("threshold"), change["from"]):
                    figures[name] = copy.deepcopy(balanced)
                else:
                    figures.pop(name, None)

    def note(staging: Path) -> None:
        card = staging / "MODEL_CARD.md"
        if not card.is_file():
            return
        lines = [
            f"\n## Named operating points ordered ({source.version} -> {version})\n",
            "Weights, calibration and probabilities are unchanged. Where a label's balanced "
            "point already kept 90 % sensitivity, its `high sensitivity` threshold lay above "
            "`balanced` (and `high specificity` below it where balanced already kept 90 % "
            "specificity), so picking that point flagged fewer (or more) findings than its "
            "name says. Each such point is now `balanced`, which still keeps its target; its "
            "sensitivity and specificity are now balanced's (the tables above show the old "
            "points; the manifest's evaluation figures are updated):",
            "",
            "| Label | Point | Was | Now |",
            "|---|---|---|---|",
        ]
        for label, names in moved.items():
            for name, change in names.items():
                lines.append(f"| {label} | {name} | {change['from']:.4f} | {change['to']:.4f} |")
        for site, labels in moved_sites.items():
            for label, names in labels.items():
                for name, change in names.items():
                    lines.append(
                        f"| {label} (site {site}) | {name} | {change['from']:.4f} "
                        f"| {change['to']:.4f} |"
                    )
        text = card.read_text(encoding="utf-8").rstrip("\n") + "\n" + "\n".join(lines) + "\n"
        card.write_text(text, encoding="utf-8")

    package = derive_package(
        source,
        out,
        version=version,
        key=key,
        contents=note,
        operating_points=points,
        training=training,
        metrics=metrics,
        **({"site_calibration": sites} if moved_sites else {}),
    )
    return package, {"version": version, **record}


def operating_point_performance(
    probs: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    points: dict[str, dict[str, float]],
    labels: list[str],
) -> dict[str, dict[str, dict[str, float | None]]]:
    """Sensitivity and specificity of every label's operating points on ``probs``.

    ``{label: {point: {"threshold", "sensitivity", "specificity"}}}``; ``None`` where a
    class is absent.
    """
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for c, label in enumerate(labels):
        keep = mask[:, c] > 0
        y = targets[keep, c] > 0.5
        p = probs[keep, c]
        out[label] = {}
        for name, threshold in points.get(label, {}).items():
            positive = p >= threshold
            out[label][name] = {
                "threshold": float(threshold),
                "sensitivity": float(positive[y].mean()) if y.any() else None,
                "specificity": float((~positive[~y]).mean()) if (~y).any() else None,
            }
    return out


__all__ = [
    "apply_platt",
    "operating_point_performance",
    "operating_points",
    "platt_calibration",
    "prior_shift",
    "write_ordered_points_package",
    "write_prior_shift_package",
]
