"""One evaluation run: :class:`EvaluationInputs` in, every reported number out.

:func:`evaluate` turns the inputs into the ``metrics.json`` dictionary the
report is drawn from; :func:`compare_models` adds paired tests against a
second model or reader.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray
from overread.evaluation.agreement import mcnemar, paired_table
from overread.evaluation.bootstrap import bootstrap_auc, patient_index
from overread.evaluation.calibration import brier_score, calibration_error
from overread.evaluation.conformal import conformal_report, selective_report
from overread.evaluation.delong import clustered_delong_ci, delong_ci, delong_test
from overread.evaluation.inputs import (
    EvaluationInputs,
    read_prediction_files,
    subgroup_column,
)
from overread.evaluation.multiplicity import Correction, adjust_p_values
from overread.evaluation.operating_points import (
    ThresholdRule,
    choose_threshold,
    operating_point,
    threshold_rule,
)
from overread.evaluation.roc import average_precision, micro_auc
from overread.evaluation.subgroups import fairness_report

logger = logging.getLogger(__name__)


def _clean(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _ci(pair: Sequence[float]) -> list[float | None]:
    return [_clean(float(v)) for v in pair]


def evaluate(
    inputs: EvaluationInputs,
    *,
    subgroups: Sequence[str] = (),
    n_resamples: int = 2000,
    subgroup_resamples: int = 200,
    rule: ThresholdRule | str = ThresholdRule.SPECIFICITY,
    target: float = 0.9,
    deployment_prevalence: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute the report's numbers: per-label discrimination with patient-level
    bootstrap and DeLong CIs, the operating point, calibration, and subgroup
    metrics and fairness gaps. A label that cannot be scored gets NaN (null in
    JSON) and a ``reason``, never a made-up number.
    """
    rule = threshold_rule(rule)
    boot = bootstrap_auc(
        inputs.truth, inputs.scores, inputs.patient_ids, n_resamples=n_resamples, seed=seed
    )
    _, n_patients = patient_index(inputs.patient_ids, len(inputs.ids))
    labels: dict[str, dict[str, Any]] = {}
    warnings = list(inputs.warnings)
    for j, name in enumerate(inputs.labels):
        known = ~np.isnan(inputs.truth[:, j])
        y = inputs.truth[known, j]
        s = inputs.scores[known, j]
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        entry: dict[str, Any] = {
            "n_positive": n_pos,
            "n_negative": n_neg,
            "n_missing": int((~known).sum()),
        }
        labels[name] = entry
        if n_pos == 0 or n_neg == 0:
            entry.update(
                {k: None for k in ("auc", "threshold", "sensitivity", "specificity", "ece")}
                | {
                    "auc_ci": [None, None],
                    "reason": f"{'no positive' if n_pos == 0 else 'no negative'} cases: AUC undefined",
                }
            )
            warnings.append(f"{name}: {entry['reason']}")
            continue
        if inputs.patient_ids is not None:
            delong = clustered_delong_ci(y, s, inputs.patient_ids[known])
            delong_method = "DeLong, clustered by patient (Obuchowski 1997)"
        else:
            delong = delong_ci(y, s)
            delong_method = "DeLong"
        entry.update(
            {
                "auc": delong.auc,
                "auc_ci": _ci((boot.ci_low[j], boot.ci_high[j])),
                "auc_ci_method": "patient-level percentile bootstrap",
                "auc_ci_delong": _ci(delong.ci),
                "auc_ci_delong_method": delong_method,
                "auc_se_delong": delong.se,
                "average_precision": average_precision(y, s),
                "prevalence": n_pos / (n_pos + n_neg),
            }
        )
        if name in inputs.thresholds:
            threshold = float(inputs.thresholds[name])
            entry["threshold_source"] = "given (model package or validation set)"
        else:
            threshold = choose_threshold(y, s, rule, target)
            entry["threshold_source"] = (
                f"chosen on these data ({rule.value} {target:g}); optimistic, "
                "choose on validation data for a fair estimate"
            )
        op = operating_point(y, s, threshold)
        entry.update(op.as_dict())
        entry["threshold"] = _clean(threshold)
        if deployment_prevalence and name in deployment_prevalence:
            ppv, npv = op.at_prevalence(deployment_prevalence[name])
            entry["deployment"] = {
                "prevalence": deployment_prevalence[name],
                "ppv": _clean(ppv),
                "npv": _clean(npv),
            }
        if ((s >= 0) & (s <= 1)).all():
            cal = calibration_error(y, s, n_bins=15)
            entry["ece"] = cal.ece
            entry["mce"] = cal.mce
            entry["ece_adaptive"] = calibration_error(y, s, n_bins=15, strategy="quantile").ece
            entry["brier"] = brier_score(y, s)
        else:
            entry["ece"] = None
            entry["ece_reason"] = "scores are not probabilities in [0, 1]"
        for key, value in list(entry.items()):
            if isinstance(value, float):
                entry[key] = _clean(value)
    aucs = [v["auc"] for v in labels.values() if v.get("auc") is not None]
    result: dict[str, Any] = {
        "mean_auc": float(np.mean(aucs)) if aucs else None,
        "micro_auc": _clean(_safe_micro(inputs.truth, inputs.scores)),
        "n_cases": len(inputs.ids),
        "n_patients": n_patients,
        "n_labels": len(inputs.labels),
        "source": inputs.source,
        "bootstrap": {
            "n_resamples": n_resamples,
            "level": "patient",
            "seed": seed,
            "interval": "percentile 95%",
        },
        "operating_point": {"rule": rule.value, "target": target},
        "labels": labels,
        "subgroups": {},
        "warnings": warnings,
    }
    if result["mean_auc"] is None:
        warnings.append("no label has both positive and negative cases: mean AUC undefined")
    _add_selective(result, inputs, labels)
    for attribute in subgroups:
        groups = subgroup_column(inputs.groups, attribute)
        per_label: dict[str, Any] = {}
        for j, name in enumerate(inputs.labels):
            label_threshold = labels[name].get("threshold")
            if label_threshold is None:
                continue
            report = fairness_report(
                attribute,
                inputs.truth[:, j],
                inputs.scores[:, j],
                groups,
                float(label_threshold),
                patient_ids=inputs.patient_ids,
                n_resamples=subgroup_resamples,
                seed=seed,
            )
            per_label[name] = {
                "metrics": [m.as_dict() for m in report.metrics],
                "gaps": [g.as_dict() for g in report.gaps],
                "differences": {k: _clean(v) for k, v in report.differences.items()},
                "flagged": [
                    f"{g.metric} {g.group} vs {g.reference}" for g in report.gaps if g.flagged
                ],
            }
        result["subgroups"][attribute] = per_label
    return result


