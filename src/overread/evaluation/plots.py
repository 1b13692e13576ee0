"""The report's figures, drawn with matplotlib (Agg) and returned as PNG bytes.

Each function draws one figure from arrays or the metrics dictionary, so the
figures can be embedded in the HTML report or saved on their own.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from overread.errors import EvaluationError
from overread.evaluation._validation import FloatArray
from overread.evaluation.bootstrap import bootstrap_roc_band
from overread.evaluation.calibration import reliability_bins
from overread.evaluation.roc import pr_curve, roc_curve


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _grid(n: int, size: float = 2.6) -> tuple[Any, list[Any]]:
    cols = min(4, max(1, n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(size * cols, size * rows), squeeze=False, layout="constrained"
    )
    flat = list(axes.ravel())
    for ax in flat[n:]:
        ax.axis("off")
    return fig, flat[:n]


def _label_panels(
    labels: Sequence[str], truth: FloatArray, metrics: Mapping[str, Any]
) -> tuple[Any, list[tuple[Any, int, Mapping[str, Any], np.ndarray]]]:
    """A figure with one titled panel per label.

    Returns the figure and, per label, its axes, its column in ``truth``, its
    entry in ``metrics["labels"]`` and the mask of rows whose truth is known.
    """
    fig, axes = _grid(len(labels))
    panels = []
    for j, (ax, name) in enumerate(zip(axes, labels, strict=True)):
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        panels.append((ax, j, metrics["labels"][name], ~np.isnan(truth[:, j])))
    return fig, panels


def _axis_labels(ax: Any, x: str, y: str) -> None:
    ax.set_xlabel(x, fontsize=6)
    ax.set_ylabel(y, fontsize=6)


def roc_figure(
    labels: Sequence[str],
    truth: FloatArray,
    scores: FloatArray,
    patient_ids: np.ndarray | None,
    metrics: Mapping[str, Any],
    *,
    n_resamples: int = 200,
) -> bytes:
    """ROC curve per label with a patient-level bootstrap 95% band and the operating point."""
    fig, panels = _label_panels(labels, truth, metrics)
    for ax, j, entry, known in panels:
        ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
        if entry.get("auc") is None:
            ax.text(0.5, 0.5, entry.get("reason", "undefined"), ha="center", fontsize=6, wrap=True)
            continue
        y, s = truth[known, j], scores[known, j]
        pids = None if patient_ids is None else patient_ids[known]
        try:
            band = bootstrap_roc_band(y, s, pids, n_resamples=n_resamples)
            ax.fill_between(
                band.fpr, band.tpr_low, band.tpr_high, color="tab:blue", alpha=0.2, lw=0
            )
        except EvaluationError:
            pass
        curve = roc_curve(y, s)
        ax.plot(curve.fpr, curve.tpr, color="tab:blue", lw=1.2)
        if entry.get("sensitivity") is not None and entry.get("specificity") is not None:
            ax.plot(1 - entry["specificity"], entry["sensitivity"], "o", color="tab:red", ms=4)
        lo, hi = entry["auc_ci"]
        text = f"AUC {entry['auc']:.3f}" + (f"\n({lo:.3f}-{hi:.3f})" if lo is not None else "")
        ax.text(0.98, 0.04, text, ha="right", va="bottom", fontsize=7)
        _axis_labels(ax, "1 - specificity", "sensitivity")
    fig.suptitle("ROC curves, 95% patient-level bootstrap bands; red: operating point", fontsize=9)
    return _png(fig)


def pr_figure(
    labels: Sequence[str], truth: FloatArray, scores: FloatArray, metrics: Mapping[str, Any]
) -> bytes:
    """Precision-recall curve per label with prevalence as the no-skill line."""
    fig, panels = _label_panels(labels, truth, metrics)
    for ax, j, entry, known in panels:
        if entry.get("auc") is None:
            continue
        curve = pr_curve(truth[known, j], scores[known, j])
        ax.step(curve.recall, curve.precision, where="post", color="tab:green", lw=1.2)
        ax.axhline(entry["prevalence"], color="0.7", lw=0.8, ls="--")
        ax.set_ylim(0, 1.02)
        ax.text(
            0.98, 0.96, f"AP {entry['average_precision']:.3f}", ha="right", va="top", fontsize=7
        )
        _axis_labels(ax, "recall", "precision")
    fig.suptitle("Precision-recall curves (dashed: prevalence)", fontsize=9)
    return _png(fig)


def reliability_figure(
    labels: Sequence[str], truth: FloatArray, scores: FloatArray, metrics: Mapping[str, Any]
) -> bytes:
    """Reliability diagram per label (15 equal-width bins; marker area ~ count)."""
    fig, panels = _label_panels(labels, truth, metrics)
    for ax, j, entry, known in panels:
        ax.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
        if entry.get("ece") is None:
            ax.text(
                0.5,
                0.5,
                entry.get("ece_reason", entry.get("reason", "undefined")),
                ha="center",
                fontsize=6,
            )
            continue
        bins = reliability_bins(truth[known, j], scores[known, j], n_bins=15)
        sizes = 8 + 80 * bins.count / bins.count.max()
        ax.plot(bins.mean_predicted, bins.observed, color="tab:purple", lw=1)
        ax.scatter(bins.mean_predicted, bins.observed, s=sizes, color="tab:purple", alpha=0.7)
        ax.text(0.02, 0.96, f"ECE {entry['ece']:.3f}", va="top", fontsize=7)
        _axis_labels(ax, "predicted", "observed")
    fig.suptitle("Reliability diagrams", fontsize=9)
    return _png(fig)


def forest_figure(attribute: str, per_label: Mapping[str, Any], metric: str = "auc") -> bytes:
    """Forest plot of one metric per (label, group) with its interval."""
    rows: list[tuple[str, float, float, float, bool]] = []
    for label, block in per_label.items():
        flagged = {f.split(" ")[1] for f in block["flagged"] if f.split(" ")[0] in {"tpr", "fpr"}}
        for m in block["metrics"]:
            if m["metric"] == metric and m["value"] is not None:
                lo, hi = m["ci"]
                rows.append(
                    (
                        f"{label} | {m['group']}",
                        m["value"],
                        lo if lo is not None else m["value"],
                        hi if hi is not None else m["value"],
                        m["group"] in flagged,
                    )
                )
    height = max(2.0, 0.22 * len(rows) + 1)
    fig, ax = plt.subplots(figsize=(6.5, height))
    for i, (_, value, lo, hi, flag) in enumerate(rows):
        color = "tab:red" if flag else "tab:blue"
        ax.plot([lo, hi], [i, i], color=color, lw=1)
        ax.plot(value, i, "s", color=color, ms=3)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([r[0] for r in rows], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric.upper()} (95% CI)", fontsize=7)
    ax.tick_params(axis="x", labelsize=6)
    ax.set_title(
        f"{metric.upper()} by {attribute} (red: a TPR/FPR gap whose CI excludes 0)", fontsize=8
    )
    return _png(fig)


def confusion_figure(labels: Sequence[str], metrics: Mapping[str, Any]) -> bytes:
    """2x2 confusion matrix per label at its operating point."""
    fig, axes = _grid(len(labels), size=2.0)
    for ax, name in zip(axes, labels, strict=True):
        entry = metrics["labels"][name]
        ax.set_title(name, fontsize=7)
        if "tp" not in entry:
            ax.axis("off")
            ax.text(
                0.5,
                0.5,
                entry.get("reason", "no operating point"),
                ha="center",
                fontsize=6,
                wrap=True,
            )
            continue
        ax.set_xticks([0, 1], ["pred +", "pred -"], fontsize=6)
        ax.set_yticks([0, 1], ["true +", "true -"], fontsize=6)
        matrix = np.array([[entry["tp"], entry["fn"]], [entry["fp"], entry["tn"]]], dtype=float)
        ax.imshow(matrix / max(matrix.sum(), 1), cmap="Blues", vmin=0, vmax=1)
        for (r, c), v in np.ndenumerate(matrix):
            ax.text(c, r, f"{int(v)}", ha="center", va="center", fontsize=7)
    fig.suptitle("Confusion at the operating point", fontsize=9)
    return _png(fig)


#: Marker and colour of each referral rule on the risk-coverage figure.
_RULE_STYLE = {
    "proximity": ("s", "tab:orange"),
    "conformal": ("o", "tab:red"),
    "joined": ("^", "tab:purple"),
}


def risk_coverage_figure(selective: Mapping[str, Any]) -> bytes:
    """Selective risk against coverage per label, with each referral rule's point."""
    entries = selective["labels"]
    fig, axes = _grid(len(entries))
    for ax, (name, entry) in zip(axes, entries.items(), strict=True):
        ax.set_title(name, fontsize=8)
        ax.tick_params(labelsize=6)
        curve = entry["curve"]
        ax.plot(curve["coverage"], curve["risk"], color="tab:blue", lw=1.2)
        for rule, summary in entry["rules"].items():
            if summary.get("coverage") is None or summary.get("selective_risk") is None:
                continue
            marker, colour = _RULE_STYLE.get(rule, ("x", "0.3"))
            ax.plot(summary["coverage"], summary["selective_risk"], marker, color=colour, ms=4)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(bottom=0)
        ax.text(
            0.04,
            0.96,
            f"AURC {entry['aurc']:.3f}",
            ha="left",
            va="top",
            fontsize=7,
            transform=ax.transAxes,
        )
        _axis_labels(ax, "coverage (not referred)", "selective risk")
    fig.suptitle(
        "Risk-coverage (least confident referred first); orange square: threshold-proximity "
        "rule, red circle: conformal set ambiguous, purple triangle: either",
        fontsize=8,
    )
    return _png(fig)


__all__ = [
    "confusion_figure",
    "forest_figure",
    "pr_figure",
    "reliability_figure",
    "risk_coverage_figure",
    "roc_figure",
]
