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
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from overread.errors import ConfigError
from overread.triage.alerts import raise_alerts
from overread.triage.config import TriageConfig
from overread.triage.schema import Alert, WorklistItem
from overread.triage.score import FindingLike, StudyContext
from overread.triage.worklist import StoredFinding, upsert_study

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


def merge_findings(images: Iterable[Sequence[FindingLike]]) -> list[StoredFinding]:
    """One finding per label across a study's images: the most probable image's.

    Findings without a usable probability (``None`` or NaN) are skipped; ``positive``
    is true if any image was positive for the label.
    """
    best: dict[str, StoredFinding] = {}
    positive: dict[str, bool] = {}
    for findings in images:
        for finding in findings:
            probability = finding.probability
            if probability is None or math.isnan(float(probability)):
                continue
            stored = StoredFinding.from_finding(finding)
            positive[stored.label] = positive.get(stored.label, False) or stored.positive
            current = best.get(stored.label)
            if current is None or stored.probability > current.probability:
                best[stored.label] = stored
    return [
        StoredFinding(f.label, f.probability, positive[f.label], f.uncertainty, f.threshold)
        for f in best.values()
    ]


def _summary_findings(instance: dict[str, Any]) -> list[StoredFinding]:
    found: list[StoredFinding] = []
    for data in instance.get("findings") or []:
        if data.get("probability") is None or not data.get("label"):
            continue
        found.append(
            StoredFinding(
                label=str(data["label"]),
                probability=float(data["probability"]),
                positive=bool(data.get("positive", False)),
                uncertainty=float(data.get("uncertainty") or 0.0),
                threshold=None if data.get("threshold") is None else float(data["threshold"]),
            )
        )
    return found


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
    summary: dict[str, Any] = dict(result.summary or {})
    instances: list[dict[str, Any]] = list(summary.get("instances") or [])
    sop_uids: list[str] = [str(u) for u in summary.get("sop_instance_uids") or []]
    usable = [(i, inst) for i, inst in enumerate(instances) if inst.get("ok")]
    if not usable:
        raise ConfigError(
            f"study {result.study_instance_uid}: no successful prediction in the result to triage"
        )
    first_index, first = usable[0]
    findings = merge_findings(_summary_findings(inst) for _, inst in usable)
    item = upsert_study(
        session,
        str(result.study_instance_uid),
        findings,
        context,
        config,
        now=now,
        sop_instance_uid=sop_uids[first_index] if first_index < len(sop_uids) else "",
        path=str(first.get("path") or ""),
        patient_id=str((summary.get("study") or {}).get("patient_id") or ""),
        model_name=str(result.model_name),
        model_version=str(result.model_version),
    )
    return item, raise_alerts(session, item, config, now=now)


__all__ = ["department_key", "dicom_age_years", "merge_findings", "triage_result"]
