"""Retention: delete received images, results and finished jobs on schedule, audited.

Each class of data has its own period in ``[service.retention]``
(:class:`~overread.service.retention_settings.RetentionSettings`); ``None`` keeps it
forever, the default for every class:

* **images** (``images_days``): a study's ``Instance`` rows and their stored files,
  once its last instance arrived more than that many days ago;
* **results** (``results_days``): ``Result`` rows and their SR/SEG objects, once made
  more than that many days ago;
* **jobs** (``jobs_days``): jobs and exports in a final state (succeeded, cancelled,
  dead-lettered), once finished more than that many days ago.

What is never deleted: the audit trail (``audit_min_days`` documents its legal
period; a setting asking to delete it is refused), the study row and its worklist
entry (the study records *when* its images or results were deleted, so the API and
the viewer say so instead of failing), and anything of a study that is still being
assembled or has a job not in a final state (received, queued, running, or waiting
to retry): a pending job must find its data.

The store is content-addressed, so one file may back several rows; a file is removed
only when no row left references it, looked for again under the store's lock of the
key (:meth:`~overread.service.store.ObjectStore.remove_unreferenced`), which an
instance being ingested holds until its row is committed. A clean-up first plans (:func:`plan_retention`:
exactly which rows and files, per class and study) and then applies that plan
(:func:`apply_retention`): per study, one transaction deletes the planned rows and
appends one ``retention-delete`` audit event naming the policy, classes, counts and
bytes; files are removed only after their rows are committed gone (a crash in between
leaves an unreferenced file, never a row without its file). ``--dry-run`` is the plan
alone.
"""

from __future__ import annotations

import enum
import logging
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from overread.audit import AuditAction, record_event
from overread.errors import ServiceError
from overread.service.db import (
    Database,
    Instance,
    Job,
    JobState,
    Result,
    ResultReview,
    ReviewState,
    Study,
    StudyState,
    utcnow,
)
from overread.service.retention_settings import RetentionSettings
from overread.service.store import ObjectStore

logger = logging.getLogger(__name__)

#: Job states nothing further happens in: their study's data may go.
FINAL_JOB_STATES = frozenset(
    {JobState.SUCCEEDED.value, JobState.DEAD_LETTERED.value, JobState.CANCELLED.value}
)

#: The actor of the running gateway's periodic clean-up in the audit trail.
SYSTEM_ACTOR = "system:retention"

_CHUNK = 500


class DataClass(enum.StrEnum):
    """A class of data with its own retention period."""

    IMAGES = "images"
    RESULTS = "results"
    JOBS = "jobs"

    def days(self, settings: RetentionSettings) -> int | None:
        """This class's period in ``settings``."""
        return {
            DataClass.IMAGES: settings.images_days,
            DataClass.RESULTS: settings.results_days,
            DataClass.JOBS: settings.jobs_days,
        }[self]


class SkipReason(enum.StrEnum):
    """Why a study whose data is due was left alone."""

    PENDING_JOB = "pending-job"
    """A job of the study is not in a final state: it must find its data."""
    ASSEMBLING = "assembling"
    """The study is still being received and assembled."""
    PENDING_REVIEW = "pending-review"
    """A result of the study waits for a reader's review: the reader must find it."""


@dataclass(frozen=True)
class ClassDeletion:
    """The rows of one data class of one study that are due."""

    data_class: DataClass
    days: int
    row_ids: tuple[int, ...]
    bytes: int
    object_keys: tuple[str, ...]

    @property
    def count(self) -> int:
        """How many rows (instances, results or jobs)."""
        return len(self.row_ids)

    def to_dict(self) -> dict[str, Any]:
        return {
            "class": self.data_class.value,
            "days": self.days,
            "count": self.count,
            "bytes": self.bytes,
        }


@dataclass(frozen=True)
class StudyDeletion:
    """Everything due of one study."""

    study_instance_uid: str
    classes: tuple[ClassDeletion, ...]

    @property
    def object_keys(self) -> set[str]:
        return {key for c in self.classes for key in c.object_keys}


