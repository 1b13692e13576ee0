"""The training report: one self-contained HTML file with curves as inline PNGs."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else float("nan")


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _loss_figure(history: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [s for r in history for s, _ in r.get("step_losses", [])]
    values = [v for r in history for _, v in r.get("step_losses", [])]
    if steps:
        ax.plot(steps, values, color="0.75", lw=0.8, label="train (per step)")
    ends = [r["global_step"] for r in history]
    ax.plot(ends, [r["train_loss"] for r in history], "o-", label="train (epoch mean)")
    if any("val_loss" in r for r in history):
        ax.plot(ends, [r.get("val_loss", float("nan")) for r in history], "s-", label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def _auc_figure(history: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(7, 4))
    epochs = [r["epoch"] + 1 for r in history]
    labels = list(history[-1].get("val_auc", {}))
    for label in labels:
        ax.plot(epochs, [_num(r["val_auc"].get(label)) for r in history], lw=0.8, alpha=0.6)
    ax.plot(epochs, [_num(r.get("val_mean_auc")) for r in history], "k-o", lw=2, label="mean")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUC")
    ax.legend()
    ax.grid(alpha=0.3)
    return _png(fig)


def _lr_figure(history: list[dict[str, Any]]) -> str:
    fig, ax = plt.subplots(figsize=(6, 3))
    epochs = [r["epoch"] + 1 for r in history]
    groups = list(dict.fromkeys(g for r in history for g in r.get("lr", {})))
    for g in groups:
        ax.plot(epochs, [_num(r["lr"].get(g)) for r in history], label=g)
    ax.set_yscale("log")
    ax.set_xlabel("epoch (value at its end)")
    ax.set_ylabel("learning rate")
    if len(groups) <= 12:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return _png(fig)


def _table(rows: list[list[Any]], header: list[str]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))


def write_report(path: Path, summary: dict[str, Any], history: list[dict[str, Any]]) -> Path:
    """Write the HTML report: summary, curves, per-class test AUCs, compression trade-offs."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>Training report: {html.escape(str(summary.get('name', '')))}</title>",
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
        "padding:3px 8px;text-align:right}th{background:#f3f3f3}img{max-width:100%}"
        "pre{background:#f7f7f7;padding:1em;overflow:auto}</style></head><body>",
        f"<h1>Training report: {html.escape(str(summary.get('name', '')))}</h1>",
        "<p>Research and demonstration output; not for clinical use.</p>",
    ]
    facts = summary.get("facts", {})
    if facts:
        parts.append(_table([[k, _fmt(v)] for k, v in facts.items()], ["", "value"]))
    if history:
        parts.append("<h2>Loss</h2>")
        parts.append(f"<img alt='loss curves' src='data:image/png;base64,{_loss_figure(history)}'>")
        if any("val_auc" in r for r in history):
            parts.append("<h2>Validation AUC</h2>")
            parts.append(
                f"<img alt='AUC curves' src='data:image/png;base64,{_auc_figure(history)}'>"
            )
        parts.append("<h2>Learning rate</h2>")
        parts.append(f"<img alt='learning rate' src='data:image/png;base64,{_lr_figure(history)}'>")
    for name, block in summary.get("evaluations", {}).items():
        parts.append(f"<h2>Test: {html.escape(name)}</h2>")
        parts.append(
            f"<p>{html.escape(str(block.get('description', '')))}; mean AUC "
            f"{_fmt(block.get('mean_auc'))}</p>"
        )
        rows = []
        for label, item in block.get("per_label", {}).items():
            ci = item.get("ci95")
            rows.append(
                [
                    label,
                    item.get("n_positive"),
                    _fmt(item.get("auc")),
                    f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else "-",
                ]
            )
        parts.append(_table(rows, ["label", "positives", "AUC", "95% CI"]))
    tradeoff = summary.get("compression", [])
    if tradeoff:
        parts.append("<h2>Size / speed / AUC trade-off</h2>")
        rows = [
            [
                c["name"],
                c["nonzero_parameters"],
                f"{c['compressed_bytes'] / 1e6:.2f} MB",
                f"{c['ms_per_image']:.2f}",
                _fmt(c.get("mean_auc")),
            ]
            for c in tradeoff
        ]
        parts.append(
            _table(rows, ["model", "non-zero params", "gzip size", "ms/image (CPU)", "mean AUC"])
        )
    if "config" in summary:
        parts.append("<h2>Resolved configuration</h2>")
        parts.append(f"<pre>{html.escape(json.dumps(summary['config'], indent=2))}</pre>")
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


__all__ = ["write_report"]
