"""Monitoring routes: the daily summary as JSON and the monitoring page's charts."""

from __future__ import annotations

import datetime as dt
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response

from overread.db import utcnow
from overread.security import Permission
from overread.service.monitor.plots import Chart, render_chart
from overread.service.monitor.summary import daily_summary
from overread.web.api.guards import context, route
from overread.web.context import WebContext

router = APIRouter(prefix="/api/monitoring", tags=["monitoring"])

#: Media type of the charts.
PNG = "image/png"


def summary_day(date: str | None) -> dt.date:
    """``YYYY-MM-DD`` (default today, UTC) as a date; 422 on anything else."""
    if not date:
        return utcnow().date()
    try:
        return dt.date.fromisoformat(date)
    except ValueError:
        raise HTTPException(status_code=422, detail=f"date {date!r} is not YYYY-MM-DD") from None


@route(router, "GET", "/summary", permission=Permission.VIEW_RESULTS)
def summary(
    date: str | None = Query(default=None, description="The UTC day, YYYY-MM-DD (default today)"),
    ctx: WebContext = Depends(context),
) -> dict[str, Any]:
    """The daily summary (docs/monitoring.md lists its keys): studies, findings, alerts,
    referrals, refusals, latency percentiles, drift per site, performance per label."""
    return daily_summary(ctx.database, summary_day(date)).to_dict()


@route(
    router,
    "GET",
    "/plots/{chart}.png",
    permission=Permission.VIEW_RESULTS,
    responses={200: {"content": {PNG: {}}, "description": "The chart as PNG"}},
)
def plot(
    chart: Chart,
    date: str | None = Query(default=None, description="Last day shown, YYYY-MM-DD"),
    days: int = Query(default=30, ge=7, le=365, description="Days shown"),
    ctx: WebContext = Depends(context),
) -> Response:
    """One chart of the monitoring page: ``activity`` (studies and alerts per day),
    ``drift`` (combined drift score per site), ``auc`` (rolling AUC per label),
    ``latency`` (turnaround p50/p95)."""
    png = render_chart(ctx.database, chart, summary_day(date), days)
    return Response(png, media_type=PNG, headers={"Cache-Control": "no-store"})


__all__ = ["router"]