@dataclass(frozen=True)
class SkippedStudy:
    """A study with data due that is kept for now, and why."""

    study_instance_uid: str
    reason: SkipReason


@dataclass(frozen=True)
class ClassTotal:
    """One data class over a whole plan."""

    days: int | None
    count: int = 0
    bytes: int = 0
    studies: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "count": self.count,
            "bytes": self.bytes,
            "studies": list(self.studies),
        }


@dataclass(frozen=True)
class RetentionPlan:
    """Exactly what a clean-up deletes: rows per study and class, and files.

    ``objects`` maps each stored object that no row outside the plan references to
    its size: those files go; ``shared_objects`` counts the files the planned rows
    reference that another row still needs (kept).
    """

    planned_at: datetime
    settings: RetentionSettings
    studies: tuple[StudyDeletion, ...]
    skipped: tuple[SkippedStudy, ...]
    objects: Mapping[str, int]
    shared_objects: int = 0

    def totals(self) -> dict[DataClass, ClassTotal]:
        """Counts, bytes and study UIDs per data class."""
        totals: dict[DataClass, ClassTotal] = {}
        for data_class in DataClass:
            items = [
                (study.study_instance_uid, c)
                for study in self.studies
                for c in study.classes
                if c.data_class is data_class
            ]
            totals[data_class] = ClassTotal(
                days=data_class.days(self.settings),
                count=sum(c.count for _, c in items),
                bytes=sum(c.bytes for _, c in items),
                studies=tuple(uid for uid, _ in items),
            )
        return totals

    @property
    def empty(self) -> bool:
        return not self.studies


