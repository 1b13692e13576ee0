"""The monitoring page's charts, drawn with matplotlib and returned as PNG bytes.

Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly,
not ``pyplot``: the web server draws them in its worker threads, and pyplot's global
figure registry is not safe there.
"""

from __future__ import annotations

import datetime as dt
import enum
import io
from collections import defaultdict
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sqlalchemy import select

from overread.db import Database
from overread.service.monitor.store import MonitoringPoint, PointKind
from overread.service.monitor.summary import daily_series, percentiles


class Chart(enum.StrEnum):
    """The page's charts (the PNG route's name)."""

    ACTIVITY = "activity"
    DRIFT = "drift"
    AUC = "auc"
    LATENCY = "latency"


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    return buffer.getvalue()


def _axes(title: str) -> tuple[Figure, Any]:
    fig = Figure(figsize=(6.4, 2.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    return fig, ax


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="0.4")


def _points(database: Database, kind: PointKind, start: dt.date, end: dt.date) -> list[Any]:
    with database.session() as session:
        return list(
            session.scalars(
                select(MonitoringPoint)
                .where(
                    MonitoringPoint.kind == kind.value,
                    MonitoringPoint.point_date >= start,
                    MonitoringPoint.point_date <= end,
                )
                .order_by(MonitoringPoint.point_date)
            ).all()
        )


def render_chart(database: Database, chart: Chart, end: dt.date, days: int = 30) -> bytes:
    """The PNG of ``chart`` over the ``days`` days ending on ``end``."""
    start = end - dt.timedelta(days=days - 1)
    if chart is Chart.ACTIVITY:
        series = daily_series(database, start, end)
        fig, ax = _axes("Studies and alerts per day")
        x = [f.day for f in series]
        ax.bar(x, [len(f.studies) for f in series], color="tab:blue", label="studies")
        ax.plot(
            x, [f.critical_alerts for f in series], "o-", color="tab:red", label="critical alerts"
        )
        ax.plot(
            x,
            [len(f.monitoring_alerts) for f in series],
            "s--",
            color="tab:orange",
            label="monitoring alerts",
        )
        ax.legend(fontsize=7)
        return _png(fig)
    if chart is Chart.LATENCY:
        series = daily_series(database, start, end)
        fig, ax = _axes("Turnaround (job queued to result), seconds")
        rows = [(f.day, percentiles(f.turnaround)) for f in series if f.turnaround]
        if not rows:
            _empty(ax, "no finished jobs in the period")
        else:
            x = [d for d, _ in rows]
            ax.plot(x, [p["p50"] for _, p in rows], "o-", label="p50")
            ax.plot(x, [p["p95"] for _, p in rows], "s--", label="p95")
            ax.legend(fontsize=7)
        return _png(fig)
    if chart is Chart.DRIFT:
        fig, ax = _axes("Combined drift score per site (last run)")
        by_site: dict[str, list[tuple[dt.date, float]]] = defaultdict(list)
        for p in _points(database, PointKind.DRIFT, start, end):
            if p.value is not None:
                by_site[p.site].append((p.point_date, p.value))
        if not by_site:
            _empty(ax, "no drift figures yet (each site needs its reference period)")
        for site, values in sorted(by_site.items()):
            ax.plot([d for d, _ in values], [v for _, v in values], "o-", ms=3, label=site)
        if by_site:
            ax.legend(fontsize=7)
        return _png(fig)
    fig, ax = _axes("Rolling 30-day AUC where reader labels exist (all sites)")
    by_label: dict[str, list[tuple[dt.date, float]]] = defaultdict(list)
    baselines: dict[str, float] = {}
    for p in _points(database, PointKind.AUC, start, end):
        if p.value is None or int(p.data.get("window_days", 0)) != 30:
            continue
        key = f"{p.label} ({p.model})"
        by_label[key].append((p.point_date, p.value))
        if p.data.get("baseline") is not None:
            baselines[key] = float(p.data["baseline"])
    if not by_label:
        _empty(ax, "no labelled studies yet")
    for key, values in sorted(by_label.items()):
        (line,) = ax.plot([d for d, _ in values], [v for _, v in values], "o-", ms=3, label=key)
        if key in baselines:
            ax.axhline(baselines[key], color=line.get_color(), ls=":", lw=1)
    if by_label:
        ax.set_ylim(0.4, 1.0)
        ax.legend(fontsize=7)
    return _png(fig)


__all__ = ["Chart", "render_chart"]
