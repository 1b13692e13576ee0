"""Reader feedback on the model's findings, and its export as a labelled dataset.

A reader agrees, disagrees or is uncertain about each finding the model reported,
or gives the final label outright. Each verdict becomes a label in CheXpert's
convention (1 present, 0 absent, -1 uncertain) next to the model output it judged,
so :func:`export_feedback` can write a dataset the training code reads like a
phantom cohort's ``labels.csv``, ordered for active learning: the cases the model
was least sure of first, where a new label teaches it most.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from overread.audit import AuditAction, record_event
from overread.errors import ConfigError
from overread.findings import CHEXPERT_LABELS
from overread.results import FindingResult
from overread.triage.alerts import close_study_alerts
from overread.triage.schema import Feedback, Verdict, WorklistItem
from overread.triage.worklist import get_item

logger = logging.getLogger(__name__)

#: Columns of the exported CSV before and after the 14 label columns.
KEY_COLUMNS: tuple[str, ...] = ("Path", "PatientID", "StudyInstanceUID", "SOPInstanceUID")
EXTRA_COLUMNS: tuple[str, ...] = ("Margin", "MaxThresholdProximity", "Readers", "LastFeedbackAt")

_LABEL_VALUES = (1.0, 0.0, -1.0)


def verdict_label(verdict: Verdict, model_positive: bool | None, label: float | None) -> float:
    """The CheXpert label a verdict stands for.

    ``agree`` keeps the model's decision, ``disagree`` flips it, ``uncertain`` is
    -1, and ``label`` is the reader's own value (1, 0 or -1).
    """
    if verdict is Verdict.LABEL:
        if label is None or float(label) not in _LABEL_VALUES:
            raise ConfigError(f"a final label must be 1, 0 or -1, got {label!r}")
        return float(label)
    if verdict is Verdict.UNCERTAIN:
        return -1.0
    if model_positive is None:
        raise ConfigError(f"cannot {verdict.value} with a finding the model did not report")
    agrees = verdict is Verdict.AGREE
    return 1.0 if model_positive == agrees else 0.0


def record_feedback(
    session: Session,
    study_instance_uid: str,
    finding: str,
    verdict: Verdict | str,
    *,
    reader: str,
    now: datetime,
    label: float | None = None,
    role: str = "",
) -> Feedback:
    """Store one reader's verdict on one finding of a worklist study (audited).

    The study was read, so its open or acknowledged alerts are closed
    (:func:`~overread.triage.alerts.close_study_alerts`).

    Raises
    ------
    ConfigError
        Unknown finding or verdict, no reader, or a final label not in {1, 0, -1}.
    KeyError
        If the study is not on the worklist.
    """
    if finding not in CHEXPERT_LABELS:
        raise ConfigError(f"unknown finding {finding!r}")
    try:
        kind = Verdict(verdict)
    except ValueError:
        known = ", ".join(v.value for v in Verdict)
        raise ConfigError(f"unknown verdict {verdict!r} (known: {known})") from None
    if not reader:
        raise ConfigError("feedback needs the name of the reader")
    item = get_item(session, study_instance_uid)
    model = next(
        (FindingResult.from_dict(d) for d in item.findings if d.get("label") == finding), None
    )
    value = verdict_label(kind, None if model is None else model.positive, label)
    row = Feedback(
        study_instance_uid=study_instance_uid,
        finding=finding,
        verdict=kind.value,
        label=value,
        probability=None if model is None else model.probability,
        threshold=None if model is None else model.known_threshold,
        threshold_proximity=None if model is None else model.threshold_proximity,
        reader=reader,
        created_at=now,
    )
    session.add(row)
    session.flush()
    record_event(
        session,
        actor=reader,
        role=role,
        action=AuditAction.FEEDBACK,
        object_uids=[study_instance_uid],
        details={"feedback_id": row.id, "finding": finding, "verdict": kind.value, "label": value},
    )
    # A verdict means the study was read: its critical alerts are closed.
    close_study_alerts(session, study_instance_uid, who=reader, role=role, now=now)
    return row


@dataclass(frozen=True)
class _StudyLabels:
    item: WorklistItem
    labels: dict[str, float]
    margin: float
    max_proximity: float
    readers: tuple[str, ...]
    last_at: datetime


def _margin(row: Feedback, default_threshold: float) -> float:
    if row.probability is None:
        return float("inf")
    threshold = default_threshold if row.threshold is None else row.threshold
    return abs(row.probability - threshold)


def export_feedback(
    session: Session,
    path: str | Path,
    *,
    default_threshold: float = 0.5,
    order: str = "margin",
) -> int:
    """Write the readers' labels as a CheXpert-format CSV; return the number of studies.

    One row per study with feedback: ``Path`` (the image path, or the SOP Instance UID
    where none is known), ``PatientID``, ``StudyInstanceUID``, ``SOPInstanceUID``, the
    14 labels (the latest verdict per finding; blank where no reader gave one), then
    ``Margin`` (smallest ``|p - threshold|`` among the labelled findings),
    ``MaxThresholdProximity``, ``Readers`` and ``LastFeedbackAt``. Rows are ordered for active
    learning: with ``order="margin"`` (default) smallest margin first, then highest
    threshold proximity; with ``order="proximity"`` highest proximity first, then
    smallest margin (``"uncertainty"``, its former name, is still accepted). A study with
    neither an image path nor a SOP Instance UID cannot be trained on and is left out
    with a warning.
    """
    if order == "uncertainty":
        order = "proximity"
    if order not in ("margin", "proximity"):
        raise ConfigError(f"unknown feedback order {order!r} (known: margin, proximity)")
    rows = session.execute(select(Feedback).order_by(Feedback.created_at, Feedback.id)).scalars()
    latest: dict[str, dict[str, Feedback]] = {}
    for row in rows:
        latest.setdefault(row.study_instance_uid, {})[row.finding] = row
    studies: list[_StudyLabels] = []
    for uid, by_finding in latest.items():
        item = session.execute(
            select(WorklistItem).where(WorklistItem.study_instance_uid == uid)
        ).scalar_one()
        if not (item.path or item.sop_instance_uid):
            logger.warning("study %s: feedback not exported, no image path or SOP UID", uid)
            continue
        chosen = list(by_finding.values())
        studies.append(
            _StudyLabels(
                item=item,
                labels={f: r.label for f, r in by_finding.items()},
                margin=min(_margin(r, default_threshold) for r in chosen),
                max_proximity=max((r.threshold_proximity or 0.0) for r in chosen),
                readers=tuple(sorted({r.reader for r in chosen})),
                last_at=max(r.created_at for r in chosen),
            )
        )

    # Values are compared at 1e-6 so float noise does not hide the tie-break.
    def margin_first(s: _StudyLabels) -> tuple[float, float, str]:
        return (round(s.margin, 6), -round(s.max_proximity, 6), s.item.study_instance_uid)

    def proximity_first(s: _StudyLabels) -> tuple[float, float, str]:
        return (-round(s.max_proximity, 6), round(s.margin, 6), s.item.study_instance_uid)

    studies.sort(key=margin_first if order == "margin" else proximity_first)
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([*KEY_COLUMNS, *CHEXPERT_LABELS, *EXTRA_COLUMNS])
        for study in studies:
            item = study.item
            labels = [
                f"{study.labels[name]:.1f}" if name in study.labels else ""
                for name in CHEXPERT_LABELS
            ]
            margin = "" if study.margin == float("inf") else f"{study.margin:.6f}"
            writer.writerow(
                [
                    item.path or item.sop_instance_uid,
                    item.patient_id,
                    item.study_instance_uid,
                    item.sop_instance_uid,
                    *labels,
                    margin,
                    f"{study.max_proximity:.6f}",
                    ";".join(study.readers),
                    study.last_at.isoformat(),
                ]
            )
    logger.info("exported feedback on %d studies to %s", len(studies), target)
    return len(studies)


__all__ = [
    "EXTRA_COLUMNS",
    "KEY_COLUMNS",
    "export_feedback",
    "record_feedback",
    "verdict_label",
]
