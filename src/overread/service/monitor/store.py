"""What monitoring keeps in the database: one observation per analysed image, the
monitoring alerts already raised, and the daily figures of the last run.

``study_observations`` holds a :class:`~overread.monitoring.StudyObservation` per
analysed image (header mix, image statistics, the model's probabilities and
decisions, the 24-number image descriptor, subgroup attributes); no pixels. It is
written in the transaction that stores the result (:func:`store_observations`), so a
result and its observation come and go together.

``monitoring_alerts`` is the history of alerts routed: a run that finds an alert of
the same kind, subject and model within ``cooldown_days`` of a stored one routes
nothing (:mod:`.run`). ``monitoring_points`` holds each run's daily figures (a
site's drift scores, a label's rolling AUC) for the summary and the plots, replaced
day by day by the next run.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Date, Float, Index, Integer, String, Text, delete, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from overread.db import Base, utcnow
from overread.monitoring import StudyObservation, observe
from overread.results import Prediction
from overread.service.monitor.settings import MonitoringSettings

logger = logging.getLogger(__name__)


class StoredObservation(Base):
    """One analysed image as monitoring sees it (see the module)."""

    __tablename__ = "study_observations"
    __table_args__ = (Index("ix_study_observations_date_site", "study_date", "site"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(Integer, index=True)
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    site: Mapped[str] = mapped_column(String(64))
    study_date: Mapped[dt.date] = mapped_column(Date)
    model: Mapped[str] = mapped_column(String(200))
    role: Mapped[str] = mapped_column(String(16), default="")
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class MonitoringAlertRecord(Base):
    """A monitoring alert that was routed (or found already routed: see :mod:`.run`)."""

    __tablename__ = "monitoring_alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(200))
    model: Mapped[str] = mapped_column(String(200), default="")
    alert_date: Mapped[dt.date] = mapped_column(Date, index=True)
    statistic: Mapped[str] = mapped_column(String(64), default="")
    value: Mapped[float] = mapped_column(Float, default=0.0)
    threshold: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(Text, default="")
    evidence: Mapped[dict[str, Any]] = mapped_column(default=dict)
    triage_alert_id: Mapped[int | None] = mapped_column(Integer, default=None)
    raised_at: Mapped[datetime] = mapped_column(default=utcnow)


class PointKind(enum.StrEnum):
    """What a :class:`MonitoringPoint` measures."""

    DRIFT = "drift"
    AUC = "auc"


class MonitoringPoint(Base):
    """One daily figure of the last monitoring run (see the module)."""

    __tablename__ = "monitoring_points"
    __table_args__ = (Index("ix_monitoring_points_kind_date", "kind", "point_date"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    point_date: Mapped[dt.date] = mapped_column(Date)
    model: Mapped[str] = mapped_column(String(200), default="")
    site: Mapped[str] = mapped_column(String(64), default="")
    label: Mapped[str] = mapped_column(String(64), default="")
    value: Mapped[float | None] = mapped_column(Float, default=None)
    data: Mapped[dict[str, Any]] = mapped_column(default=dict)


def _number(value: float) -> float | None:
    return None if value != value else float(value)  # NaN is not JSON


def observation_data(o: StudyObservation) -> dict[str, Any]:
    """The JSON kept for an observation (what :func:`observation_from_row` reads back)."""
    return {
        "header": list(o.header),
        "image": [_number(v) for v in o.image],
        "labels": list(o.labels),
        "probabilities": [round(float(p), 6) for p in o.probabilities],
        "positive": [bool(p) for p in o.positive],
        "embedding": [round(float(v), 6) for v in o.embedding],
        "sex": o.sex,
        "age": o.age,
        "group": o.group,
        "patient_id": o.patient_id,
    }


def observation_from_row(row: StoredObservation) -> StudyObservation:
    """The :class:`StudyObservation` a stored row holds."""
    d = row.data or {}
    return StudyObservation(
        study_instance_uid=row.study_instance_uid,
        site=row.site,
        date=row.study_date,
        model=row.model,
        header=tuple(str(v) for v in d.get("header", ())),
        image=tuple(float("nan") if v is None else float(v) for v in d.get("image", ())),
        labels=tuple(str(v) for v in d.get("labels", ())),
        probabilities=tuple(float(v) for v in d.get("probabilities", ())),
        positive=tuple(bool(v) for v in d.get("positive", ())),
        embedding=tuple(float(v) for v in d.get("embedding", ())),
        sex=str(d.get("sex", "")),
        age=int(d.get("age", -1)),
        group=str(d.get("group", "")),
        patient_id=str(d.get("patient_id", "")),
    )


def observe_study(
    readings: Sequence[tuple[Prediction, Any]],
    *,
    calling_ae: str,
    institution: str,
    settings: MonitoringSettings,
) -> list[StudyObservation]:
    """The observations of a study's analysed images (``(prediction, dataset)`` pairs).

    An image without its model input (refused, unreadable) is left out; a failure to
    observe is logged and never fails the inference.
    """
    out: list[StudyObservation] = []
    for prediction, dataset in readings:
        x = getattr(prediction, "model_input", None)
        if not prediction.ok or x is None or dataset is None:
            continue
        site = settings.site_of(calling_ae, institution or str(dataset.get("InstitutionName", "")))
        try:
            out.append(observe(dataset, x, prediction, site=site))
        except Exception as exc:  # monitoring must not fail an inference
            logger.warning("no monitoring observation of %s: %s", prediction.path, exc)
    return out


def store_observations(
    session: Session,
    result_id: int,
    observations: Iterable[StudyObservation],
    *,
    role: str = "",
    today: dt.date | None = None,
) -> int:
    """Add the observations of one result in the caller's transaction; return how many.

    A study without a Study Date is dated by its arrival (``today``).
    """
    count = 0
    for o in observations:
        date = o.date if o.date != dt.date.min else (today or utcnow().date())
        session.add(
            StoredObservation(
                result_id=result_id,
                study_instance_uid=o.study_instance_uid[:64],
                site=o.site[:64],
                study_date=date,
                model=o.model[:200],
                role=role,
                data=observation_data(o),
                created_at=utcnow(),
            )
        )
        count += 1
    return count


def load_observations(
    session: Session, start: dt.date, end: dt.date, *, exclude_roles: Sequence[str] = ("shadow",)
) -> list[StudyObservation]:
    """The stored observations dated ``start..end`` (inclusive), oldest first."""
    rows = session.scalars(
        select(StoredObservation)
        .where(
            StoredObservation.study_date >= start,
            StoredObservation.study_date <= end,
            StoredObservation.role.not_in(list(exclude_roles)),
        )
        .order_by(StoredObservation.study_date, StoredObservation.id)
    ).all()
    return [observation_from_row(r) for r in rows]


def replace_points(
    session: Session, kind: PointKind, start: dt.date, points: Sequence[MonitoringPoint]
) -> None:
    """Replace the stored points of ``kind`` dated from ``start`` by ``points``."""
    session.execute(
        delete(MonitoringPoint).where(
            MonitoringPoint.kind == kind.value, MonitoringPoint.point_date >= start
        )
    )
    session.add_all(points)


__all__ = [
    "MonitoringAlertRecord",
    "MonitoringPoint",
    "PointKind",
    "StoredObservation",
    "load_observations",
    "observation_data",
    "observation_from_row",
    "observe_study",
    "replace_points",
    "store_observations",
]
