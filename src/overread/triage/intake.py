"""Triage from what the gateway stores: a study's ``Result`` with one summary per image.

A study often has several images (PA and lateral, a repeat); the worklist has one row
per study, so the images' findings are merged: per label, the image with the highest
probability speaks for the study (a finding seen on one view is on the study).
:func:`triage_result` is what the gateway calls in the transaction that writes the
result, so a study is never stored without its worklist row and alerts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from overread.errors import ConfigError
from overread.results import Code, Decision, FindingResult, ResultSummary
from overread.triage.alerts import raise_alerts
from overread.triage.config import TriageConfig
from overread.triage.schema import Alert, WorklistItem
from overread.triage.score import StudyContext
from overread.triage.worklist import upsert_study

_AGE = re.compile(r"^(\d{3})([DWMY])$")
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


def dicom_age_years(value: str | None) -> float | None:
    """A DICOM Age String (``045Y``, ``006M``, ``003W``, ``010D``) in years; ``None`` if absent or malformed."""
    if not value:
        return None
    match = _AGE.match(str(value).strip().upper())
    if match is None:
        return None
    return int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2)]


_DEPARTMENT_WORDS: tuple[tuple[str, str], ...] = (
    ("emergency", "ED"),
    ("intensive", "ICU"),
    ("critical care", "ICU"),
    ("outpatient", "outpatient"),
    ("inpatient", "inpatient"),
    ("ward", "inpatient"),
)


def department_key(text: str | None) -> str:
    """The triage department key for a DICOM department or service name.

    Accepts the keys themselves (``ED``, ``ICU``...) and the free text that modalities
    put in Institutional Department Name or Requesting Service ("Emergency
    Department", "Intensive Care Unit"); returns ``""`` when it cannot tell.
    """
    value = (text or "").strip()
    if not value:
        return ""
    lowered = value.lower()
    if lowered in {"ed", "er", "icu", "inpatient", "outpatient", "emergency"}:
        return "ED" if lowered in {"er", "emergency"} else value
    for word, key in _DEPARTMENT_WORDS:
        if word in lowered:
            return key
    return value


def merge_findings(images: Iterable[Sequence[FindingResult]]) -> list[FindingResult]:
    """One finding per label across a study's images: the most probable image's.

    Findings without a usable probability (NaN) are skipped; ``positive`` is true if
    any image was positive for the label; the decision is the strongest of any image
    (positive, then indeterminate, then negative: :attr:`Decision.severity`); the codes
    are the first image's that has any; an unknown threshold proximity counts as 0; the
    trust and uncertainty values are the most probable image's.
    """
    best: dict[str, FindingResult] = {}
    positive: dict[str, bool] = {}
    decision: dict[str, Decision] = {}
    codes: dict[str, tuple[Code, ...]] = {}
    for findings in images:
        for finding in findings:
            label = finding.label
            if math.isnan(finding.probability):
                continue
            positive[label] = positive.get(label, False) or finding.positive
            if label not in decision or finding.decision.severity > decision[label].severity:
                decision[label] = finding.decision
            if not codes.get(label):
                codes[label] = finding.codes
            current = best.get(label)
            if current is None or finding.probability > current.probability:
                best[label] = finding
    return [
        f.with_values(
            positive=positive[f.label],
            threshold_proximity=f.threshold_proximity or 0.0,
            decision=decision[f.label],
            codes=codes[f.label],
        )
        for f in best.values()
    ]


@dataclass(frozen=True)
class StudyGate:
    """What the input gate said of a study, for the worklist and the study page.

    ``analysis`` is ``analysed``, ``not analysed`` (every image refused) or ``outside
    intended use`` (a reader had a refused study analysed anyway); ``status`` the
    worst image verdict (``pass``, ``flag``, ``refuse``; ``""`` when no gate ran).
    """

    analysis: str = "analysed"
    status: str = ""
    reasons: tuple[str, ...] = ()

    @property
    def note(self) -> str:
        """One line for a reader ("" when there is nothing to say)."""
        reason = "; ".join(self.reasons)
        if self.analysis == "not analysed":
            return f"not analysed: {reason}"
        if self.analysis == "outside intended use":
            return f"outside the model's intended use (analysed anyway): {reason}"
        if self.status == "refuse":  # some images refused, the others analysed
            return f"partly analysed, some images not analysed: {reason}"
        if self.status == "flag":
            return f"flagged: {reason}"
        return ""


_GATE_ORDER = {"": 0, "pass": 0, "flag": 1, "refuse": 2}


def study_gate(summary: ResultSummary) -> StudyGate:
    """The study's :class:`StudyGate` from its stored result."""
    gates = [p.gate for p in summary.instances if p.gate is not None]
    if not gates:
        return StudyGate()
    status = max((g.status for g in gates), key=lambda s: _GATE_ORDER.get(s, 1))
    reasons = tuple(dict.fromkeys(r for g in gates if g.status != "pass" for r in g.reasons))
    if not summary.usable() and any(g.refused for g in gates):
        return StudyGate("not analysed", status, reasons)
    if any(p.outside_intended_use for p in summary.instances):
        return StudyGate("outside intended use", status, reasons)
    return StudyGate("analysed", status, reasons)


def triage_result(
    session: Session,
    result: Any,
    context: StudyContext,
    config: TriageConfig,
    *,
    now: datetime,
) -> tuple[WorklistItem, list[Alert]]:
    """Put a stored result's study on the worklist and raise its critical alerts.

    Parameters
    ----------
    result
        An :class:`overread.service.db.Result` (or anything with
        ``study_instance_uid``, ``model_name``, ``model_version`` and a ``summary`` of
        ``{"instances": [prediction summary, ...], "sop_instance_uids": [...]}``).
    context
        Department, patient age and time received, which the gateway knows.

    Raises
    ------
    ConfigError
        If no image of the result was predicted successfully.
    """
    summary = ResultSummary.from_dict(result.summary)
    usable = summary.usable()
    refused = [
        (i, p) for i, p in enumerate(summary.instances) if p.gate is not None and p.gate.refused
    ]
    if not usable and not refused:
        raise ConfigError(
            f"study {result.study_instance_uid}: no successful prediction in the result to triage"
        )
    # A study the input gate refused is listed too ("not analysed"), without findings:
    # it still waits for a reader, scored by its waiting time and department alone.
    first_index, first = usable[0] if usable else refused[0]
    findings = merge_findings(prediction.findings for _, prediction in usable)
    item = upsert_study(
        session,
        str(result.study_instance_uid),
        findings,
        context,
        config,
        now=now,
        sop_instance_uid=summary.sop_instance_uid(first_index),
        path=first.path or "",
        patient_id=summary.study.patient_id if summary.study is not None else "",
        model_name=str(result.model_name),
        model_version=str(result.model_version),
    )
    return item, raise_alerts(session, item, config, now=now)


__all__ = [
    "StudyGate",
    "department_key",
    "dicom_age_years",
    "merge_findings",
    "study_gate",
    "triage_result",
]
