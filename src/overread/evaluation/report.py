"""Write an evaluation's ``metrics.json`` and a self-contained ``report.html``.

The HTML embeds its figures as base64 PNGs, so the one file can be attached to
a validation record or e-mailed without losing pictures.
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any

from overread.evaluation.plots import (
    confusion_figure,
    forest_figure,
    pr_figure,
    reliability_figure,
    risk_coverage_figure,
    roc_figure,
)
from overread.evaluation.study import EvaluationInputs

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1200px; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.warn { color: #a40; } .flag { color: #c00; font-weight: bold; }
img { max-width: 100%; } .note { color: #555; font-size: 0.85em; }
"""


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _ci(pair: Any) -> str:
    if not pair or pair[0] is None:
        return "–"
    return f"{pair[0]:.3f}–{pair[1]:.3f}"


def _img(png: bytes, alt: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def json_safe(value: Any) -> Any:
    """Replace non-finite floats by None so the JSON is strict (no NaN tokens)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def _label_table(metrics: dict[str, Any]) -> str:
    head = (
        "<tr><th>label</th><th>n+</th><th>n−</th><th>AUC</th><th>95% CI (bootstrap)</th>"
        "<th>95% CI (DeLong)</th><th>AP</th><th>threshold</th><th>sensitivity</th><th>specificity</th>"
        "<th>PPV</th><th>NPV</th><th>F1</th><th>ECE</th><th>Brier</th></tr>"
    )
    rows = []
    for name, e in metrics["labels"].items():
        sens = f"{_fmt(e.get('sensitivity'))} ({_ci(e.get('sensitivity_ci'))})"
        spec = f"{_fmt(e.get('specificity'))} ({_ci(e.get('specificity_ci'))})"
        note = f' <span class="warn">{html.escape(e["reason"])}</span>' if e.get("reason") else ""
        rows.append(
            f"<tr><td>{html.escape(name)}{note}</td><td>{e['n_positive']}</td><td>{e['n_negative']}</td>"
            f"<td>{_fmt(e.get('auc'))}</td><td>{_ci(e.get('auc_ci'))}</td><td>{_ci(e.get('auc_ci_delong'))}</td>"
            f"<td>{_fmt(e.get('average_precision'))}</td><td>{_fmt(e.get('threshold'), 4)}</td>"
            f"<td>{sens}</td><td>{spec}</td><td>{_fmt(e.get('ppv'))}</td><td>{_fmt(e.get('npv'))}</td>"
            f"<td>{_fmt(e.get('f1'))}</td><td>{_fmt(e.get('ece'))}</td><td>{_fmt(e.get('brier'))}</td></tr>"
        )
    return f"<table>{head}{''.join(rows)}</table>"


def _gap_table(attribute: str, per_label: dict[str, Any]) -> str:
    rows = []
    for label, block in per_label.items():
        for g in block["gaps"]:
            cls = ' class="flag"' if g["flagged"] else ""
            rows.append(
                f"<tr{cls}><td>{html.escape(label)}</td><td>{html.escape(g['group'])} vs "
                f"{html.escape(g['reference'])}</td><td>{html.escape(g['metric'])}</td>"
                f"<td>{_fmt(g['gap'])}</td><td>{_ci(g['ci'])}</td>"
                f"<td>{'yes' if g['flagged'] else ''}</td><td>{html.escape(g['reason'])}</td></tr>"
            )
    head = "<tr><th>label</th><th>groups</th><th>metric</th><th>gap</th><th>95% CI</th><th>flagged</th><th>note</th></tr>"
    return f"<h3>Fairness gaps by {html.escape(attribute)}</h3><table>{head}{''.join(rows)}</table>"


def _comparison_table(comparison: dict[str, Any]) -> str:
    a, b = (html.escape(n) for n in comparison["names"])
    head = (
        f"<tr><th>label</th><th>AUC {a}</th><th>AUC {b}</th><th>difference (95% CI)</th>"
        f"<th>DeLong p</th><th>adjusted p</th><th>McNemar b/c</th><th>McNemar p</th><th>adjusted p</th></tr>"
    )
    rows = []
    for name, e in comparison["labels"].items():
        if "p" not in e:
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td colspan='8'>{html.escape(e.get('reason', ''))}</td></tr>"
            )
            continue
        m = e["mcnemar"]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{_fmt(e['auc_a'])}</td><td>{_fmt(e['auc_b'])}</td>"
            f"<td>{_fmt(e['difference'])} ({_ci(e['ci'])})</td><td>{_fmt(e['p'], 4)}</td>"
            f"<td>{_fmt(e['p_adjusted'], 4)}</td><td>{m['b']}/{m['c']}</td><td>{_fmt(m['p'], 4)}</td>"
            f"<td>{_fmt(m.get('p_adjusted'), 4)}</td></tr>"
        )
    note = (
        f"<p class='note'>Paired tests on {comparison['n_cases']} shared cases: DeLong for AUC, exact "
        f"McNemar on correctness at each operating point (b: only {a} right, c: only {b} right); "
        f"p-values adjusted across labels ({html.escape(comparison['correction'])}).</p>"
    )
    return f"<h2>Comparison: {a} vs {b}</h2><table>{head}{''.join(rows)}</table>{note}"


def _pct(value: Any) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _conformal_table(conformal: dict[str, Any]) -> str:
    head = (
        "<tr><th>label</th><th>n+</th><th>n−</th>"
        "<th>marginal: all</th><th>positives</th><th>negatives</th><th>set size</th>"
        "<th>class-conditional: all</th><th>positives</th><th>negatives</th><th>set size</th>"
        "<th>ambiguous (served)</th></tr>"
    )
    rows = []
    served = conformal["served"]
    entries = [*list(conformal["labels"].items()), ("all labels", conformal["pooled"])]
    for name, entry in entries:
        m, c = entry["marginal"], entry["class-conditional"]
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{m['n_positive']}</td><td>{m['n_negative']}</td>"
            f"<td>{_pct(m['coverage'])}</td><td>{_pct(m['coverage_positive'])}</td>"
            f"<td>{_pct(m['coverage_negative'])}</td><td>{_fmt(m['mean_set_size'], 2)}</td>"
            f"<td>{_pct(c['coverage'])}</td><td>{_pct(c['coverage_positive'])}</td>"
            f"<td>{_pct(c['coverage_negative'])}</td><td>{_fmt(c['mean_set_size'], 2)}</td>"
            f"<td>{_pct(entry[served]['ambiguous_rate'])}</td></tr>"
        )
    note = (
        f"<p class='note'>Coverage asked: {_pct(conformal['asked'])} (alpha {conformal['alpha']:g}). "
        "Marginal sets promise it over all images of a label; class-conditional sets over "
        f"positives and negatives separately. Served: {html.escape(served)}. "
        "See docs/uncertainty.md for the guarantee and its assumptions.</p>"
    )
    return f"<h3>Conformal coverage</h3><table>{head}{''.join(rows)}</table>{note}"


def _selective_table(selective: dict[str, Any]) -> str:
    rules = ["proximity", "conformal", "joined"]
    head = (
        "<tr><th>label</th><th>AURC</th>"
        + "".join(
            f"<th>{r}: coverage</th><th>selective risk</th><th>positives missed</th>" for r in rules
        )
        + "<th>risk, no referral</th></tr>"
    )
    rows = []
    entries = [*list(selective["labels"].items()), ("all labels", {"rules": selective["pooled"]})]
    for name, entry in entries:
        cells = [f"<td>{html.escape(name)}</td><td>{_fmt(entry.get('aurc'))}</td>"]
        base = None
        for rule in rules:
            summary = entry["rules"].get(rule, {})
            base = summary.get("risk_without_referral", base)
            cells.append(
                f"<td>{_pct(summary.get('coverage'))}</td><td>{_pct(summary.get('selective_risk'))}</td>"
                f"<td>{_pct(summary.get('positives_missed'))}</td>"
            )
        cells.append(f"<td>{_pct(base)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _selective_section(metrics: dict[str, Any]) -> list[str]:
    parts = ["<h2>Selective prediction: refer to a radiologist</h2>"]
    selective = metrics.get("selective")
    if selective and selective["labels"]:
        parts.append(_img(risk_coverage_figure(selective), "Risk-coverage curves"))
        parts.append(_selective_table(selective))
        parts.append(
            "<p class='note'>Coverage: share of decisions the model makes itself; selective "
            "risk: error rate among them at the operating point; positives missed: share of "
            "all positives called negative and not referred. proximity: refer when the "
            "probability is within the package's referral margin of the threshold; conformal: "
            "refer when the prediction set is ambiguous (both or empty); joined: either (what "
            "the pipeline does).</p>"
        )
    if "conformal" in metrics:
        parts.append(_conformal_table(metrics["conformal"]))
    return parts if len(parts) > 1 else []


def write_report(
    metrics: dict[str, Any], inputs: EvaluationInputs, out_dir: Path, *, band_resamples: int = 200
) -> tuple[Path, Path]:
    """Write ``metrics.json``, ``thresholds.json`` and ``report.html`` into ``out_dir``.

    Returns the paths of ``metrics.json`` and ``report.html``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(json_safe(metrics), indent=2, allow_nan=False) + "\n")
    # The operating points, ready for --thresholds when these data were the validation set.
    thresholds = {
        name: entry["threshold"]
        for name, entry in metrics["labels"].items()
        if entry.get("threshold") is not None
    }
    (out_dir / "thresholds.json").write_text(json.dumps(json_safe(thresholds), indent=2) + "\n")
    labels = inputs.labels
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>overread evaluation</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Evaluation report</h1>",
        f"<p>Source: {html.escape(metrics.get('source', ''))}. {metrics['n_cases']} cases from "
        f"{metrics['n_patients']} patients, {metrics['n_labels']} labels. Mean AUC "
        f"<b>{_fmt(metrics['mean_auc'])}</b> (micro {_fmt(metrics['micro_auc'])}). "
        f"AUC intervals: {metrics['bootstrap']['n_resamples']} patient-level bootstrap resamples "
        "(percentile) and DeLong; proportions: Wilson intervals.</p>",
    ]
    if metrics["warnings"]:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in metrics["warnings"][:50])
        parts.append(f'<div class="warn"><b>Warnings</b><ul>{items}</ul></div>')
    parts.append("<h2>Per-label performance</h2>" + _label_table(metrics))
    op = metrics["operating_point"]
    parts.append(
        f"<p class='note'>Operating point: a package or validation threshold where given, otherwise "
        f"chosen on these data for {html.escape(op['rule'])} {op['target']} (optimistic).</p>"
    )
    parts.append(
        "<h2>ROC</h2>"
        + _img(
            roc_figure(
                labels,
                inputs.truth,
                inputs.scores,
                inputs.patient_ids,
                metrics,
                n_resamples=band_resamples,
            ),
            "ROC curves",
        )
    )
    parts.append(
        "<h2>Precision-recall</h2>"
        + _img(pr_figure(labels, inputs.truth, inputs.scores, metrics), "PR curves")
    )
    parts.append(
        "<h2>Calibration</h2>"
        + _img(
            reliability_figure(labels, inputs.truth, inputs.scores, metrics), "Reliability diagrams"
        )
    )
    parts.append(
        "<h2>Confusion at the operating point</h2>"
        + _img(confusion_figure(labels, metrics), "Confusion matrices")
    )
    parts.extend(_selective_section(metrics))
    if "comparison" in metrics:
        parts.append(_comparison_table(metrics["comparison"]))
    for attribute, per_label in metrics.get("subgroups", {}).items():
        parts.append(f"<h2>Subgroups: {html.escape(attribute)}</h2>")
        if per_label:
            parts.append(_img(forest_figure(attribute, per_label, "auc"), f"AUC by {attribute}"))
            parts.append(_gap_table(attribute, per_label))
    parts.append("</body></html>")
    report_path = out_dir / "report.html"
    report_path.write_text("\n".join(parts), encoding="utf-8")
    return metrics_path, report_path


__all__ = ["json_safe", "write_report"]
