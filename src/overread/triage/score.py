"""The priority score: why one study should be read before another.

The score is a sum of named terms, so the worklist can show a reader exactly why a
study sits where it does::

    score = sum_f severity[f] * (p_f + proximity_weight * t_f)   # findings
          + departments[department]                               # context
          + age points (elderly or paediatric)
          + min(points_per_waiting_hour * hours waited, max_waiting_points)

Hours waited count in whole steps of ``waiting_step_minutes`` (5 by default), so a
score changes only at a step; :func:`score_changes_at` says when the next one is.

Every weight is non-negative, so a more severe or more probable finding, a more
urgent department or a longer wait never lowers the score. The functions here are
pure: the clock is an argument.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from overread.results import FindingResult
from overread.triage.config import ScoreWeights


@dataclass(frozen=True)
class StudyContext:
    """What is known of a study besides its pixels.

    Attributes
    ----------
    department
        Requesting department (``"ED"``, ``"ICU"``, ``"outpatient"``...); empty if unknown.
    patient_age
        Age in years, ``None`` if unknown.
    received_at
        When the study arrived; waiting time is counted from here.
    """

    department: str = ""
    patient_age: float | None = None
    received_at: datetime | None = None


@dataclass(frozen=True)
class ScoreTerm:
    """One term of the score: what it is, and how many points it added."""

    name: str
    contribution: float
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, as stored in the worklist."""
        return {
            "name": self.name,
            "contribution": round(self.contribution, 4),
            "detail": self.detail,
        }


@dataclass(frozen=True)
class PriorityScore:
    """A study's score and its breakdown (terms in descending contribution)."""

    total: float
    terms: tuple[ScoreTerm, ...] = field(default_factory=tuple)

    def breakdown(self) -> list[dict[str, Any]]:
        """The terms as JSON-able dicts."""
        return [t.to_dict() for t in self.terms]


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def finding_terms(findings: Iterable[FindingResult], weights: ScoreWeights) -> list[ScoreTerm]:
    """One term per finding whose severity weight is non-zero.

    Probabilities and threshold proximities are clipped to [0, 1]; a NaN (or an
    unknown proximity) counts as 0 (an unusable output must not hide a study by breaking the
    sort).
    """
    terms: list[ScoreTerm] = []
    for finding in findings:
        severity = weights.severity.get(finding.label, 0.0)
        if severity <= 0:
            continue
        probability = _unit(finding.probability)
        proximity = _unit(finding.threshold_proximity)
        points = severity * (probability + weights.proximity_weight * proximity)
        if points <= 0:
            continue
        terms.append(
            ScoreTerm(
                name=f"finding:{finding.label}",
                contribution=points,
                detail=(
                    f"severity {severity:g} x (p {probability:.3f} + "
                    f"{weights.proximity_weight:g} x proximity {proximity:.3f})"
                ),
            )
        )
    return terms


def _unit(value: float | None) -> float:
    if value is None:
        return 0.0
    value = float(value)
    if math.isnan(value):
        return 0.0
    return min(max(value, 0.0), 1.0)


def context_terms(context: StudyContext, weights: ScoreWeights, now: datetime) -> list[ScoreTerm]:
    """Department, age and waiting-time terms (those that add points)."""
    terms: list[ScoreTerm] = []
    department = context.department.strip().lower()
    if department and weights.departments.get(department, 0.0) > 0:
        terms.append(
            ScoreTerm(
                "department", weights.departments[department], f"department {context.department}"
            )
        )
    age = context.patient_age
    if age is not None and not math.isnan(age):
        if age >= weights.elderly_age and weights.elderly_points > 0:
            terms.append(
                ScoreTerm("age", weights.elderly_points, f"age {age:g} >= {weights.elderly_age:g}")
            )
        elif age < weights.paediatric_age and weights.paediatric_points > 0:
            terms.append(
                ScoreTerm(
                    "age", weights.paediatric_points, f"age {age:g} < {weights.paediatric_age:g}"
                )
            )
    waiting = _waiting(context, weights, now)
    if waiting is not None and waiting.points > 0:
        terms.append(ScoreTerm("waiting", waiting.points, waiting.detail))
    return terms


@dataclass(frozen=True)
class _Waiting:
    """The waiting term at one moment, and when it next changes (``None``: never)."""

    points: float
    detail: str
    changes_at: datetime | None


def _waiting(context: StudyContext, weights: ScoreWeights, now: datetime) -> _Waiting | None:
    """Waiting time counted in whole steps of ``waiting_step_minutes`` (0: continuously).

    ``changes_at`` is the first moment after ``now`` at which the term differs, the
    score's other terms not depending on the clock: the next step, or ``now`` itself
    when counted continuously, or ``None`` once the cap is reached (or waiting earns
    nothing). The detail names the cap once reached, so it stops changing too.
    """
    if context.received_at is None:
        return None
    received = _aware(context.received_at)
    waited = _aware(now) - received
    rate, cap = weights.points_per_waiting_hour, weights.max_waiting_points
    changes_at: datetime | None
    if weights.waiting_step_minutes > 0:
        step = timedelta(minutes=weights.waiting_step_minutes)
        steps = max(waited // step, 0)  # exact: timedelta arithmetic in microseconds
        hours = (step * steps).total_seconds() / 3600.0
        changes_at = received + step * (steps + 1)
    else:
        hours = max(waited.total_seconds() / 3600.0, 0.0)
        changes_at = _aware(now)
    if rate <= 0 or rate * hours >= cap:
        # Capped (or nothing to earn): more waiting changes nothing.
        detail = f"waited {cap / rate:.2f} h or more" if rate > 0 else f"waited {hours:.2f} h"
        return _Waiting(min(rate * hours, cap), detail, None)
    return _Waiting(rate * hours, f"waited {hours:.2f} h", changes_at)


def score_changes_at(
    context: StudyContext, weights: ScoreWeights, now: datetime
) -> datetime | None:
    """When a study scored at ``now`` next scores differently, its findings and context
    unchanged (``None``: never). Only waiting time depends on the clock."""
    waiting = _waiting(context, weights, now)
    return waiting.changes_at if waiting is not None else None


def score_study(
    findings: Sequence[FindingResult],
    context: StudyContext,
    weights: ScoreWeights | None = None,
    *,
    now: datetime | None = None,
) -> PriorityScore:
    """Score one study.

    Parameters
    ----------
    findings
        The model's findings (label, calibrated probability, threshold proximity).
    context
        Department, patient age, time received.
    weights
        Score weights; defaults from :class:`~overread.triage.config.ScoreWeights`.
    now
        The clock for waiting time; defaults to the current UTC time.
    """
    weights = weights or ScoreWeights()
    now = now or datetime.now(UTC)
    terms = finding_terms(findings, weights) + context_terms(context, weights, now)
    terms.sort(key=lambda t: (-t.contribution, t.name))
    return PriorityScore(total=sum(t.contribution for t in terms), terms=tuple(terms))


__all__ = [
    "PriorityScore",
    "ScoreTerm",
    "StudyContext",
    "context_terms",
    "finding_terms",
    "score_changes_at",
    "score_study",
]
