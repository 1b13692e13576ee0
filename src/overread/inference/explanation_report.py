"""Writing an explanation study: JSON, a Markdown table, example overlays, curves.

``DIR/explanations.json`` is the report; ``DIR/explanations.md`` its tables;
``DIR/overlays/<finding>.png`` one example image per finding type with each
method's map side by side (cividis, top region outlined with its box in white,
the ground-truth mask outlined in magenta); ``DIR/curves.png`` the mean deletion
and insertion curves of every method, when matplotlib is installed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image as PilImage
from PIL import ImageDraw

from overread.explain.overlay import blend_overlay
from overread.explain.regions import region_outline
from overread.inference.explanation_study import ExplanationStudy

#: The ground-truth mask's outline on example overlays (apart from the map's white).
TRUTH_COLOUR = (255, 0, 255)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_").lower()


def _cell(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def method_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(name, entry)`` for every method, then the random-map floor."""
    rows = list(report["methods"].items())
    rows.append(("random map", report["random_map"]))
    return rows


def comparison_table(report: dict[str, Any]) -> str:
    """The methods side by side as a Markdown table (also readable as plain text)."""
    fractions = next(iter(report["methods"].values()))["road"]["fractions"]
    road_head = "/".join(f"{f:.0%}" for f in fractions)
    lines = [
        f"| method | pointing game | mask IoU | deletion AUC ↓ | insertion AUC ↑ "
        f"| ROAD {road_head} ↓ | sanity rank corr ↓ | ms / image |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in method_rows(report):
        road = "/".join(_cell(v) for v in entry["road"]["probability"])
        lines.append(
            f"| {name} | {_cell(entry['pointing_game'])} | {_cell(entry['mask_iou'])} "
            f"| {_cell(entry['deletion_auc'], 3)} | {_cell(entry['insertion_auc'], 3)} "
            f"| {road} | {_cell(entry.get('sanity_rank_corr'))} "
            f"| {_cell(entry.get('ms_per_image'), 0)} |"
        )
    return "\n".join(lines)


def size_table(report: dict[str, Any]) -> str:
    """Pointing game, IoU, deletion and insertion AUC per method and lesion size."""
    lines = [
        "| method | size | n | pointing game | mask IoU | deletion AUC ↓ | insertion AUC ↑ |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, entry in method_rows(report):
        for size, part in entry["by_size"].items():
            lines.append(
                f"| {name} | {size} | {part['n']} | {_cell(part['pointing_game'])} "
                f"| {_cell(part['mask_iou'])} | {_cell(part['deletion_auc'], 3)} "
                f"| {_cell(part['insertion_auc'], 3)} |"
            )
    return "\n".join(lines)


def finding_table(report: dict[str, Any]) -> str:
    """Pointing game (and mask IoU) per method and finding type."""
    labels = sorted({label for _, e in method_rows(report) for label in e["by_finding"]})
    names = [name for name, _ in method_rows(report)]
    lines = [
        "| finding | n | " + " | ".join(f"{n} PG / IoU" for n in names) + " |",
        "| --- | --- | " + " | ".join("---" for _ in names) + " |",
    ]
    for label in labels:
        parts = [e["by_finding"].get(label, {}) for _, e in method_rows(report)]
        n = next((p["n"] for p in parts if p), 0)
        cells = [f"{_cell(p.get('pointing_game'))} / {_cell(p.get('mask_iou'))}" for p in parts]
        lines.append(f"| {label} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    model = report["model"]
    images = report["images"]
    defs = report["definitions"]
    return (
        "\n\n".join(
            [
                f"# Explanations of {model['name']} {model['version']}",
                f"Cohort `{report['cohort']}`: {images['explained']} images with "
                f"{report['findings']} findings that have a mask ({images['without_findings']} "
                f"without, {images['failed']} unreadable). Input {model['input_size']} px; "
                f"pointing tolerance {defs['pointing_tolerance_px']} px; top region: "
                f"{defs['top_region']}.",
                comparison_table(report),
                "## By lesion size\n\n" + size_table(report),
                "## By finding (pointing game / mask IoU)\n\n" + finding_table(report),
            ]
        )
        + "\n"
    )


def _panel(image: np.ndarray, heatmap: np.ndarray, mask: np.ndarray, scale: int) -> np.ndarray:
    rgb = blend_overlay(image, heatmap, alpha=0.5, region=True)
    rgb[region_outline(mask)] = TRUTH_COLOUR
    if scale > 1:
        rgb = np.repeat(np.repeat(rgb, scale, axis=0), scale, axis=1)
    return rgb


def write_example(
    path: Path,
    label: str,
    panels: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
    *,
    scale: int = 2,
) -> Path:
    """One PNG: each method's overlay for one finding side by side, titled."""
    tiles = [_panel(image, heat, mask, scale) for _, image, heat, mask in panels]
    height, width = tiles[0].shape[:2]
    band = 18
    canvas = PilImage.new("RGB", (width * len(tiles), height + band), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for k, ((name, *_), tile) in enumerate(zip(panels, tiles, strict=True)):
        canvas.paste(PilImage.fromarray(tile, mode="RGB"), (k * width, band))
        draw.text((k * width + 4, 3), f"{label}: {name}", fill=(255, 255, 255))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path


def write_curves(path: Path, report: dict[str, Any]) -> Path | None:
    """Mean deletion and insertion curves per method; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib import pyplot as plt
    except ImportError:
        return None
    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for name, entry in method_rows(report):
        curves = entry["curves"]
        style = ":" if name == "random map" else "-"
        for axis, kind in zip(axes, ("deletion", "insertion"), strict=True):
            if curves[kind]:
                axis.plot(curves["fractions"], curves[kind], style, label=name)
    for axis, kind in zip(
        axes, ("deletion (low is good)", "insertion (high is good)"), strict=True
    ):
        axis.set_title(kind)
        axis.set_xlabel("fraction of pixels, most salient first")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("probability of the finding")
    axes[1].legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def write_study(study: ExplanationStudy, out: Path) -> list[Path]:
    """Write the report, its tables, one example per finding type and the curves."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "explanations.json", out / "explanations.md"]
    written[0].write_text(json.dumps(study.report, indent=2) + "\n", encoding="utf-8")
    written[1].write_text(markdown(study.report), encoding="utf-8")
    methods = list(study.report["methods"])
    for label in sorted({label for label, _ in study.examples}):
        panels = [
            (method, *study.examples[(label, method)])
            for method in methods
            if (label, method) in study.examples
        ]
        if panels:
            written.append(write_example(out / "overlays" / f"{_slug(label)}.png", label, panels))
    curves = write_curves(out / "curves.png", study.report)
    if curves is not None:
        written.append(curves)
    return written


__all__ = [
    "TRUTH_COLOUR",
    "comparison_table",
    "finding_table",
    "markdown",
    "size_table",
    "write_curves",
    "write_example",
    "write_study",
]
