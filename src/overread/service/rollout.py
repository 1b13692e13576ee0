"""Safe model rollout: shadow, canary, promotion, rollback and the per-model kill switch.

An alias of the model registry names the *active* version. A rollout puts a
*candidate* version beside it, in one of two states:

* **shadow**: every study routed to the alias is read by both; the candidate's
  result is stored and marked shadow, never exported, never put on the worklist;
* **canary**: a share of studies, chosen by a hash of the Study Instance UID (the
  same study always lands on the same side), is read by the candidate only, and its
  results are exported as the active's are; the rest are read by the active version.

The rollout state lives in the database (table ``model_rollouts``, one row per
alias), not in the registry's alias file: every gateway and ``overread worker``
process sharing the database sees a change at its next study, it survives restarts,
and a change is a transaction (the automatic rollback is a compare-and-set, so of
several workers seeing the bounds left only one rolls back). Promotion ends the
rollout by pointing the alias at the candidate in the registry (``set_alias``, the
same switch as ``overread models alias``), so the alias file stays what says which
version is active.

Kill switches (table ``model_kill_switches``) hold the exports of a model's results:
an export job of a killed model is put in the ``held`` state instead of being sent,
and goes back to the queue when the switch is released; nothing is lost.

Every change is audited (``rollout-start``, ``rollout-promote``, ``rollout-rollback``,
``kill-switch``).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import Integer, String, Text, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column
from sqlalchemy.sql.elements import ColumnElement

from overread.audit import AuditAction, AuditEvent, record_event
from overread.db import Base, Database, utcnow
from overread.errors import ConfigError
from overread.results import ResultSummary
from overread.service.db import Job, JobKind, JobState, Result

if TYPE_CHECKING:
    from overread.models.registry import Registry

logger = logging.getLogger(__name__)

#: Canary shares are compared with a bucket in ``[0, CANARY_BUCKETS)``.
CANARY_BUCKETS = 10_000


class RolloutState(enum.StrEnum):
    """Where an alias's rollout is."""

    SHADOW = "shadow"
    CANARY = "canary"
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled-back"

    @property
    def open(self) -> bool:
        """Whether the candidate still runs on live traffic."""
        return self in (RolloutState.SHADOW, RolloutState.CANARY)


class RolloutRole(enum.StrEnum):
    """Which side of a rollout a job or result is on."""

    ACTIVE = "active"
    SHADOW = "shadow"
    CANARY = "canary"


class ModelRollout(Base):
    """The current rollout of one alias (the row is replaced by the next rollout)."""

    __tablename__ = "model_rollouts"

    alias: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    active_ref: Mapped[str] = mapped_column(String(200))
    candidate_ref: Mapped[str] = mapped_column(String(200))
    canary_share: Mapped[int] = mapped_column(Integer, default=0)
    bounds: Mapped[dict[str, Any]] = mapped_column(default=dict)
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128), default="")
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class RolloutResult(Base):
    """Marks a stored result as the active's, a shadow's or a canary's."""

    __tablename__ = "model_rollout_results"

    result_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    alias: Mapped[str] = mapped_column(String(64), index=True)
    role: Mapped[str] = mapped_column(String(16))
    study_instance_uid: Mapped[str] = mapped_column(String(64), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KillSwitch(Base):
    """An engaged kill switch: exports of the model's results are held.

    ``model`` is a package name (every version) or ``name@version``.
    """

    __tablename__ = "model_kill_switches"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    actor: Mapped[str] = mapped_column(String(128), default="")
    engaged_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True)
