"""The job queue: the ``jobs`` table with leases, retries and a dead-letter state.

Claiming is a compare-and-set ``UPDATE ... WHERE id = ? AND <still claimable>``: of
several workers (threads or processes, on SQLite or PostgreSQL) that pick the same
candidate, exactly one sees ``rowcount == 1``. A claim carries a lease; the worker
renews it while it works. A worker that dies stops renewing, its lease expires, and
the job becomes claimable again (its attempt counted). Finishing is fenced by the
lease: a worker whose lease was taken over cannot mark the job done, and the
finishing transaction (result row, follow-up jobs, state change) rolls back whole.

States: ``received`` (announced while the study is still arriving; never claimed)
``-> queued -> running -> succeeded``; ``running -> failed`` (retryable, with
capped exponential backoff and jitter in ``next_attempt_at``) ``-> running`` again.
Retrying is bounded by time, not count: a job is ``dead_lettered`` once its next
attempt would fall more than ``retry_for`` after its first attempt started (24 h by
default, so a PACS outage of hours loses nothing), or after ``max_attempts`` when
that bound is set too (``max_attempts`` 0: none). A dead letter stays visible until
someone requeues it (REST or ``overread jobs requeue``), which restarts its clock.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.elements import ColumnElement

from overread.audit import AuditAction, record_event
from overread.errors import ServiceError
from overread.service.db import Database, Job, JobKind, JobState, utcnow

logger = logging.getLogger(__name__)


class LeaseLostError(ServiceError):
    """The worker's lease on a job expired and another worker may own it now."""


#: ``Job.max_attempts`` of a job bounded by time only.
NO_ATTEMPT_LIMIT = 0


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter, for a bounded time.

    After the ``n``-th failure the next attempt waits ``min(maximum, base *
    2**(n-1))`` seconds, less up to ``jitter`` of it drawn at random, so jobs that
    failed together (a PACS outage) do not all retry in the same instant. The cap
    keeps a recovered destination's exports waiting at most ``maximum`` seconds.
    """

    base_seconds: float = 2.0
    maximum_seconds: float = 60.0
    jitter: float = 0.2
    retry_for_seconds: float = 86400.0

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after the ``attempt``-th failure (1-based)."""
        # The exponent is capped so that a huge attempt number does not overflow a float.
        exponent = min(max(0, attempt - 1), 64)
        ceiling = float(min(self.maximum_seconds, self.base_seconds * 2**exponent))
        if self.jitter <= 0:
            return ceiling
        draw = (rng or _JITTER).random()
        return ceiling * (1.0 - self.jitter * draw)


_JITTER = random.Random()


def _probing_a_down_destination(now: datetime) -> ColumnElement[bool]:
    """Exports to a destination that is down and already being tried by a worker."""
    failing, running = aliased(Job), aliased(Job)
    return and_(
        Job.kind == JobKind.EXPORT.value,
        Job.destination.in_(
            select(failing.destination).where(
                failing.kind == JobKind.EXPORT.value, _retrying(failing)
            )
        ),
        Job.destination.in_(
            select(running.destination).where(
                running.kind == JobKind.EXPORT.value,
                running.state == JobState.RUNNING.value,
                running.lease_expires_at >= now,
            )
        ),
    )


def _retrying(job: Any) -> ColumnElement[bool]:
    """A job that failed before: waiting for its retry, or being retried now."""
    return or_(
        job.state == JobState.FAILED.value,
        and_(job.state == JobState.RUNNING.value, job.attempts > 1),
    )


def _attempts_left() -> ColumnElement[bool]:
    return or_(Job.max_attempts == NO_ATTEMPT_LIMIT, Job.attempts < Job.max_attempts)


def _claimable(now: datetime, retry_since: datetime) -> ColumnElement[bool]:
    """Due jobs, and running ones whose worker was lost while they may still retry."""
    return or_(
        and_(
            Job.state.in_([JobState.QUEUED.value, JobState.FAILED.value]),
            Job.next_attempt_at <= now,
        ),
        and_(
            Job.state == JobState.RUNNING.value,
            Job.lease_expires_at < now,
            _attempts_left(),
            or_(Job.started_at.is_(None), Job.started_at >= retry_since),
        ),
    )


