"""The governance report: a period's model decisions, kill switches and alerts, as HTML.

Everything in it is read from the audit log (the hash-chained record of what was
decided, by whom, with what evidence) and the rollout tables, so the report shows
what happened, not what a configuration file says now:

* rollout decisions: shadows and canaries started, promotions (with the release
  gate's outcome), rollbacks (automatic ones with the figures that left their bounds),
  alias changes, release-gate runs and registered cohorts;
* kill switches engaged and released in the period, and those engaged now;
* alerts raised in the period (every alert is audited as ``alert``);
* each alias's rollout state now.

The report is one self-contained HTML file (no scripts, no external assets) that can
be archived beside the audit export of the same period.
"""

from __future__ import annotations

import html
import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from overread import __version__
from overread.audit import AuditAction, AuditRecord, select_records
from overread.db import Database, utcnow
from overread.service.rollout import RolloutStore

#: Audited actions that are model decisions.
DECISIONS = (
    AuditAction.ROLLOUT_START,
    AuditAction.ROLLOUT_PROMOTE,
    AuditAction.ROLLOUT_ROLLBACK,
    AuditAction.RELEASE_GATE,
    AuditAction.MODEL_CHANGE,
    AuditAction.COHORT_REGISTERED,
)


@dataclass(frozen=True)
class GovernancePeriod:
    """What the report covers: ``start <= timestamp < end``."""

    start: datetime
    end: datetime


@dataclass(frozen=True)
class GovernanceSummary:
    """The counts the report opens with (also returned to the CLI)."""

    decisions: int
    automatic_rollbacks: int
    kill_switch_events: int
    alerts: int

    def to_dict(self) -> dict[str, int]:
        """JSON counts."""
        return {
            "decisions": self.decisions,
            "automatic_rollbacks": self.automatic_rollbacks,
            "kill_switch_events": self.kill_switch_events,
            "alerts": self.alerts,
        }


def _e(value: Any) -> str:
    return html.escape(str(value if value is not None else ""))


def _decision_text(record: AuditRecord) -> str:
    d = record.details
    action = AuditAction(record.action)
    if action is AuditAction.ROLLOUT_START:
        share = (
            f" on {float(d.get('canary_share') or 0):.1%} of studies"
            if d.get("state") == "canary"
            else ""
        )
        return f"{d.get('candidate')} in {d.get('state')}{share} beside {d.get('active')}"
    if action is AuditAction.ROLLOUT_PROMOTE:
        target = d.get("to") or d.get("candidate")
        gate = (d.get("evidence") or {}).get("gate")
        outcome = (
            ""
            if gate is None
            else f" (release gate {'passed' if gate.get('passed') else 'FAILED'})"
        )
        return f"promoted {target}{outcome}"
    if action is AuditAction.ROLLOUT_ROLLBACK:
        what = d.get("candidate") or d.get("from")
        return f"rolled back {what}: {d.get('reason') or 'by hand'}"
    if action is AuditAction.RELEASE_GATE:
        failed = [c["check"] for c in d.get("checks", []) if not c.get("passed")]
        verdict = (
            "passed"
            if d.get("passed")
            else "FAILED: " + "; ".join([*d.get("problems", []), *failed])
        )
        return f"release gate of {d.get('candidate')} vs {d.get('active')}: {verdict}"
    if action is AuditAction.COHORT_REGISTERED:
        return (
            f"cohort {d.get('name')} ({d.get('purpose')}, {d.get('images')} images, "
            f"sha256 {str(d.get('digest', ''))[:12]}...)"
        )
    return f"{d.get('change', 'change')} {d.get('alias', '')}: {d.get('from')} -> {d.get('to')}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, empty: str) -> str:
    if not rows:
        return f"<p class='empty'>{_e(empty)}</p>"
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _evidence(record: AuditRecord) -> str:
    text = json.dumps(record.details, indent=1, sort_keys=True, default=str)
    return f"<details><summary>seq {record.seq}</summary><pre>{_e(text)}</pre></details>"