@dataclass(frozen=True)
class RetentionReport:
    """What a clean-up did (or, for a dry run, would do)."""

    plan: RetentionPlan
    dry_run: bool
    applied: tuple[str, ...] = ()
    """Studies whose rows were deleted (all of the plan's, less any that became pending)."""
    skipped: tuple[SkippedStudy, ...] = ()
    removed_objects: int = 0
    removed_bytes: int = 0
    audit_events: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` report (see docs/service.md)."""
        plan = self.plan
        settings = plan.settings
        objects_count = len(plan.objects) if self.dry_run else self.removed_objects
        objects_bytes = sum(plan.objects.values()) if self.dry_run else self.removed_bytes
        return {
            "dry_run": self.dry_run,
            "planned_at": plan.planned_at.isoformat(),
            "policy": {
                "images_days": settings.images_days,
                "results_days": settings.results_days,
                "jobs_days": settings.jobs_days,
                "audit_min_days": settings.audit_min_days,
            },
            "classes": {c.value: t.to_dict() for c, t in plan.totals().items()},
            "objects": {
                "count": objects_count,
                "bytes": objects_bytes,
                "shared_kept": plan.shared_objects,
            },
            "skipped": [
                {"study_instance_uid": s.study_instance_uid, "reason": s.reason.value}
                for s in (*plan.skipped, *self.skipped)
            ],
            "studies_deleted": list(self.applied),
            "audit_events": self.audit_events,
            "audit": "never deleted",
        }


# -- planning ---------------------------------------------------------------------------


def _chunks(items: Iterable[Any]) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == _CHUNK:
            yield batch
            batch = []
    if batch:
        yield batch


def _artifact_keys(artifacts: Any) -> list[str]:
    return [
        str(a["key"])
        for a in artifacts or []
        if isinstance(a, dict) and isinstance(a.get("key"), str)
    ]


def _object_size(store: ObjectStore, key: str) -> int:
    try:
        return store.path(key).stat().st_size
    except (OSError, ServiceError):
        return 0


def _held_studies(session: Session) -> dict[str, SkipReason]:
    """Studies whose data must stay now: pending jobs, results waiting for review, or
    still assembling."""
    held: dict[str, SkipReason] = {
        uid: SkipReason.ASSEMBLING
        for uid in session.scalars(
            select(Study.study_instance_uid).where(Study.state == StudyState.RECEIVING.value)
        )
    }
    for uid in session.scalars(
        select(Job.study_instance_uid).where(Job.state.not_in(FINAL_JOB_STATES)).distinct()
    ):
        held[uid] = SkipReason.PENDING_JOB
    for uid in session.scalars(
        select(ResultReview.study_instance_uid)
        .where(ResultReview.state == ReviewState.PENDING.value)
        .distinct()
    ):
        held.setdefault(uid, SkipReason.PENDING_REVIEW)
    return held


def _due_images(session: Session, cutoff: datetime) -> Iterator[tuple[str, int, str, int]]:
    rows = session.execute(
        select(Instance.study_instance_uid, Instance.id, Instance.object_key, Instance.size)
        .join(Study, Study.study_instance_uid == Instance.study_instance_uid)
        .where(Study.last_instance_at < cutoff)
        .order_by(Instance.study_instance_uid, Instance.id)
    )
    for uid, row_id, key, size in rows:
        yield str(uid), int(row_id), str(key), int(size)


def plan_retention(
    database: Database,
    store: ObjectStore,
    settings: RetentionSettings,
    *,
    now: datetime | None = None,
) -> RetentionPlan:
    """Exactly what a clean-up under ``settings`` at ``now`` deletes; deletes nothing."""
    moment = now or utcnow()
    found: dict[str, dict[DataClass, ClassDeletion]] = defaultdict(dict)
    with database.session() as session:
        held = _held_studies(session)
        skipped: dict[str, SkipReason] = {}

        def keep(uid: str) -> bool:
            if uid in held:
                skipped[uid] = held[uid]
                return True
            return False

        if settings.images_days is not None:
            cutoff = moment - timedelta(days=settings.images_days)
            per_study: dict[str, list[tuple[int, str, int]]] = defaultdict(list)
            for uid, row_id, key, size in _due_images(session, cutoff):
                per_study[uid].append((row_id, key, size))
            for uid, rows in per_study.items():
                if not keep(uid):
                    found[uid][DataClass.IMAGES] = ClassDeletion(
                        DataClass.IMAGES,
                        settings.images_days,
                        tuple(r[0] for r in rows),
                        sum(r[2] for r in rows),
                        tuple(sorted({r[1] for r in rows})),
                    )
        if settings.results_days is not None:
            cutoff = moment - timedelta(days=settings.results_days)
            results: dict[str, list[tuple[int, list[str]]]] = defaultdict(list)
            for uid, row_id, artifacts in session.execute(
                select(Result.study_instance_uid, Result.id, Result.artifacts)
                .where(Result.created_at < cutoff)
                .order_by(Result.study_instance_uid, Result.id)
            ):
                results[str(uid)].append((int(row_id), _artifact_keys(artifacts)))
            for uid, result_rows in results.items():
                if not keep(uid):
                    keys = sorted({k for _, ks in result_rows for k in ks})
                    found[uid][DataClass.RESULTS] = ClassDeletion(
                        DataClass.RESULTS,
                        settings.results_days,
                        tuple(r[0] for r in result_rows),
                        sum(_object_size(store, k) for k in keys),
                        tuple(keys),
                    )
        if settings.jobs_days is not None:
            cutoff = moment - timedelta(days=settings.jobs_days)
            finished = func.coalesce(Job.finished_at, Job.updated_at)
            jobs: dict[str, list[int]] = defaultdict(list)
            for uid, row_id in session.execute(
                select(Job.study_instance_uid, Job.id)
                .where(Job.state.in_(FINAL_JOB_STATES), finished < cutoff)
                .order_by(Job.study_instance_uid, Job.id)
            ):
                jobs[str(uid)].append(int(row_id))
            for uid, job_ids in jobs.items():
                if not keep(uid):
                    found[uid][DataClass.JOBS] = ClassDeletion(
                        DataClass.JOBS, settings.jobs_days, tuple(job_ids), 0, ()
                    )
        studies = tuple(
            StudyDeletion(uid, tuple(found[uid][c] for c in DataClass if c in found[uid]))
            for uid in sorted(found)
        )
        objects, shared = _unreferenced(session, store, studies)
    return RetentionPlan(
        planned_at=moment,
        settings=settings,
        studies=studies,
        skipped=tuple(SkippedStudy(uid, skipped[uid]) for uid in sorted(skipped)),
        objects=objects,
        shared_objects=shared,
    )


def _referenced(
    session: Session,
    keys: set[str],
    *,
    except_instances: AbstractSet[int] = frozenset(),
    except_results: AbstractSet[int] = frozenset(),
) -> set[str]:
    """Which of ``keys`` a row (other than the excepted ones) references."""
    used: set[str] = set()
    for batch in _chunks(sorted(keys)):
        for row_id, key in session.execute(
            select(Instance.id, Instance.object_key).where(Instance.object_key.in_(batch))
        ):
            if int(row_id) not in except_instances:
                used.add(str(key))
    for row_id, artifacts in session.execute(select(Result.id, Result.artifacts)):
        if int(row_id) not in except_results:
            used.update(k for k in _artifact_keys(artifacts) if k in keys)
    return used


def _referenced_now(session: Session, key: str, *, since: datetime) -> bool:
    """Whether an instance row references ``key``, or a result stored since ``since``
    does (the results before were looked at already)."""
    if session.scalar(select(Instance.id).where(Instance.object_key == key).limit(1)):
        return True
    recent = session.scalars(select(Result.artifacts).where(Result.created_at >= since))
    return any(key in _artifact_keys(artifacts) for artifacts in recent)


def _unreferenced(
    session: Session, store: ObjectStore, studies: tuple[StudyDeletion, ...]
) -> tuple[dict[str, int], int]:
    """The files the planned rows reference that nothing else does, with sizes; and
    how many planned files another row still needs."""
    keys: set[str] = set()
    instances: set[int] = set()
    results: set[int] = set()
    sizes: dict[str, int] = {}
    for study in studies:
        for c in study.classes:
            keys.update(c.object_keys)
            if c.data_class is DataClass.IMAGES:
                instances.update(c.row_ids)
            elif c.data_class is DataClass.RESULTS:
                results.update(c.row_ids)
    if not keys:
        return {}, 0
    used = _referenced(session, keys, except_instances=instances, except_results=results)
    for key in sorted(keys - used):
        sizes[key] = _object_size(store, key)
    return sizes, len(keys & used)


# -- applying ---------------------------------------------------------------------------


def _pending_job(session: Session, uid: str) -> bool:
    """Whether the study gained a pending job or a result waiting for review."""
    count = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.study_instance_uid == uid, Job.state.not_in(FINAL_JOB_STATES))
    )
    reviews = session.scalar(
        select(func.count())
        .select_from(ResultReview)
        .where(
            ResultReview.study_instance_uid == uid,
            ResultReview.state == ReviewState.PENDING.value,
        )
    )
    return bool(count) or bool(reviews)


def _delete_study(
    session: Session, study: StudyDeletion, settings: RetentionSettings, actor: str
) -> None:
    """Delete one study's planned rows, mark the study, audit it: in ``session``'s
    transaction."""
    now = utcnow()
    uid = study.study_instance_uid
    for c in study.classes:
        for batch in _chunks(c.row_ids):
            if c.data_class is DataClass.IMAGES:
                session.execute(delete(Instance).where(Instance.id.in_(batch)))
            elif c.data_class is DataClass.RESULTS:
                session.execute(delete(Result).where(Result.id.in_(batch)))
            else:
                session.execute(
                    delete(Job).where(Job.id.in_(batch), Job.state.in_(FINAL_JOB_STATES))
                )
        if c.data_class is DataClass.IMAGES:
            left = session.scalar(
                select(func.count()).select_from(Instance).where(Instance.study_instance_uid == uid)
            )
            if not left:
                session.execute(
                    update(Study)
                    .where(Study.study_instance_uid == uid)
                    .values(images_purged_at=now)
                )
        elif c.data_class is DataClass.RESULTS:
            session.execute(
                update(Study).where(Study.study_instance_uid == uid).values(results_purged_at=now)
            )
    record_event(
        session,
        actor=actor,
        role="system",
        action=AuditAction.RETENTION_DELETE,
        object_uids=[uid],
        details={
            "policy": "service.retention",
            "audit_min_days": settings.audit_min_days,
            "classes": [c.to_dict() for c in study.classes],
        },
    )


def apply_retention(
    database: Database, store: ObjectStore, plan: RetentionPlan, *, actor: str = SYSTEM_ACTOR
) -> RetentionReport:
    """Delete exactly what ``plan`` names, study by study, then the files nobody needs.

    A study that gained a pending job since the plan was made is skipped (its rows
    and files stay). Before a file is removed its references are checked again, so a
    row that came to share it since the plan keeps it.
    """
    applied: list[str] = []
    skipped: list[SkippedStudy] = []
    keys: set[str] = set()
    for study in plan.studies:
        with database.session() as session:
            if _pending_job(session, study.study_instance_uid):
                skipped.append(SkippedStudy(study.study_instance_uid, SkipReason.PENDING_JOB))
                continue
            _delete_study(session, study, plan.settings, actor)
        applied.append(study.study_instance_uid)
        keys.update(study.object_keys)
    removable = keys & set(plan.objects)
    removed = 0
    removed_bytes = 0
    if removable:
        checked_at = utcnow() - timedelta(minutes=1)  # writers in other processes
        with database.session() as session:
            still_used = _referenced(session, removable)
        for key in sorted(removable - still_used):
            # Asked again under the store's lock of the key: an instance that arrived
            # meanwhile with the same bytes (its row committed, or being written) keeps
            # the file.
            def referenced(key: str = key) -> bool:
                with database.session() as session:
                    return _referenced_now(session, key, since=checked_at)

            try:
                size = store.remove_unreferenced(key, referenced)
            except OSError as exc:
                logger.error("retention: cannot remove object %s: %s", key, exc)
                continue
            if size is None:
                continue
            removed += 1
            removed_bytes += size
    report = RetentionReport(
        plan=plan,
        dry_run=False,
        applied=tuple(applied),
        skipped=tuple(skipped),
        removed_objects=removed,
        removed_bytes=removed_bytes,
        audit_events=len(applied),
    )
    if applied:
        logger.info(
            "retention: data of %d stud(ies) deleted, %d file(s), %d bytes freed",
            len(applied),
            removed,
            removed_bytes,
        )
    return report


def run_retention(
    database: Database,
    store: ObjectStore,
    settings: RetentionSettings,
    *,
    dry_run: bool = False,
    actor: str = SYSTEM_ACTOR,
    now: datetime | None = None,
) -> RetentionReport:
    """Plan a clean-up and, unless ``dry_run``, apply it."""
    plan = plan_retention(database, store, settings, now=now)
    if dry_run:
        return RetentionReport(plan=plan, dry_run=True)
    return apply_retention(database, store, plan, actor=actor)


@dataclass
class RetentionSweeper:
    """The running gateway's periodic clean-up, in a thread of its own.

    Runs every ``settings.interval_seconds`` while any class has a period; the first
    run comes one interval after the start, so a restart loop cannot hammer the disk.
    """

    database: Database
    store: ObjectStore
    settings: RetentionSettings
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (nothing when no class has a period or the interval is 0)."""
        if not self.settings.deletes_anything or not self.settings.interval_seconds:
            return
        self._thread = threading.Thread(target=self._loop, name="overread-retention", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        interval = float(self.settings.interval_seconds)
        while not self._stop.wait(interval):
            try:
                run_retention(self.database, self.store, self.settings)
            except Exception:
                logger.exception("retention clean-up failed; retrying in %.0f s", interval)

    def stop(self) -> None:
        """Stop the thread (a clean-up in progress finishes its study first)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None


__all__ = [
    "FINAL_JOB_STATES",
    "SYSTEM_ACTOR",
    "ClassDeletion",
    "ClassTotal",
    "DataClass",
    "RetentionPlan",
    "RetentionReport",
    "RetentionSweeper",
    "SkipReason",
    "SkippedStudy",
    "StudyDeletion",
    "apply_retention",
    "plan_retention",
    "run_retention",
]