class JobQueue:
    """Operations on the ``jobs`` table.

    Parameters
    ----------
    database
        Where the jobs live.
    retry
        The backoff between attempts and how long a job keeps retrying.
    max_attempts
        Also dead-letter after this many attempts (per job, stored at enqueue);
        ``None``: bounded by time only.
    """

    def __init__(
        self,
        database: Database,
        *,
        retry: RetryPolicy | None = None,
        max_attempts: int | None = None,
        on_lost: Callable[[Session, Job, str], None] | None = None,
    ) -> None:
        self.database = database
        #: Called in the dead-lettering transaction for each job whose worker was lost
        #: on its last attempt (job, actor): the service re-routes a canary's study
        #: there (:func:`overread.service.node.open_queue`). Kept as a hook so the
        #: queue does not depend on the rollout module, which depends on it.
        self.on_lost = on_lost
        self.retry = retry or RetryPolicy()
        self.max_attempts = NO_ATTEMPT_LIMIT if max_attempts is None else max_attempts
        self._rng = random.Random()

    def _retry_since(self, now: datetime) -> datetime:
        """A job whose first attempt started before this has retried long enough."""
        return now - timedelta(seconds=self.retry.retry_for_seconds)

    # -- creating ---------------------------------------------------------------------
    def enqueue(
        self,
        session: Session | None = None,
        *,
        study_instance_uid: str,
        model_name: str,
        model_version: str,
        kind: JobKind,
        destination: str = "",
        route: str = "",
        priority: int = 0,
        payload: dict[str, Any] | None = None,
        state: JobState = JobState.QUEUED,
    ) -> tuple[int, bool]:
        """Add a job unless an identical one exists; return ``(job id, created)``.

        ``state`` is ``queued`` (ready to run) or ``received`` (announced while its
        study is still arriving). Enqueuing as ``queued`` a job that exists as
        ``received`` promotes it, taking the new route, priority and payload.
        With ``session`` the insert joins the caller's transaction (then a duplicate
        is detected by a look-up first, and the unique constraint still guards races).
        """
        values = {
            "study_instance_uid": study_instance_uid,
            "model_name": model_name,
            "model_version": model_version,
            "kind": kind.value,
            "destination": destination,
        }
        if session is not None:
            return self._enqueue_in(session, values, route, priority, payload, state)
        try:
            with self.database.session() as own:
                return self._enqueue_in(own, values, route, priority, payload, state)
        except IntegrityError:
            with self.database.session() as own:
                existing = own.scalar(select(Job.id).filter_by(**values))
            if existing is None:
                raise
            return existing, False

    def _enqueue_in(
        self,
        session: Session,
        values: dict[str, str],
        route: str,
        priority: int,
        payload: dict[str, Any] | None,
        state: JobState,
    ) -> tuple[int, bool]:
        now = utcnow()
        existing = session.scalar(select(Job.id).filter_by(**values))
        if existing is not None:
            if state == JobState.QUEUED:
                session.execute(
                    update(Job)
                    .where(Job.id == existing, Job.state == JobState.RECEIVED.value)
                    .values(
                        state=JobState.QUEUED.value,
                        route=route,
                        priority=priority,
                        payload=payload or {},
                        next_attempt_at=now,
                        updated_at=now,
                    )
                    .execution_options(synchronize_session=False)
                )
            return existing, False
        job = Job(
            **values,
            route=route,
            priority=priority,
            state=state.value,
            attempts=0,
            max_attempts=self.max_attempts,
            next_attempt_at=now,
            payload=payload or {},
            created_at=now,
            updated_at=now,
        )
        session.add(job)
        session.flush()
        logger.info(
            "%s %s job %d: study %s, model %s %s%s",
            state.value,
            values["kind"],
            job.id,
            values["study_instance_uid"],
            values["model_name"],
            values["model_version"],
            f", destination {values['destination']}" if values["destination"] else "",
        )
        return job.id, True

    # -- claiming ---------------------------------------------------------------------
    def claim(
        self, owner: str, *, lease_seconds: float, kinds: Sequence[JobKind] | None = None
    ) -> Job | None:
        """Atomically take the most urgent claimable job, or return ``None``.

        An export to a destination that is down (an export to it waits for a retry)
        is not taken while another attempt at that destination is running: one
        worker probes a dead PACS, the others keep serving the rest.
        """
        now = utcnow()
        self._dead_letter_lost(now)
        condition = and_(_claimable(now, self._retry_since(now)), ~_probing_a_down_destination(now))
        if kinds:
            condition = and_(condition, Job.kind.in_([k.value for k in kinds]))
        with self.database.session() as session:
            candidates = session.scalars(
                select(Job.id)
                .where(condition)
                .order_by(Job.priority.desc(), Job.next_attempt_at, Job.id)
                .limit(8)
            ).all()
        for job_id in candidates:
            job = self._take(job_id, condition, owner, now, lease_seconds)
            if job is not None:
                logger.info(
                    "%s claimed %s job %d (attempt %d%s)",
                    owner,
                    job.kind,
                    job.id,
                    job.attempts,
                    f"/{job.max_attempts}" if job.max_attempts else "",
                )
                return job
        return None

    def claim_job(self, job_id: int, owner: str, *, lease_seconds: float) -> Job | None:
        """Take one named job if it is claimable now, under the same rules as
        :meth:`claim` (due, not probing a down destination); ``None`` otherwise.

        The worker that finished an infer job uses it to send the exports it just
        queued without waiting for them to be picked from the queue; another worker
        that got there first keeps them (the compare-and-set decides).
        """
        now = utcnow()
        condition = and_(_claimable(now, self._retry_since(now)), ~_probing_a_down_destination(now))
        job = self._take(job_id, condition, owner, now, lease_seconds)
        if job is None:
            return None
        logger.info(
            "%s claimed %s job %d at once (attempt %d)", owner, job.kind, job.id, job.attempts
        )
        return job

    def _take(
        self, job_id: int, condition: Any, owner: str, now: datetime, lease_seconds: float
    ) -> Job | None:
        """Compare-and-set ``job_id`` to running under ``owner`` if ``condition`` still
        holds; the job as taken (detached), or ``None`` when another got it first."""
        with self.database.session() as session:
            claimed = session.execute(
                update(Job)
                .where(Job.id == job_id, condition)
                .values(
                    state=JobState.RUNNING.value,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                    attempts=Job.attempts + 1,
                    # The first attempt's start: retrying is bounded from here.
                    started_at=func.coalesce(Job.started_at, now),
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            if claimed.rowcount != 1:  # type: ignore[attr-defined]
                return None
            job = session.get(Job, job_id)
            assert job is not None
            session.expunge(job)
            return job

    def _dead_letter_lost(self, now: datetime) -> None:
        """Dead-letter running jobs whose worker died on their last attempt."""
        lost = (
            Job.state == JobState.RUNNING.value,
            Job.lease_expires_at < now,
            or_(~_attempts_left(), Job.started_at < self._retry_since(now)),
        )
        with self.database.session() as session:
            if session.scalar(select(Job.id).where(*lost).limit(1)) is None:
                return  # the common case: a read, no write lock taken
        error = "worker lost on the last attempt (lease expired)"
        with self.database.session() as session:
            jobs = session.scalars(select(Job).where(*lost).with_for_update()).all()
            for job in jobs:
                owner = job.lease_owner
                job.state = JobState.DEAD_LETTERED.value
                job.lease_owner = None
                job.error = error
                job.finished_at = now
                job.updated_at = now
                actor = f"worker:{owner}" if owner else "service"
                _audit_dead_letter(session, job, actor, error)
                if self.on_lost is not None:
                    # A canary's study goes to the active version, as after a failure.
                    self.on_lost(session, job, actor)
            if jobs:
                logger.error("dead-lettered %d job(s) whose worker was lost", len(jobs))

    def renew(self, job_id: int, owner: str, *, lease_seconds: float) -> bool:
        """Extend ``owner``'s lease on a running job; ``False`` if it was lost."""
        now = utcnow()
        with self.database.session() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.lease_owner == owner,
                    Job.state == JobState.RUNNING.value,
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    # -- finishing --------------------------------------------------------------------
    def mark_succeeded(self, session: Session, job_id: int, owner: str) -> None:
        """Mark a job done inside the caller's transaction, fenced by the lease.

        Raises
        ------
        LeaseLostError
            If ``owner`` no longer holds the job; the caller's transaction must roll
            back (raising does that inside :meth:`Database.session`).
        """
        now = utcnow()
        result = session.execute(
            update(Job)
            .where(
                Job.id == job_id,
                Job.lease_owner == owner,
                Job.state == JobState.RUNNING.value,
            )
            .values(
                state=JobState.SUCCEEDED.value,
                lease_owner=None,
                lease_expires_at=None,
                error=None,
                finished_at=now,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLostError(f"job {job_id}: lease lost by {owner}; result discarded")

    def mark_failed(self, job_id: int, owner: str, error: str, *, retryable: bool = True) -> str:
        """Record a failed attempt; return the new state (``failed`` or ``dead_lettered``)."""
        now = utcnow()
        with self.database.session() as session:
            job = session.get(Job, job_id)
            if job is None or job.lease_owner != owner or job.state != JobState.RUNNING.value:
                logger.warning("job %d: failure from %s ignored (lease lost)", job_id, owner)
                return job.state if job is not None else JobState.DEAD_LETTERED.value
            job.error = error[:4000]
            job.lease_owner = None
            job.lease_expires_at = None
            job.updated_at = now
            delay = self.retry.delay(job.attempts, self._rng)
            first = job.started_at or now
            if first.tzinfo is None:  # SQLite hands back naive UTC
                first = first.replace(tzinfo=now.tzinfo)
            within = now + timedelta(seconds=delay) <= first + timedelta(
                seconds=self.retry.retry_for_seconds
            )
            counted = job.max_attempts == NO_ATTEMPT_LIMIT or job.attempts < job.max_attempts
            if retryable and within and counted:
                job.state = JobState.FAILED.value
                job.next_attempt_at = now + timedelta(seconds=delay)
                logger.warning(
                    "job %d failed (attempt %d%s), retry in %.1f s: %s",
                    job_id,
                    job.attempts,
                    f"/{job.max_attempts}" if job.max_attempts else "",
                    delay,
                    error,
                )
            else:
                if retryable and not within:
                    job.error = (
                        f"{error} (gave up after retrying for "
                        f"{_duration(self.retry.retry_for_seconds)})"
                    )[:4000]
                job.state = JobState.DEAD_LETTERED.value
                job.finished_at = now
                _audit_dead_letter(session, job, f"worker:{owner}", job.error or error)
                logger.error(
                    "job %d dead-lettered after %d attempt(s): %s", job_id, job.attempts, error
                )
            return job.state

    def hold(self, session: Session, job_id: int, owner: str, reason: str) -> None:
        """Put a running export in ``held`` (its model's kill switch is engaged), in the
        caller's transaction and fenced by the lease; the attempt is not counted.

        Raises
        ------
        LeaseLostError
            If ``owner`` no longer holds the job.
        """
        now = utcnow()
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING.value)
            .values(
                state=JobState.HELD.value,
                attempts=func.max(Job.attempts - 1, 0)
                if session.get_bind().dialect.name == "sqlite"
                else func.greatest(Job.attempts - 1, 0),
                lease_owner=None,
                lease_expires_at=None,
                error=reason[:4000],
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        if result.rowcount != 1:  # type: ignore[attr-defined]
            raise LeaseLostError(f"job {job_id}: lease lost by {owner}; not held")

    def requeue_exports(
        self, session: Session, *, study_instance_uid: str, model_name: str, model_version: str
    ) -> int:
        """Send a result's exports again (it was replaced): every export job of the
        study and model goes back to the queue with a fresh retry period, in the
        caller's transaction. One running now loses its lease, so its attempt (which
        may have read the old objects) cannot mark it done. Returns how many."""
        now = utcnow()
        result = session.execute(
            update(Job)
            .where(
                Job.kind == JobKind.EXPORT.value,
                Job.study_instance_uid == study_instance_uid,
                Job.model_name == model_name,
                Job.model_version == model_version,
            )
            .values(
                state=JobState.QUEUED.value,
                attempts=0,
                next_attempt_at=now,
                started_at=None,
                finished_at=None,
                lease_owner=None,
                lease_expires_at=None,
                error=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]

    def queued_dicom_exports(
        self, session: Session, *, study_instance_uid: str, model_name: str, model_version: str
    ) -> list[int]:
        """Ids of a result's DICOM export jobs waiting in the queue (FHIR, HL7 and
        STOW-RS destinations carry a prefix with a colon, which DICOM names cannot)."""
        return list(
            session.scalars(
                select(Job.id).where(
                    Job.kind == JobKind.EXPORT.value,
                    Job.study_instance_uid == study_instance_uid,
                    Job.model_name == model_name,
                    Job.model_version == model_version,
                    Job.state == JobState.QUEUED.value,
                    ~Job.destination.contains(":"),
                )
            ).all()
        )

    def requeue_finished(self, session: Session, job_id: int) -> bool:
        """Queue a succeeded job again (its study got more images), in the caller's
        transaction, with a fresh retry period; ``False`` if it is not succeeded."""
        now = utcnow()
        result = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.state == JobState.SUCCEEDED.value)
            .values(
                state=JobState.QUEUED.value,
                attempts=0,
                next_attempt_at=now,
                started_at=None,
                finished_at=None,
                lease_owner=None,
                lease_expires_at=None,
                error=None,
                updated_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def requeue(self, job_id: int) -> bool:
        """Put a dead-lettered or failed job back in the queue with fresh attempts."""
        now = utcnow()
        with self.database.session() as session:
            result = session.execute(
                update(Job)
                .where(
                    Job.id == job_id,
                    Job.state.in_([JobState.DEAD_LETTERED.value, JobState.FAILED.value]),
                )
                .values(
                    state=JobState.QUEUED.value,
                    attempts=0,
                    next_attempt_at=now,
                    started_at=None,  # its retry period starts again
                    finished_at=None,
                    updated_at=now,
                )
                .execution_options(synchronize_session=False)
            )
            return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    # -- looking ----------------------------------------------------------------------
    def get(self, job_id: int) -> Job | None:
        """One job, detached from any session."""
        with self.database.session() as session:
            return session.get(Job, job_id)

    def list(
        self,
        *,
        state: str | None = None,
        study_instance_uid: str | None = None,
        limit: int = 200,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first (``offset`` of them skipped, for paging)."""
        query = select(Job).order_by(Job.id.desc()).limit(limit).offset(max(offset, 0))
        if state:
            query = query.where(Job.state == state)
        if study_instance_uid:
            query = query.where(Job.study_instance_uid == study_instance_uid)
        with self.database.session() as session:
            return list(session.scalars(query).all())

    def counts(self) -> dict[str, int]:
        """Number of jobs in each state."""
        with self.database.session() as session:
            rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        return {str(state): int(n) for state, n in rows}

    def counts_by_kind(self) -> dict[tuple[str, str], int]:
        """Number of jobs per ``(kind, state)``."""
        with self.database.session() as session:
            rows = session.execute(
                select(Job.kind, Job.state, func.count()).group_by(Job.kind, Job.state)
            ).all()
        return {(str(kind), str(state)): int(n) for kind, state, n in rows}

    def destination_health(self, names: Sequence[str] = ()) -> tuple[dict[str, Any], ...]:
        """Per export destination: ``up`` or ``down`` (since when), what waits for it.

        A destination is down while any export to it failed before and is not yet
        delivered (waiting for its retry, or being retried); ``down_since`` is when the
        first attempt of the oldest such export started, ``last_error`` the newest
        failure's message. ``queued`` counts exports
        not yet delivered (queued, running or waiting to retry), ``dead_lettered``
        those given up on. ``names`` (the configured destinations) are always listed;
        any other destination with exports waiting is listed too.
        """
        waiting = [JobState.QUEUED.value, JobState.RUNNING.value, JobState.FAILED.value]
        with self.database.session() as session:
            rows = session.execute(
                select(Job.destination, Job.state, func.count())
                .where(Job.kind == JobKind.EXPORT.value, Job.destination != "")
                .group_by(Job.destination, Job.state)
            ).all()
            errors = dict(
                session.execute(
                    select(Job.destination, Job.error)
                    .where(Job.kind == JobKind.EXPORT.value, _retrying(Job))
                    .order_by(Job.updated_at)
                ).all()
            )
            down = dict(
                session.execute(
                    select(Job.destination, func.min(Job.started_at))
                    .where(Job.kind == JobKind.EXPORT.value, _retrying(Job))
                    .group_by(Job.destination)
                ).all()
            )
        found: dict[str, dict[str, Any]] = {name: _healthy(name) for name in names}
        for destination, state, count in rows:
            entry = found.get(destination)
            if entry is None:
                if state not in waiting:
                    continue
                entry = found[destination] = _healthy(destination)
            if state in waiting:
                entry["queued"] += int(count)
            if state == JobState.DEAD_LETTERED.value:
                entry["dead_lettered"] += int(count)
        for destination, first_started in down.items():
            if not destination:
                continue
            entry = found.setdefault(destination, _healthy(destination))
            entry["state"] = "down"
            entry["down_since"] = _iso(first_started)
            entry["last_error"] = errors.get(destination)
        return tuple(found.values())

    def pending(self) -> int:
        """Jobs not yet finished (queued, running, or waiting to retry)."""
        counts = self.counts()
        return sum(
            counts.get(s.value, 0) for s in (JobState.QUEUED, JobState.RUNNING, JobState.FAILED)
        )


def job_to_dict(job: Job) -> dict[str, Any]:
    """A JSON-ready view of a job (for the API and the CLI)."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value is not None else None

    return {
        "id": job.id,
        "study_instance_uid": job.study_instance_uid,
        "model_name": job.model_name,
        "model_version": job.model_version,
        "kind": job.kind,
        "destination": job.destination,
        "route": job.route,
        "state": job.state,
        "priority": job.priority,
        "attempts": job.attempts,
        "max_attempts": job.max_attempts,
        "next_attempt_at": iso(job.next_attempt_at),
        "lease_owner": job.lease_owner,
        "lease_expires_at": iso(job.lease_expires_at),
        "error": job.error,
        "created_at": iso(job.created_at),
        "updated_at": iso(job.updated_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
    }


def _healthy(name: str) -> dict[str, Any]:
    """A destination's health entry before anything is known against it."""
    return {
        "name": name,
        "state": "up",
        "down_since": None,
        "queued": 0,
        "dead_lettered": 0,
        "last_error": None,
    }


def _iso(moment: datetime | None) -> str | None:
    """ISO 8601 in UTC (SQLite hands back naive UTC)."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.isoformat()


def _duration(seconds: float) -> str:
    """``86400`` -> ``24 h``; ``90`` -> ``90 s``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def _audit_dead_letter(session: Session, job: Job, actor: str, error: str) -> None:
    """A dead letter is audited with the job that gave up, in its transaction."""
    record_event(
        session,
        actor=actor,
        role="service",
        action=AuditAction.DEAD_LETTER,
        object_uids=[u for u in (job.study_instance_uid, f"job:{job.id}") if u],
        details={
            "kind": job.kind,
            "model": f"{job.model_name} {job.model_version}".strip(),
            "destination": job.destination,
            "attempts": job.attempts,
            "error": error[:500],
        },
    )


__all__ = ["JobQueue", "LeaseLostError", "RetryPolicy", "job_to_dict"]