def governance_report(
    database: Database, period: GovernancePeriod
) -> tuple[str, GovernanceSummary]:
    """The HTML report of ``period`` and its counts."""
    with database.session() as session:
        records = select_records(session, period.start, period.end)
    decisions = [r for r in records if r.action in {a.value for a in DECISIONS}]
    switches = [r for r in records if r.action == AuditAction.KILL_SWITCH.value]
    alerts = [r for r in records if r.action == AuditAction.ALERT.value]
    automatic = [
        r
        for r in decisions
        if r.action == AuditAction.ROLLOUT_ROLLBACK.value
        and (r.details.get("evidence") or {}).get("automatic")
    ]
    store = RolloutStore(database)
    summary = GovernanceSummary(len(decisions), len(automatic), len(switches), len(alerts))
    alert_kinds = Counter(
        str(r.details.get("finding") or r.details.get("kind") or r.details.get("event") or "alert")
        for r in alerts
    )
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>overread governance report</title><style>",
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse;"
        "margin:.5em 0 1.5em}td,th{border:1px solid #bbb;padding:.25em .5em;text-align:left;"
        "vertical-align:top}th{background:#eee}.empty{color:#666}pre{white-space:pre-wrap;"
        "font-size:.8em}",
        "</style></head><body>",
        "<h1>Governance report</h1>",
        f"<p>Period {_e(period.start.isoformat())} to {_e(period.end.isoformat())} (UTC); "
        f"written {_e(utcnow().isoformat(timespec='seconds'))} by overread {_e(__version__)} "
        "from the audit log and the rollout tables.</p>",
        _table(
            ["model decisions", "automatic rollbacks", "kill-switch events", "alerts"],
            [
                [
                    summary.decisions,
                    summary.automatic_rollbacks,
                    summary.kill_switch_events,
                    summary.alerts,
                ]
            ],
            empty="",
        ),
        "<h2>Rollout decisions</h2>",
        _table(
            ["time", "actor", "action", "alias / model", "decision", "evidence"],
            [
                [
                    r.timestamp,
                    r.actor,
                    r.action,
                    ", ".join(r.object_uids),
                    _decision_text(r),
                    f"seq {r.seq}",
                ]
                for r in decisions
            ],
            empty="No rollout decisions in this period.",
        ),
        "<h3>Evidence</h3>",
        "".join(_evidence(r) for r in decisions) or "<p class='empty'>None.</p>",
        "<h2>Kill switches</h2>",
        _table(
            ["time", "actor", "model", "engaged", "reason", "exports released"],
            [
                [
                    r.timestamp,
                    r.actor,
                    r.details.get("model"),
                    "engaged" if r.details.get("engaged") else "released",
                    r.details.get("reason"),
                    r.details.get("released_exports", ""),
                ]
                for r in switches
            ],
            empty="No kill switch engaged or released in this period.",
        ),
        "<h3>Engaged now</h3>",
        _table(
            ["model", "since", "actor", "reason"],
            [[k["model"], k["engaged_at"], k["actor"], k["reason"]] for k in store.kill_switches()],
            empty="None.",
        ),
        "<h2>Alerts</h2>",
        _table(
            ["kind", "count"],
            sorted(alert_kinds.items()),
            empty="No alerts in this period.",
        ),
        "<h2>Rollouts now</h2>",
        _table(
            ["alias", "state", "active", "candidate", "canary share", "since", "reason"],
            [
                [
                    r.alias,
                    r.state.value,
                    r.active_ref,
                    r.candidate_ref,
                    f"{r.canary_share:.1%}" if r.state.value == "canary" else "",
                    r.started_at.isoformat(timespec="seconds"),
                    r.reason,
                ]
                for r in store.all()
            ],
            empty="No alias has been in a rollout.",
        ),
        "</body></html>\n",
    ]
    return "".join(parts), summary


__all__ = ["DECISIONS", "GovernancePeriod", "GovernanceSummary", "governance_report"]