class CanaryBounds:
    """The figures a canary is watched on; leaving any bound rolls it back.

    Parameters
    ----------
    min_studies
        Canary studies finished before any figure is judged (fewer says little).
    max_failure_rate
        Share of the candidate's infer jobs that failed (retrying or dead-lettered).
    max_positive_rate_increase
        Share of findings called positive by the candidate minus the active's
        (absolute): a candidate whose thresholds call everything positive floods
        the worklist with alerts.
    max_refusal_rate_increase
        Share of studies the candidate's input gate refused minus the active's.
    max_latency_ratio
        Median model time per study of the candidate over the active's.
    baseline_days
        The active version's results of this many days back are its reference.
    """

    min_studies: int = 5
    max_failure_rate: float = 0.2
    max_positive_rate_increase: float = 0.25
    max_critical_rate_increase: float = 0.1
    max_refusal_rate_increase: float = 0.1
    max_latency_ratio: float = 3.0
    baseline_days: float = 30.0

    def __post_init__(self) -> None:
        if self.min_studies < 1:
            raise ConfigError("canary min_studies must be at least 1")
        for name in (
            "max_failure_rate",
            "max_positive_rate_increase",
            "max_critical_rate_increase",
            "max_refusal_rate_increase",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"canary {name} must be between 0 and 1")
        if self.max_latency_ratio <= 0 or self.baseline_days <= 0:
            raise ConfigError("canary max_latency_ratio and baseline_days must be positive")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CanaryBounds:
        """Bounds stored with a rollout (unknown keys ignored, missing ones default)."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class Rollout:
    """An alias's rollout as read from the database."""

    alias: str
    state: RolloutState
    active_ref: str
    candidate_ref: str
    canary_share: float
    bounds: CanaryBounds
    reason: str
    actor: str
    started_at: datetime
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        """JSON for ``--json`` and the REST API."""
        return {
            "alias": self.alias,
            "state": self.state.value,
            "active": self.active_ref,
            "candidate": self.candidate_ref,
            "canary_share": self.canary_share,
            "bounds": asdict(self.bounds),
            "reason": self.reason,
            "actor": self.actor,
            "started_at": self.started_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


def _rollout(row: ModelRollout) -> Rollout:
    return Rollout(
        alias=row.alias,
        state=RolloutState(row.state),
        active_ref=row.active_ref,
        candidate_ref=row.candidate_ref,
        canary_share=row.canary_share / CANARY_BUCKETS,
        bounds=CanaryBounds.from_dict(dict(row.bounds or {})),
        reason=row.reason,
        actor=row.actor,
        started_at=row.started_at,
        updated_at=row.updated_at,
    )


def _aware(moment: datetime) -> datetime:
    """``moment`` as timezone-aware UTC (a naive one is taken as UTC)."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def canary_bucket(study_instance_uid: str) -> int:
    """The study's bucket in ``[0, 10000)``: the first 8 hex digits of the SHA-256 of
    its Study Instance UID, modulo 10000 (the same on every process and restart)."""
    digest = hashlib.sha256(study_instance_uid.strip().encode("ascii", "replace")).hexdigest()
    return int(digest[:8], 16) % CANARY_BUCKETS


def in_canary(study_instance_uid: str, share: float) -> bool:
    """Whether a canary of ``share`` (0-1) reads this study."""
    return canary_bucket(study_instance_uid) < round(share * CANARY_BUCKETS)


def split_ref(ref: str) -> tuple[str, str]:
    """``(name, version)`` of a ``name@version`` reference."""
    name, _, version = ref.partition("@")
    return name, version


def _rollout_side(job: Job) -> tuple[str, RolloutRole | None, str]:
    """An infer job's alias, rollout side and ``name@version`` as its payload states
    them (the payload's reader, :class:`~overread.service.payloads.InferPayload`,
    imports this module)."""
    data = job.payload or {}
    role = str(data.get("role") or "")
    side = RolloutRole(role) if role in {r.value for r in RolloutRole} else None
    return str(data.get("alias") or job.model_name), side, str(data.get("model") or "")


def not_shadow() -> ColumnElement[bool]:
    """A filter on :class:`Result` queries leaving out shadow results: what a reader,
    the REST API or an export sees of a study is never a shadow's reading."""
    return ~(
        select(RolloutResult.result_id)
        .where(
            RolloutResult.result_id == Result.id,
            RolloutResult.role == RolloutRole.SHADOW.value,
        )
        .exists()
    )


# -- figures -------------------------------------------------------------------------
@dataclass(frozen=True)
class SideFigures:
    """What one side of a rollout did, from its stored results and jobs."""

    studies: int = 0
    failed_jobs: int = 0
    finished_jobs: int = 0
    findings: int = 0
    positive_findings: int = 0
    refused_studies: int = 0
    latencies: tuple[float, ...] = ()
    critical_studies: int = 0

    @property
    def failure_rate(self) -> float | None:
        """Failed over finished infer jobs (None before any finished)."""
        return self.failed_jobs / self.finished_jobs if self.finished_jobs else None

    @property
    def positive_rate(self) -> float | None:
        """Share of findings called positive."""
        return self.positive_findings / self.findings if self.findings else None

    @property
    def critical_rate(self) -> float | None:
        """Share of analysed studies with a critical finding at its alert threshold."""
        analysed = self.studies - self.refused_studies
        return self.critical_studies / analysed if analysed > 0 else None

    @property
    def refusal_rate(self) -> float | None:
        """Share of studies the input gate refused entirely."""
        return self.refused_studies / self.studies if self.studies else None

    @property
    def median_latency(self) -> float | None:
        """Median model seconds per study."""
        return statistics.median(self.latencies) if self.latencies else None

    def to_dict(self) -> dict[str, Any]:
        """JSON figures (rates rounded)."""

        def r(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {
            "studies": self.studies,
            "finished_jobs": self.finished_jobs,
            "failed_jobs": self.failed_jobs,
            "failure_rate": r(self.failure_rate),
            "positive_rate": r(self.positive_rate),
            "critical_rate": r(self.critical_rate),
            "refusal_rate": r(self.refusal_rate),
            "median_latency_s": r(self.median_latency),
        }


def _figures_of(
    summaries: Iterable[dict[str, Any]],
    jobs: Sequence[str] = (),
    critical: Mapping[str, float] | None = None,
) -> SideFigures:
    critical = critical or {}
    studies = findings = positives = refused = critical_studies = 0
    latencies: list[float] = []
    for data in summaries:
        summary = ResultSummary.from_dict(data)
        studies += 1
        instances = summary.instances
        if instances and all(not p.ok and p.gate is not None and p.gate.refused for p in instances):
            refused += 1
            continue
        alarming = False
        for prediction in instances:
            findings += len(prediction.findings)
            positives += sum(1 for f in prediction.findings if f.positive)
            alarming = alarming or any(
                f.label in critical and f.probability >= critical[f.label]
                for f in prediction.findings
            )
        critical_studies += int(alarming)
        seconds = (data.get("timings") or {}).get("model_total")
        if isinstance(seconds, int | float):
            latencies.append(float(seconds))
    failed = sum(1 for s in jobs if s in (JobState.FAILED.value, JobState.DEAD_LETTERED.value))
    finished = sum(
        1
        for s in jobs
        if s in (JobState.FAILED.value, JobState.DEAD_LETTERED.value, JobState.SUCCEEDED.value)
    )
    return SideFigures(
        studies,
        failed,
        finished,
        findings,
        positives,
        refused,
        tuple(latencies),
        critical_studies,
    )


@dataclass(frozen=True)
class CanaryVerdict:
    """The canary's figures against the active's, and the bounds they left."""

    alias: str
    candidate: SideFigures
    active: SideFigures
    breaches: tuple[str, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON: both sides' figures and the breaches."""
        return {
            "alias": self.alias,
            "candidate": self.candidate.to_dict(),
            "active": self.active.to_dict(),
            "breaches": list(self.breaches),
        }


def judge(candidate: SideFigures, active: SideFigures, bounds: CanaryBounds) -> tuple[str, ...]:
    """The bounds ``candidate`` left (empty while too few canary studies finished).

    A comparison with the active side needs ``min_studies`` of its results too;
    the failure rate needs none.
    """
    breaches: list[str] = []
    if max(candidate.finished_jobs, candidate.studies) < bounds.min_studies:
        return ()
    rate = candidate.failure_rate
    if rate is not None and rate > bounds.max_failure_rate:
        breaches.append(f"failure rate {rate:.2f} > {bounds.max_failure_rate:.2f}")
    if candidate.studies < bounds.min_studies or active.studies < bounds.min_studies:
        return tuple(breaches)
    rates = (
        (
            "positive-finding",
            candidate.positive_rate,
            active.positive_rate,
            bounds.max_positive_rate_increase,
        ),
        (
            "critical-finding",
            candidate.critical_rate,
            active.critical_rate,
            bounds.max_critical_rate_increase,
        ),
        (
            "gate refusal",
            candidate.refusal_rate,
            active.refusal_rate,
            bounds.max_refusal_rate_increase,
        ),
    )
    for what, cand, act, bound in rates:
        if cand is not None and act is not None and cand - act > bound:
            breaches.append(f"{what} rate {cand:.2f} vs active {act:.2f} (> +{bound:.2f})")
    cand_lat, act_lat = candidate.median_latency, active.median_latency
    if cand_lat is not None and act_lat and cand_lat / act_lat > bounds.max_latency_ratio:
        breaches.append(
            f"median model time {cand_lat:.3f} s vs active {act_lat:.3f} s "
            f"(> x{bounds.max_latency_ratio:g})"
        )
    return tuple(breaches)


# -- the store ------------------------------------------------------------------------
class RolloutStore:
    """Reads and changes rollouts and kill switches in the gateway's database.

    Parameters
    ----------
    database
        The gateway's database (shared by every process of the gateway).
    """

    def __init__(self, database: Database, critical: Mapping[str, float] | None = None) -> None:
        self.database = database
        self._critical = None if critical is None else dict(critical)

    @property
    def critical(self) -> dict[str, float]:
        """Critical findings and their alert thresholds (triage's defaults unless given)."""
        if self._critical is None:
            from overread.triage import TriageConfig

            self._critical = dict(TriageConfig().alerts.critical)
        return self._critical

    # reading
    def current(self, alias: str) -> Rollout | None:
        """The alias's rollout (open or the last ended one), or None."""
        with self.database.session() as session:
            row = session.get(ModelRollout, alias)
            return None if row is None else _rollout(row)

    def all(self) -> list[Rollout]:
        """Every alias's rollout."""
        with self.database.session() as session:
            return [_rollout(r) for r in session.scalars(select(ModelRollout)).all()]

    def open_rollout(self, alias: str) -> Rollout | None:
        """The alias's rollout when it is in shadow or canary."""
        rollout = self.current(alias)
        return rollout if rollout is not None and rollout.state.open else None

    # changing
    def start(
        self,
        alias: str,
        *,
        active_ref: str,
        candidate_ref: str,
        state: RolloutState,
        actor: str,
        canary_share: float = 0.0,
        bounds: CanaryBounds | None = None,
        role: str = "",
    ) -> Rollout:
        """Start (or change) a shadow or canary of ``candidate_ref`` beside ``active_ref``.

        Raises
        ------
        ConfigError
            If the state is not shadow/canary, the share is outside (0, 1], or the
            candidate is the active version.
        """
        if not state.open:
            raise ConfigError(f"a rollout starts in shadow or canary, not {state.value}")
        if state is RolloutState.CANARY and not 0.0 < canary_share <= 1.0:
            raise ConfigError(f"canary share must be in (0, 1], not {canary_share:g}")
        if candidate_ref == active_ref:
            raise ConfigError(f"{candidate_ref} is already the active version of {alias!r}")
        bounds = bounds or CanaryBounds()
        now = utcnow()
        with self.database.session() as session:
            row = session.get(ModelRollout, alias)
            previous = None if row is None else row.state
            if row is None:
                row = ModelRollout(alias=alias)
                session.add(row)
            # A canary's figures count from its start: a new candidate or a shadow
            # turned canary starts afresh; widening a canary's share does not.
            if not (previous == state.value and row.candidate_ref == candidate_ref):
                row.started_at = now
            row.state = state.value
            row.active_ref = active_ref
            row.candidate_ref = candidate_ref
            row.canary_share = round(canary_share * CANARY_BUCKETS)
            row.bounds = asdict(bounds)
            row.reason = ""
            row.actor = actor
            row.updated_at = now
            session.flush()
            rollout = _rollout(row)
            record_event(
                session,
                actor=actor,
                role=role,
                action=AuditAction.ROLLOUT_START,
                object_uids=[alias],
                details={**rollout.to_dict(), "previous_state": previous},
            )
        return rollout

    def end(
        self,
        alias: str,
        state: RolloutState,
        *,
        actor: str,
        reason: str = "",
        role: str = "",
        evidence: dict[str, Any] | None = None,
        expect: RolloutState | None = None,
        session: Session | None = None,
    ) -> Rollout | None:
        """End the alias's open rollout as promoted or rolled back (audited).

        ``expect``: end only a rollout in that state (a compare-and-set: of several
        workers judging a canary at once only one rolls it back). Returns the ended
        rollout, or None when there was no open one (in ``expect``'s state).
        """
        if state.open:
            raise ConfigError(f"a rollout ends promoted or rolled back, not {state.value}")
        if session is None:
            with self.database.session() as own:
                return self.end(
                    alias,
                    state,
                    actor=actor,
                    reason=reason,
                    role=role,
                    evidence=evidence,
                    expect=expect,
                    session=own,
                )
        states = (
            [expect.value] if expect else [RolloutState.SHADOW.value, RolloutState.CANARY.value]
        )
        won = session.execute(
            update(ModelRollout)
            .where(ModelRollout.alias == alias, ModelRollout.state.in_(states))
            .values(state=state.value, reason=reason, actor=actor, updated_at=utcnow())
            .execution_options(synchronize_session=False)
        )
        if won.rowcount != 1:  # type: ignore[attr-defined]
            return None
        row = session.get(ModelRollout, alias)
        assert row is not None
        session.refresh(row)
        rollout = _rollout(row)
        action = (
            AuditAction.ROLLOUT_PROMOTE
            if state is RolloutState.PROMOTED
            else AuditAction.ROLLOUT_ROLLBACK
        )
        record_event(
            session,
            actor=actor,
            role=role,
            action=action,
            object_uids=[alias],
            details={**rollout.to_dict(), "evidence": evidence or {}},
        )
        if state is RolloutState.ROLLED_BACK:
            # Nothing waiting for the candidate runs after its rollback.
            self.reroute(session, rollout, actor=actor, role=role)
        return rollout

    def reroute(
        self,
        session: Session,
        rollout: Rollout,
        *,
        actor: str,
        role: str = "",
        jobs: Sequence[Job] | None = None,
        cancel: bool = True,
    ) -> dict[str, list[int]]:
        """Cancel the candidate's infer jobs that have not run (received, queued,
        waiting for a retry; or ``jobs``) in the caller's transaction, and queue the
        active version on each canary study among them and among its dead-lettered
        ones, so no study is left without a result (a shadow's study has the active's
        already; a dead letter stays one). Audited (``rollout-reroute``). Returns the
        cancelled and the queued job ids. ``cancel=False``: ``jobs`` ran already (their
        state is kept); only their canary studies are queued for the active version."""
        from overread.service.jobs import JobQueue

        cand_name, cand_version = split_ref(rollout.candidate_ref)
        act_name, act_version = split_ref(rollout.active_ref)
        if jobs is None:
            jobs = session.scalars(
                select(Job).where(
                    Job.kind == JobKind.INFER.value,
                    Job.model_name == cand_name,
                    Job.model_version == cand_version,
                    Job.state.in_(
                        [
                            JobState.RECEIVED.value,
                            JobState.QUEUED.value,
                            JobState.FAILED.value,
                            JobState.DEAD_LETTERED.value,
                        ]
                    ),
                )
            ).all()
        now = utcnow()
        queue = JobQueue(self.database)
        cancelled: list[int] = []
        queued: list[int] = []
        studies: list[str] = []
        for job in jobs:
            alias, side, _ = _rollout_side(job)
            if alias != rollout.alias or side not in (RolloutRole.CANARY, RolloutRole.SHADOW):
                continue
            if cancel and job.state != JobState.DEAD_LETTERED.value:
                # A dead letter stays one (its failure counts); anything else is cancelled.
                job.state = JobState.CANCELLED.value
                job.error = f"cancelled: {rollout.candidate_ref} rolled back on {rollout.alias}"
                job.lease_owner = None
                job.lease_expires_at = None
                job.finished_at = now
                job.updated_at = now
                cancelled.append(job.id)
            if side is not RolloutRole.CANARY:
                continue
            # The study goes to the active version, as if the canary had not drawn it
            # (the payload an infer job of the alias has: the alias and destinations).
            active = {
                "alias": rollout.alias,
                "destinations": list((job.payload or {}).get("destinations") or []),
            }
            job_id, _ = queue.enqueue(
                session,
                study_instance_uid=job.study_instance_uid,
                model_name=act_name,
                model_version=act_version,
                kind=JobKind.INFER,
                route=job.route,
                priority=job.priority,
                payload=active,
            )
            queued.append(job_id)
            studies.append(job.study_instance_uid)
        if cancelled or queued:
            session.flush()
            record_event(
                session,
                actor=actor,
                role=role,
                action=AuditAction.ROLLOUT_REROUTE,
                object_uids=[rollout.alias, *studies],
                details={
                    "alias": rollout.alias,
                    "candidate": rollout.candidate_ref,
                    "active": rollout.active_ref,
                    "cancelled_jobs": cancelled,
                    "queued_jobs": queued,
                },
            )
            logger.warning(
                "rollback of %s on %s: %d job(s) cancelled, %d study(ies) sent to %s",
                rollout.candidate_ref,
                rollout.alias,
                len(cancelled),
                len(queued),
                rollout.active_ref,
            )
        return {"cancelled": cancelled, "queued": queued}

    def reroute_dead_letter(self, job_id: int, *, actor: str) -> list[int]:
        """A canary job dead-lettered: queue the active version on its study (the
        rollout's, open or ended); returns the queued job ids."""
        with self.database.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return []
            return self.reroute_dead_job(session, job, actor=actor)

    def reroute_dead_job(self, session: Session, job: Job, *, actor: str) -> list[int]:
        """:meth:`reroute_dead_letter` of a loaded job, in the caller's transaction
        (the queue's dead-lettering of a job whose worker was lost uses it)."""
        if job.state != JobState.DEAD_LETTERED.value or job.kind != JobKind.INFER.value:
            return []
        alias, side, model = _rollout_side(job)
        if side is not RolloutRole.CANARY or not model:
            return []
        row = session.get(ModelRollout, alias)
        rollout = (
            _rollout(row)
            if row is not None and row.candidate_ref == model
            else self.rolled_back(session, alias, model, job.created_at)
        )
        if rollout is None:
            return []
        return self.reroute(session, rollout, actor=actor, role="service", jobs=[job])["queued"]

    def rolled_back(
        self, session: Session, alias: str, candidate_ref: str, queued_at: datetime
    ) -> Rollout | None:
        """The rolled-back rollout of ``candidate_ref`` on ``alias`` that a job queued
        at ``queued_at`` belonged to, or None. Read from the audited rollbacks (a
        durable history: a later start or promotion replaces the alias's current row),
        with the alias's current active version to send its studies to."""
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.ROLLOUT_ROLLBACK.value)
        ).all()
        for event in reversed(events):
            data = event.details or {}
            if data.get("alias") != alias or data.get("candidate") != candidate_ref:
                continue
            started = _aware(datetime.fromisoformat(str(data["started_at"])))
            ended = _aware(datetime.fromisoformat(str(data["updated_at"])))
            if not started <= _aware(queued_at) <= ended:
                continue
            row = session.get(ModelRollout, alias)
            active = str(data.get("active") or "")
            if row is not None:
                active = (
                    row.candidate_ref
                    if row.state == RolloutState.PROMOTED.value
                    else row.active_ref
                )
            return Rollout(
                alias=alias,
                state=RolloutState.ROLLED_BACK,
                active_ref=active,
                candidate_ref=candidate_ref,
                canary_share=float(data.get("canary_share") or 0.0),
                bounds=CanaryBounds.from_dict(dict(data.get("bounds") or {})),
                reason=str(data.get("reason") or ""),
                actor=str(data.get("actor") or ""),
                started_at=started,
                updated_at=ended,
            )
        return None

    def skip_rolled_back(self, job_id: int, owner: str) -> bool:
        """Before a claimed rollout job runs: if its candidate was rolled back since it
        was queued, cancel it (under the caller's lease) and send its study to the
        active version; whether it was skipped."""
        with self.database.session() as session:
            job = session.get(Job, job_id)
            if job is None or job.lease_owner != owner:
                return False
            alias, side, model = _rollout_side(job)
            if side not in (RolloutRole.CANARY, RolloutRole.SHADOW) or not model:
                return False
            rolled = self.rolled_back(session, alias, model, job.created_at)
            if rolled is None:
                return False
            done = self.reroute(
                session, rolled, actor=f"worker:{owner}", role="service", jobs=[job]
            )
            return bool(done["cancelled"])

    def skip_rolled_back_export(self, job_id: int, result_id: int, owner: str) -> bool:
        """Before an export sends: if ``result_id`` is a canary's whose candidate was
        rolled back (its infer job was already running at the rollback, so it finished),
        cancel the export under the caller's lease, audit it, and queue the active
        version on the study (once: an identical job is not queued twice); whether it
        was skipped."""
        with self.database.session() as session:
            job = session.get(Job, job_id)
            if job is None or job.lease_owner != owner:
                return False
            marked = session.get(RolloutResult, result_id)
            if marked is None or marked.role != RolloutRole.CANARY.value:
                return False
            result = session.get(Result, result_id)
            if result is None:
                return False
            infer = session.get(Job, result.job_id)
            rolled = self.rolled_back(
                session,
                marked.alias,
                f"{result.model_name}@{result.model_version}",
                infer.created_at if infer is not None else marked.created_at,
            )
            if rolled is None:
                return False
            rollout = rolled
            now = utcnow()
            done = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.lease_owner == owner,
                    Job.state == JobState.RUNNING.value,
                )
                .values(
                    state=JobState.CANCELLED.value,
                    error=(
                        f"cancelled: {rollout.candidate_ref} rolled back on {rollout.alias};"
                        " its result is not sent"
                    ),
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=now,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if done.rowcount != 1:  # type: ignore[attr-defined]
                return False
            record_event(
                session,
                actor=f"worker:{owner}",
                role="service",
                action=AuditAction.ROLLOUT_REROUTE,
                object_uids=[rollout.alias, result.study_instance_uid],
                details={
                    "alias": rollout.alias,
                    "candidate": rollout.candidate_ref,
                    "active": rollout.active_ref,
                    "skipped_export_job": job_id,
                    "result_id": result_id,
                    "destination": job.destination,
                },
            )
            if infer is not None:
                self.reroute(
                    session,
                    rollout,
                    actor=f"worker:{owner}",
                    role="service",
                    jobs=[infer],
                    cancel=False,
                )
            logger.warning(
                "job %d: result %d of rolled-back %s not sent",
                job_id,
                result_id,
                rollout.candidate_ref,
            )
            return True

    # results
    def mark_result(
        self, session: Session, result: Result, *, alias: str, role: RolloutRole
    ) -> None:
        """Record which side of a rollout ``result`` is on, in the caller's transaction."""
        if session.get(RolloutResult, result.id) is None:
            session.add(
                RolloutResult(
                    result_id=result.id,
                    alias=alias,
                    role=role.value,
                    study_instance_uid=result.study_instance_uid,
                    created_at=utcnow(),
                )
            )

    def rolled_back_result_ids(self, session: Session, study_instance_uid: str) -> set[int]:
        """Ids of the study's canary results whose candidate was rolled back (never
        sent; their study went to the active version), in the caller's transaction."""
        ids: set[int] = set()
        marks = session.scalars(
            select(RolloutResult).where(
                RolloutResult.study_instance_uid == study_instance_uid,
                RolloutResult.role == RolloutRole.CANARY.value,
            )
        ).all()
        for mark in marks:
            result = session.get(Result, mark.result_id)
            if result is None:
                continue
            infer = session.get(Job, result.job_id)
            queued_at = infer.created_at if infer is not None else mark.created_at
            ref = f"{result.model_name}@{result.model_version}"
            if self.rolled_back(session, mark.alias, ref, queued_at) is not None:
                ids.add(result.id)
        return ids

    def shadow_result_ids(self, study_instance_uid: str | None = None) -> set[int]:
        """Ids of shadow results (of one study, or all)."""
        with self.database.session() as session:
            query = select(RolloutResult.result_id).where(
                RolloutResult.role == RolloutRole.SHADOW.value
            )
            if study_instance_uid is not None:
                query = query.where(RolloutResult.study_instance_uid == study_instance_uid)
            return set(session.scalars(query).all())

    # judging
    def figures(self, rollout: Rollout) -> CanaryVerdict:
        """The candidate's figures since the rollout started against the active's
        over the bounds' baseline period, and the bounds they leave."""
        cand_name, cand_version = split_ref(rollout.candidate_ref)
        act_name, act_version = split_ref(rollout.active_ref)
        since = rollout.started_at
        baseline = since - timedelta(days=rollout.bounds.baseline_days)
        with self.database.session() as session:
            job_states = session.scalars(
                select(Job.state).where(
                    Job.kind == JobKind.INFER.value,
                    Job.model_name == cand_name,
                    Job.model_version == cand_version,
                    Job.created_at >= since,
                )
            ).all()
            candidate_summaries = session.scalars(
                select(Result.summary)
                .join(RolloutResult, RolloutResult.result_id == Result.id)
                .where(
                    RolloutResult.alias == rollout.alias,
                    RolloutResult.role == RolloutRole.CANARY.value,
                    Result.created_at >= since,
                )
            ).all()
            active_summaries = session.scalars(
                select(Result.summary).where(
                    Result.model_name == act_name,
                    Result.model_version == act_version,
                    Result.created_at >= baseline,
                )
            ).all()
        candidate = _figures_of(candidate_summaries, list(job_states), self.critical)
        active = _figures_of(active_summaries, (), self.critical)
        return CanaryVerdict(
            rollout.alias, candidate, active, judge(candidate, active, rollout.bounds)
        )

    def watch(self, alias: str, *, actor: str = "rollout-monitor") -> CanaryVerdict | None:
        """Judge the alias's canary; roll it back automatically when it left a bound.

        Returns the verdict when a canary was judged (None otherwise). Called by the
        workers after each canary job, so it holds with any number of processes.
        """
        rollout = self.open_rollout(alias)
        if rollout is None or rollout.state is not RolloutState.CANARY:
            return None
        verdict = self.figures(rollout)
        if verdict.breaches:
            ended = self.end(
                alias,
                RolloutState.ROLLED_BACK,
                actor=actor,
                role="service",
                reason="automatic: " + "; ".join(verdict.breaches),
                evidence={"automatic": True, **verdict.to_dict()},
                expect=RolloutState.CANARY,
            )
            if ended is not None:
                logger.error(
                    "canary of %s on %s rolled back: %s",
                    rollout.candidate_ref,
                    alias,
                    "; ".join(verdict.breaches),
                )
        return verdict

    # kill switches
    def kill(self, model: str, *, actor: str, reason: str = "", role: str = "") -> bool:
        """Engage the kill switch of ``model`` (name or name@version); False if it was."""
        with self.database.session() as session:
            if session.get(KillSwitch, model) is not None:
                return False
            session.add(KillSwitch(model=model, reason=reason, actor=actor, engaged_at=utcnow()))
            record_event(
                session,
                actor=actor,
                role=role,
                action=AuditAction.KILL_SWITCH,
                object_uids=[model],
                details={"model": model, "engaged": True, "reason": reason},
            )
        return True

    def release(self, model: str, *, actor: str, reason: str = "", role: str = "") -> int | None:
        """Release the kill switch of ``model``; its held exports go back to the queue.

        Returns how many exports were released, or None when the switch was not engaged.
        """
        name, version = split_ref(model)
        with self.database.session() as session:
            row = session.get(KillSwitch, model)
            if row is None:
                return None
            session.delete(row)
            still = set(session.scalars(select(KillSwitch.model)).all())
            query = update(Job).where(
                Job.kind == JobKind.EXPORT.value,
                Job.state == JobState.HELD.value,
                Job.model_name == name,
            )
            if version:
                query = query.where(Job.model_version == version)
            if name in still:  # the whole model is still killed
                released = 0
            else:
                now = utcnow()
                if not version:
                    # Versions killed on their own stay held.
                    held = [split_ref(m)[1] for m in still if split_ref(m)[0] == name]
                    query = query.where(Job.model_version.not_in(held or [""]))
                result = session.execute(
                    query.values(
                        state=JobState.QUEUED.value,
                        next_attempt_at=now,
                        started_at=None,
                        updated_at=now,
                        error=None,
                    ).execution_options(synchronize_session=False)
                )
                released = int(result.rowcount)  # type: ignore[attr-defined]
            record_event(
                session,
                actor=actor,
                role=role,
                action=AuditAction.KILL_SWITCH,
                object_uids=[model],
                details={
                    "model": model,
                    "engaged": False,
                    "reason": reason,
                    "released_exports": released,
                },
            )
        return released

    def killed(self, session: Session, name: str, version: str) -> str | None:
        """The engaged switch covering ``name@version`` (its key), or None."""
        for key in (f"{name}@{version}", name):
            if session.get(KillSwitch, key) is not None:
                return key
        return None

    def kill_switches(self) -> list[dict[str, Any]]:
        """Every engaged switch (model, reason, actor, engaged_at)."""
        with self.database.session() as session:
            return [
                {
                    "model": k.model,
                    "reason": k.reason,
                    "actor": k.actor,
                    "engaged_at": k.engaged_at.isoformat(),
                }
                for k in session.scalars(select(KillSwitch).order_by(KillSwitch.model)).all()
            ]


class ModelRollouts:
    """The rollout commands on one registry and database: shadow, canary, promote,
    rollback (what ``overread models alias``/``rollback`` and the REST API call).

    Parameters
    ----------
    registry
        The model registry whose aliases name the active versions.
    database
        The gateway's database (rollout state, audit log).
    """

    def __init__(self, registry: Registry, database: Database) -> None:
        self.registry = registry
        self.store = RolloutStore(database)

    def ref(self, reference: str) -> str:
        """``name@version`` of what ``reference`` (alias, name, name@version) loads."""
        package = self.registry.load(reference)
        return f"{package.name}@{package.version}"

    def start(
        self,
        alias: str,
        candidate: str,
        state: RolloutState,
        *,
        actor: str,
        canary_share: float = 0.0,
        bounds: CanaryBounds | None = None,
        role: str = "",
    ) -> Rollout:
        """Put ``candidate`` in shadow or canary beside the alias's active version."""
        if alias not in self.registry.aliases():
            raise ConfigError(
                f"{alias!r} is not an alias; point it at the active version first "
                f"(overread models alias {alias} NAME@VERSION)"
            )
        return self.store.start(
            alias,
            active_ref=self.ref(alias),
            candidate_ref=self.ref(candidate),
            state=state,
            actor=actor,
            canary_share=canary_share,
            bounds=bounds,
            role=role,
        )

    def promote(
        self,
        alias: str,
        candidate: str | None = None,
        *,
        actor: str,
        role: str = "",
        evidence: dict[str, Any] | None = None,
    ) -> str:
        """Point the alias at ``candidate`` (default: its open rollout's candidate) and
        end the rollout as promoted; audited with ``evidence`` (the release gate's).

        Returns the new target (``name@version``).
        """
        rollout = self.store.open_rollout(alias)
        if candidate is None:
            if rollout is None:
                raise ConfigError(f"alias {alias!r} has no shadow or canary to promote")
            candidate = rollout.candidate_ref
        previous = self.registry.aliases().get(alias)
        target = self.registry.set_alias(alias, candidate)
        ended = None
        if rollout is not None:
            ended = self.store.end(
                alias,
                RolloutState.PROMOTED,
                actor=actor,
                role=role,
                reason=f"promoted {target}",
                evidence=evidence,
            )
        if ended is None:
            with self.store.database.session() as session:
                record_event(
                    session,
                    actor=actor,
                    role=role,
                    action=AuditAction.ROLLOUT_PROMOTE,
                    object_uids=[alias],
                    details={
                        "alias": alias,
                        "from": previous,
                        "to": target,
                        "evidence": evidence or {},
                    },
                )
        return target

    def rollback(self, alias: str, *, actor: str, role: str = "", reason: str = "") -> str:
        """End the alias's shadow or canary (the active version stays); with none open,
        point the alias back at its previous target as before. Audited; returns the
        alias's target afterwards."""
        ended = self.store.end(
            alias, RolloutState.ROLLED_BACK, actor=actor, role=role, reason=reason or "by hand"
        )
        if ended is not None:
            return ended.active_ref
        previous = self.registry.aliases().get(alias)
        target = self.registry.rollback(alias)
        with self.store.database.session() as session:
            record_event(
                session,
                actor=actor,
                role=role,
                action=AuditAction.ROLLOUT_ROLLBACK,
                object_uids=[alias],
                details={"alias": alias, "from": previous, "to": target, "reason": reason},
            )
        return target


__all__ = [
    "CANARY_BUCKETS",
    "CanaryBounds",
    "CanaryVerdict",
    "KillSwitch",
    "ModelRollout",
    "ModelRollouts",
    "Rollout",
    "RolloutResult",
    "RolloutRole",
    "RolloutState",
    "RolloutStore",
    "SideFigures",
    "canary_bucket",
    "in_canary",
    "judge",
    "not_shadow",
    "split_ref",
]