def _add_selective(
    result: dict[str, Any], inputs: EvaluationInputs, labels: Mapping[str, Mapping[str, Any]]
) -> None:
    """The conformal coverage and selective-prediction sections, for probability scores."""
    if not ((inputs.scores >= 0) & (inputs.scores <= 1)).all():
        return
    if inputs.conformal is not None:
        result["conformal"] = conformal_report(
            inputs.truth, inputs.scores, inputs.labels, inputs.conformal
        )
    thresholds = {
        name: float(entry["threshold"])
        for name, entry in labels.items()
        if entry.get("threshold") is not None
    }
    if thresholds:
        result["selective"] = selective_report(
            inputs.truth,
            inputs.scores,
            inputs.labels,
            thresholds,
            refer_proximity=inputs.refer_proximity,
            conformal=inputs.conformal,
        )


def _safe_micro(truth: FloatArray, scores: FloatArray) -> float:
    try:
        return micro_auc(truth, scores)
    except EvaluationError:
        return float("nan")


def compare_models(
    inputs: EvaluationInputs,
    other: EvaluationInputs,
    metrics: Mapping[str, Any],
    *,
    names: tuple[str, str] = ("A", "B"),
    rule: ThresholdRule | str = ThresholdRule.SPECIFICITY,
    target: float = 0.9,
    correction: Correction | str = Correction.HOLM,
) -> dict[str, Any]:
    """Paired comparison of two models (or readers) on the same cases, per label.

    DeLong's test for the AUC difference, and McNemar's exact test on
    correctness at each one's operating point (A's threshold from ``metrics``,
    B's from ``other.thresholds`` or chosen by the same rule); p-values are
    adjusted across labels (Holm by default).
    """
    position = {case: i for i, case in enumerate(other.ids)}
    shared = [i for i, case in enumerate(inputs.ids) if case in position]
    if not shared:
        raise EvaluationError("the two prediction sets share no case ids")
    rows_b = np.array([position[inputs.ids[i]] for i in shared])
    rows_a = np.array(shared)
    labels_b = {name: j for j, name in enumerate(other.labels)}
    out: dict[str, Any] = {
        "names": list(names),
        "n_cases": len(shared),
        "correction": str(Correction(correction)),
        "labels": {},
    }
    p_auc: list[float] = []
    p_mcnemar: list[float] = []
    for j, name in enumerate(inputs.labels):
        entry: dict[str, Any] = {}
        out["labels"][name] = entry
        if name not in labels_b:
            entry["reason"] = f"no {name!r} column for {names[1]}"
            p_auc.append(float("nan"))
            p_mcnemar.append(float("nan"))
            continue
        y = inputs.truth[rows_a, j]
        known = ~np.isnan(y)
        y = y[known]
        sa = inputs.scores[rows_a, j][known]
        sb = other.scores[rows_b, labels_b[name]][known]
        try:
            test = delong_test(y, sa, sb)
        except EvaluationError as exc:
            entry["reason"] = str(exc)
            p_auc.append(float("nan"))
            p_mcnemar.append(float("nan"))
            continue
        entry.update(
            {k: (_clean(v) if isinstance(v, float) else v) for k, v in test.as_dict().items()}
        )
        entry["ci"] = _ci(test.ci)
        threshold_a = metrics["labels"][name].get("threshold")
        threshold_b = other.thresholds.get(name)
        if threshold_b is None:
            threshold_b = choose_threshold(y, sb, rule, target)
        correct_a = (
            (sa >= (threshold_a if threshold_a is not None else np.inf)) == (y == 1)
        ).astype(float)
        correct_b = ((sb >= threshold_b) == (y == 1)).astype(float)
        result = mcnemar(paired_table(correct_a, correct_b), exact=True)
        entry["mcnemar"] = result.as_dict() | {
            "threshold_a": _clean(float(threshold_a)) if threshold_a is not None else None,
            "threshold_b": _clean(float(threshold_b)),
        }
        p_auc.append(test.p)
        p_mcnemar.append(result.p)
    adjusted_auc = adjust_p_values(p_auc, correction)
    adjusted_mcnemar = adjust_p_values(p_mcnemar, correction)
    for k, name in enumerate(inputs.labels):
        entry = out["labels"][name]
        if "p" in entry:
            entry["p_adjusted"] = _clean(float(adjusted_auc[k]))
            entry["mcnemar"]["p_adjusted"] = _clean(float(adjusted_mcnemar[k]))
    return out


__all__ = [
    "EvaluationInputs",
    "evaluate",
    "read_prediction_files",
    "subgroup_column",
]
