"""Study assembly: deciding that a study is complete, then routing it into jobs.

DICOM has no "end of study" message, so a study is complete when one of these
happens first:

* no instance has arrived for ``stable_seconds`` (the stable-age rule);
* the association that brought it was released and a matching route says
  ``complete_on_release`` (a chest X-ray need not wait out the stable time);
* someone calls :meth:`StudyAssembler.complete_study` (the explicit trigger, also
  behind ``POST /api/studies/{uid}/complete``).

Completing is a compare-and-set on the study's state, so of several processes only
one routes a study; routing and job creation are one transaction.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from overread.errors import OverreadError
from overread.service.config import Destination, ServiceConfig
from overread.service.db import (
    Database,
    Instance,
    Job,
    JobKind,
    JobState,
    Study,
    StudyState,
    utcnow,
)
from overread.service.jobs import JobQueue
from overread.service.payloads import InferPayload
from overread.service.rollout import (
    RolloutRole,
    RolloutState,
    RolloutStore,
    in_canary,
    split_ref,
)
from overread.service.routing import InstanceFacts, Router
from overread.service.runtime import ModelIdentity, PipelineProvider

logger = logging.getLogger(__name__)


class StudyAssembler:
    """Completes studies and turns them into jobs.

    Parameters
    ----------
    config
        Stable time, routes and destinations.
    database, queue
        Where studies and jobs live.
    models
        Resolves a route's model alias to the name and version the job is keyed on.
    """

    def __init__(
        self,
        config: ServiceConfig,
        database: Database,
        queue: JobQueue,
        models: PipelineProvider,
    ) -> None:
        self.config = config
        self.database = database
        self.queue = queue
        self.models = models
        self.router = Router(config.routes, config.routing)
        self.rollouts = RolloutStore(database)
        self._wake = threading.Event()

    def _facts(self, study_instance_uid: str) -> list[InstanceFacts]:
        with self.database.session() as session:
            rows = session.scalars(
                select(Instance).where(Instance.study_instance_uid == study_instance_uid)
            ).all()
            return [InstanceFacts.of(r) for r in rows]

    def _identify(self, alias: str) -> ModelIdentity:
        try:
            return self.models.identify(alias)
        except (OverreadError, OSError, ImportError) as exc:
            if "@" in alias:  # a rollout's name@version: its failures count against it
                logger.error("model %s cannot be loaded (%s)", alias, exc)
                return ModelIdentity(*split_ref(alias))
            logger.error("model %r cannot be resolved (%s); job keyed on the alias", alias, exc)
            return ModelIdentity(alias, "unresolved")

    def complete_study(
        self,
        study_instance_uid: str,
        reason: str = "explicit",
        *,
        when: Callable[[list[InstanceFacts]], bool] | None = None,
    ) -> list[int]:
        """Mark a receiving study complete and queue its jobs; return the job ids.

        A study that is not receiving (unknown, or already completed) returns ``[]``.
        Marking it complete, queueing its jobs and marking it routed are one
        transaction (one write lock and one commit on the path from the last image
        to the job); the jobs are planned before it, outside any transaction.

        The study's instance count and last arrival are noted before planning and the
        completion applies only while they are unchanged: an image that arrives while
        the jobs are planned makes the plan stale, and the study is planned again (up
        to three times here, then by a later sweep, as it is still receiving).

        With ``when``, only a study whose instances it accepts is completed. The
        count, last arrival and instances are read in one read transaction.
        """
        for _ in range(3):
            receiving = self._receiving(study_instance_uid)
            if receiving is None:
                return []
            seen, facts = receiving
            if when is not None and not when(facts):
                return []
            planned = self._plan_jobs(study_instance_uid, facts)
            job_ids = self._commit_with_retries(
                study_instance_uid, planned, completing=(utcnow(), reason), seen=seen
            )
            if job_ids is not None:
                self._log_routed(study_instance_uid, reason, planned, job_ids)
                return job_ids
            if self._arrivals(study_instance_uid) is None:
                return []  # completed by another process, or gone
            logger.info(
                "study %s received images while its jobs were planned; planning again",
                study_instance_uid,
            )
        return []

    def _arrivals(self, study_instance_uid: str) -> tuple[int, datetime] | None:
        """The instance count and last arrival of a study still receiving (``None``:
        unknown, or not receiving)."""
        with self.database.session() as session:
            row = session.execute(
                select(Study.instance_count, Study.last_instance_at).where(
                    Study.study_instance_uid == study_instance_uid,
                    Study.state == StudyState.RECEIVING.value,
                )
            ).first()
        return None if row is None else (int(row[0]), row[1])

    def _receiving(
        self, study_instance_uid: str
    ) -> tuple[tuple[int, datetime], list[InstanceFacts]] | None:
        """:meth:`_arrivals` and the study's instances, read together (``None``: the
        study is unknown or not receiving)."""
        with self.database.session() as session:
            row = session.execute(
                select(Study.instance_count, Study.last_instance_at).where(
                    Study.study_instance_uid == study_instance_uid,
                    Study.state == StudyState.RECEIVING.value,
                )
            ).first()
            if row is None:
                return None
            rows = session.scalars(
                select(Instance).where(Instance.study_instance_uid == study_instance_uid)
            ).all()
            return (int(row[0]), row[1]), [InstanceFacts.of(r) for r in rows]

    def _plan_jobs(
        self, study_instance_uid: str, facts: list[InstanceFacts] | None = None
    ) -> list[dict[str, Any]]:
        """The infer jobs the study's instances (``facts``, read when not given) call
        for, as ``enqueue`` arguments.

        Computed outside any transaction: resolving a model may load it, which must
        not hold the database's write lock (the SCP would wait).
        """
        jobs: list[dict[str, Any]] = []
        if facts is None:
            facts = self._facts(study_instance_uid)
        for planned in self.router.plan(facts):
            names = (
                [d.name for d in self.config.destinations]
                if planned.destinations is None
                else sorted(planned.destinations)
            )
            destinations = tuple(self.config.destination(n) for n in names)
            job = {
                "study_instance_uid": study_instance_uid,
                "kind": JobKind.INFER,
                "route": ",".join(planned.routes),
                "priority": planned.priority,
            }
            for payload in self._rollout_payloads(study_instance_uid, planned.model, destinations):
                identity = self._identify(payload.model_ref)
                jobs.append(
                    {
                        **job,
                        "model_name": identity.name,
                        "model_version": identity.version,
                        "payload": payload.to_dict(),
                    }
                )
        return jobs

    def _rollout_payloads(
        self, study_instance_uid: str, alias: str, destinations: tuple[Destination, ...]
    ) -> list[InferPayload]:
        """The infer jobs of one routed alias: its active version, and during a rollout
        the candidate's (a shadow beside it, sending nothing; or a canary instead of
        it, for the studies whose UID falls in the canary's share)."""
        active = InferPayload(alias=alias, destinations=destinations)
        try:
            rollout = self.rollouts.open_rollout(alias)
        except Exception:  # the rollout table unreadable: serve the active version
            logger.exception("rollout state of %r unreadable; active version only", alias)
            rollout = None
        if rollout is None:
            return [active]
        marked = InferPayload(alias=alias, destinations=destinations, role=RolloutRole.ACTIVE)
        if rollout.state is RolloutState.SHADOW:
            shadow = InferPayload(alias=alias, model=rollout.candidate_ref, role=RolloutRole.SHADOW)
            return [marked, shadow]
        if in_canary(study_instance_uid, rollout.canary_share):
            return [
                InferPayload(
                    alias=alias,
                    destinations=destinations,
                    model=rollout.candidate_ref,
                    role=RolloutRole.CANARY,
                )
            ]
        return [marked]

    def _route(self, study_instance_uid: str, reason: str) -> list[int]:
        """Queue the jobs of a complete study and mark it routed (one transaction).

        Jobs announced as ``received`` while the study arrived are promoted to
        ``queued``; announced jobs the complete study no longer matches are dropped.
        """
        planned = self._plan_jobs(study_instance_uid)
        job_ids = self._commit_with_retries(study_instance_uid, planned) or []
        self._log_routed(study_instance_uid, reason, planned, job_ids)
        return job_ids

    def _commit_with_retries(
        self,
        study_instance_uid: str,
        planned: list[dict[str, Any]],
        completing: tuple[datetime, str] | None = None,
        seen: tuple[int, datetime] | None = None,
    ) -> list[int] | None:
        for attempt in range(3):
            try:
                return self._commit_route(study_instance_uid, planned, completing, seen)
            except IntegrityError:
                # The sweep announced the same jobs concurrently: they exist now and
                # the next attempt promotes them.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _log_routed(
        study_instance_uid: str, reason: str, planned: list[dict[str, Any]], job_ids: list[int]
    ) -> None:
        models = [str(p["payload"].get("model") or p["payload"]["alias"]) for p in planned]
        if models:
            logger.info(
                "study %s complete (%s): %d job(s) for %s",
                study_instance_uid,
                reason,
                len(job_ids),
                ", ".join(models),
            )
        else:
            logger.info("study %s complete (%s): no route matches", study_instance_uid, reason)

    def _commit_route(
        self,
        study_instance_uid: str,
        planned: list[dict[str, Any]],
        completing: tuple[datetime, str] | None = None,
        seen: tuple[int, datetime] | None = None,
    ) -> list[int] | None:
        """Mark the study routed and queue ``planned``; with ``completing`` (when and
        why), only a study still receiving, which is marked complete in the same
        statement, and with ``seen`` only while its instance count and last arrival
        are still those ``planned`` was made from (``None``: it was not receiving or
        received more meanwhile; nothing was written)."""
        with self.database.session() as session:
            # The study row first: an infer job finishing now locks it too, so of the
            # two one sees the other (see InferenceHandler._completed_again).
            if completing is None:
                session.execute(
                    update(Study)
                    .where(Study.study_instance_uid == study_instance_uid)
                    .values(state=StudyState.ROUTED.value)
                    .execution_options(synchronize_session=False)
                )
            else:
                completed_at, reason = completing
                unchanged = (
                    []
                    if seen is None
                    else [Study.instance_count == seen[0], Study.last_instance_at == seen[1]]
                )
                won = session.execute(
                    update(Study)
                    .where(
                        Study.study_instance_uid == study_instance_uid,
                        Study.state == StudyState.RECEIVING.value,
                        *unchanged,
                    )
                    .values(
                        state=StudyState.ROUTED.value,
                        completed_at=completed_at,
                        complete_reason=reason,
                    )
                    .execution_options(synchronize_session=False)
                )
                if won.rowcount != 1:  # type: ignore[attr-defined]
                    return None
            job_ids = []
            for p in planned:
                job_id, created = self.queue.enqueue(session, state=JobState.QUEUED, **p)
                job_ids.append(job_id)
                # Completed again (more images came after its result): the finished
                # job runs again, reads the whole study and supersedes its result.
                if not created and self.queue.requeue_finished(session, job_id):
                    logger.info(
                        "study %s completed again: infer job %d queued to read it again",
                        study_instance_uid,
                        job_id,
                    )
            session.execute(
                delete(Job)
                .where(
                    Job.study_instance_uid == study_instance_uid,
                    Job.state == JobState.RECEIVED.value,
                    Job.id.not_in(job_ids or [-1]),
                )
                .execution_options(synchronize_session=False)
            )
        return job_ids

    def announce(self) -> list[int]:
        """Create ``received`` jobs for studies still arriving that have none yet.

        They show in the job list what will run once the study is complete; they are
        never claimed in that state.
        """
        with self.database.session() as session:
            uids = session.scalars(
                select(Study.study_instance_uid).where(
                    Study.state == StudyState.RECEIVING.value,
                    ~select(Job.id)
                    .where(Job.study_instance_uid == Study.study_instance_uid)
                    .exists(),
                )
            ).all()
        job_ids: list[int] = []
        for uid in uids:
            planned = self._plan_jobs(uid)
            try:
                with self.database.session() as session:
                    job_ids.extend(
                        self.queue.enqueue(session, state=JobState.RECEIVED, **p)[0]
                        for p in planned
                    )
            except IntegrityError:
                continue  # routed meanwhile: its jobs exist already
        return job_ids

    def association_released(self, study_instance_uids: Iterable[str]) -> list[int]:
        """Complete the studies an association brought whose route asks for it."""
        job_ids: list[int] = []
        for uid in set(study_instance_uids):
            job_ids.extend(
                self.complete_study(
                    uid, reason="association-released", when=self.router.completes_on_release
                )
            )
        return job_ids

    def sweep(self) -> list[int]:
        """Complete every study that has been stable for ``stable_seconds``."""
        cutoff = utcnow() - timedelta(seconds=self.config.stable_seconds)
        with self.database.session() as session:
            uids = session.scalars(
                select(Study.study_instance_uid).where(
                    Study.state == StudyState.RECEIVING.value, Study.last_instance_at <= cutoff
                )
            ).all()
            # Complete but never routed: a process died between the two steps.
            orphans = session.scalars(
                select(Study.study_instance_uid).where(Study.state == StudyState.COMPLETE.value)
            ).all()
        job_ids: list[int] = []
        for uid in orphans:
            job_ids.extend(self._route(uid, reason="recovered"))
        for uid in uids:
            job_ids.extend(self.complete_study(uid, reason="stable"))
        self.announce()
        return job_ids

    def wake(self) -> None:
        """Ask the loop to look again now (an instance arrived)."""
        self._wake.set()

    def run(
        self,
        stop: threading.Event,
        *,
        on_jobs: Callable[[list[int]], None] | None = None,
        interval: float = 0.5,
    ) -> None:
        """Sweep until ``stop`` is set; errors are logged and the loop carries on."""
        pause = min(interval, max(0.05, self.config.stable_seconds / 4))
        while not stop.is_set():
            try:
                job_ids = self.sweep()
                if job_ids and on_jobs is not None:
                    on_jobs(job_ids)
            except Exception:
                logger.exception("study assembly sweep failed; retrying")
            self._wake.wait(pause)
            self._wake.clear()


__all__ = ["StudyAssembler"]
