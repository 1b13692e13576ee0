"""Rollout decisions without a gateway: the canary split, the bounds, the state
changes' compare-and-set and the kill switches' release rules."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from overread.audit import AuditAction, AuditEvent
from overread.errors import ConfigError
from overread.service.db import Database, Job, JobKind, JobState
from overread.service.jobs import JobQueue
from overread.service.node import reroute_lost_canary
from overread.service.rollout import (
    CanaryBounds,
    RolloutState,
    RolloutStore,
    SideFigures,
    canary_bucket,
    in_canary,
    judge,
)


@pytest.fixture
def database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'overread.db'}")
    yield db
    db.dispose()


def test_canary_bucket_is_a_fixed_hash_of_the_uid() -> None:
    # The first 8 hex digits of sha256("1.2.3") modulo 10000: the same everywhere.
    assert canary_bucket("1.2.3") == 728
    uid = "1.2.826.0.1.3680043.8.498.1"
    assert canary_bucket(uid) == canary_bucket(uid + " ")  # DICOM padding ignored
    assert 0 <= canary_bucket(uid) < 10_000
    uids = [generate_uid() for _ in range(4000)]
    share = sum(in_canary(u, 0.1) for u in uids) / len(uids)
    assert 0.08 < share < 0.12
    # Widening the share keeps every study already in the canary.
    assert all(in_canary(u, 0.5) for u in uids if in_canary(u, 0.1))
    assert not any(in_canary(u, 0.0) for u in uids) and all(in_canary(u, 1.0) for u in uids)


def test_bounds_are_checked_when_made() -> None:
    with pytest.raises(ConfigError, match="max_failure_rate"):
        CanaryBounds(max_failure_rate=1.5)
    with pytest.raises(ConfigError, match="min_studies"):
        CanaryBounds(min_studies=0)
    assert CanaryBounds.from_dict({"min_studies": 3, "unknown": 1}).min_studies == 3


def _side(studies: int, positives: int, **kw: object) -> SideFigures:
    return SideFigures(
        studies=studies,
        finished_jobs=kw.pop("finished", studies),  # type: ignore[arg-type]
        findings=studies * 10,
        positive_findings=positives,
        **kw,  # type: ignore[arg-type]
    )


def test_judge_names_each_bound_left_and_waits_for_enough_studies() -> None:
    bounds = CanaryBounds(min_studies=5)
    active = _side(20, 40, latencies=(0.1,) * 20)
    assert judge(_side(4, 40), active, bounds) == ()  # too few to judge
    assert judge(_side(5, 10, latencies=(0.1,) * 5), active, bounds) == ()
    [positive] = judge(_side(5, 50), active, bounds)
    assert positive.startswith("positive-finding rate 1.00 vs active 0.20")
    [failing] = judge(_side(0, 0, finished=5, failed_jobs=2), active, bounds)
    assert failing == "failure rate 0.40 > 0.20"
    [slow] = judge(_side(5, 10, latencies=(0.5,) * 5), active, bounds)
    assert slow.startswith("median model time 0.500 s vs active 0.100 s")
    [refusing] = judge(_side(5, 5, refused_studies=2), _side(20, 40), bounds)
    assert refusing.startswith("gate refusal rate 0.40 vs active 0.00")
    [critical] = judge(_side(5, 10, critical_studies=3), _side(20, 40, critical_studies=2), bounds)
    assert critical.startswith("critical-finding rate 0.60 vs active 0.10")
    # Without enough active results only the failure rate is judged.
    assert judge(_side(5, 50), _side(2, 2), bounds) == ()


def test_rollouts_end_once_and_refuse_bad_starts(database: Database) -> None:
    store = RolloutStore(database, critical={})
    with pytest.raises(ConfigError, match="already the active version"):
        store.start(
            "chest", active_ref="m@1", candidate_ref="m@1", state=RolloutState.SHADOW, actor="t"
        )
    with pytest.raises(ConfigError, match="canary share"):
        store.start(
            "chest", active_ref="m@1", candidate_ref="m@2", state=RolloutState.CANARY, actor="t"
        )
    store.start(
        "chest",
        active_ref="m@1",
        candidate_ref="m@2",
        state=RolloutState.CANARY,
        actor="t",
        canary_share=0.25,
    )
    first = store.end("chest", RolloutState.ROLLED_BACK, actor="a", expect=RolloutState.CANARY)
    again = store.end("chest", RolloutState.ROLLED_BACK, actor="b", expect=RolloutState.CANARY)
    assert first is not None and first.canary_share == 0.25 and again is None
    assert store.open_rollout("chest") is None
    with database.session() as session:
        actions = session.scalars(select(AuditEvent.action).order_by(AuditEvent.seq)).all()
    assert actions == [AuditAction.ROLLOUT_START.value, AuditAction.ROLLOUT_ROLLBACK.value]


def test_releasing_a_switch_frees_only_exports_no_other_switch_holds(database: Database) -> None:
    store = RolloutStore(database, critical={})
    queue = JobQueue(database)
    with database.session() as session:
        for version in ("1", "2"):
            queue.enqueue(
                session,
                study_instance_uid="1.2.3",
                model_name="m",
                model_version=version,
                kind=JobKind.EXPORT,
                destination="PACS",
                payload={},
            )
        for job in session.scalars(select(Job)).all():
            job.state = JobState.HELD.value
    assert store.kill("m", actor="t") and store.kill("m@2", actor="t")
    assert not store.kill("m", actor="t")  # already engaged
    with database.session() as session:
        assert store.killed(session, "m", "1") == "m"
        assert store.killed(session, "m", "2") == "m@2"
        assert store.killed(session, "other", "1") is None
    assert store.release("m", actor="t") == 1  # m@2 stays held by its own switch
    assert store.release("m", actor="t") is None
    assert store.release("m@2", actor="t") == 1
    with database.session() as session:
        states = sorted(session.scalars(select(Job.state)).all())
    assert states == ["queued", "queued"]


def test_widening_a_canary_keeps_its_start_and_a_new_state_starts_afresh(
    database: Database,
) -> None:
    store = RolloutStore(database, critical={})
    refs = {"active_ref": "m@1", "candidate_ref": "m@2", "actor": "t"}
    shadow = store.start("chest", state=RolloutState.SHADOW, **refs)
    narrow = store.start("chest", state=RolloutState.CANARY, canary_share=0.1, **refs)
    wide = store.start("chest", state=RolloutState.CANARY, canary_share=0.5, **refs)
    assert narrow.started_at > shadow.started_at
    assert wide.started_at == narrow.started_at and wide.canary_share == 0.5


def test_an_export_of_a_killed_model_is_held_without_counting_an_attempt(
    database_url: str,
) -> None:
    db = Database(database_url)
    try:
        queue = JobQueue(db)
        with db.session() as session:
            job_id, _ = queue.enqueue(
                session,
                study_instance_uid="1.2.3",
                model_name="m",
                model_version="1",
                kind=JobKind.EXPORT,
                destination="PACS",
                payload={},
            )
        claimed = queue.claim("w", lease_seconds=30)
        assert claimed is not None and claimed.id == job_id and claimed.attempts == 1
        with db.session() as session:
            queue.hold(session, job_id, "w", "held: kill switch of m engaged")
        with db.session() as session:
            job = session.get(Job, job_id)
            assert job is not None
            assert (job.state, job.attempts, job.lease_owner) == ("held", 0, None)
        assert queue.claim("w", lease_seconds=30) is None  # held is never claimed
    finally:
        db.dispose()


def _infer(
    queue: JobQueue, study: str, version: str, role: str | None, alias: str = "chest"
) -> int:
    payload: dict[str, object] = {"alias": alias, "destinations": []}
    if role is not None:
        payload.update(model=f"m@{version}", role=role)
    with queue.database.session() as session:
        job_id, _ = queue.enqueue(
            session,
            study_instance_uid=study,
            model_name="m",
            model_version=version,
            kind=JobKind.INFER,
            route="chest-xray",
            priority=3,
            payload=payload,
        )
    return job_id


def _state(database: Database, job_id: int) -> str:
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        return job.state


def _active_jobs(database: Database) -> dict[str, tuple[str, int, str]]:
    with database.session() as session:
        return {
            j.study_instance_uid: (j.state, j.priority, j.route)
            for j in session.scalars(
                select(Job).where(Job.model_version == "1", Job.kind == JobKind.INFER.value)
            ).all()
        }


def test_a_rollback_cancels_the_candidates_waiting_jobs_and_reroutes_canary_studies(
    database: Database,
) -> None:
    store = RolloutStore(database, critical={})
    queue = JobQueue(database)
    store.start(
        "chest",
        active_ref="m@1",
        candidate_ref="m@2",
        state=RolloutState.CANARY,
        actor="t",
        canary_share=0.5,
    )
    queued = _infer(queue, "1.1", "2", "canary")
    retrying = _infer(queue, "1.2", "2", "canary")
    dead = _infer(queue, "1.3", "2", "canary")
    shadow = _infer(queue, "1.4", "2", "shadow")
    other_alias = _infer(queue, "1.5", "2", "canary", alias="knee")
    with database.session() as session:
        for job_id, state in ((retrying, JobState.FAILED), (dead, JobState.DEAD_LETTERED)):
            job = session.get(Job, job_id)
            assert job is not None
            job.state = state.value
    ended = store.end("chest", RolloutState.ROLLED_BACK, actor="dr.ops", reason="by hand")
    assert ended is not None
    assert [_state(database, j) for j in (queued, retrying, dead, shadow, other_alias)] == [
        "cancelled",
        "cancelled",
        "dead_lettered",  # a dead letter stays one; its study is sent to m@1 all the same
        "cancelled",
        "queued",  # another alias's rollout is not this one
    ]
    # Every canary study gets the active version; the shadow's study has it already.
    assert _active_jobs(database) == {
        "1.1": ("queued", 3, "chest-xray"),
        "1.2": ("queued", 3, "chest-xray"),
        "1.3": ("queued", 3, "chest-xray"),
    }
    with database.session() as session:
        [event] = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.ROLLOUT_REROUTE.value)
        ).all()
    assert event.actor == "dr.ops"
    assert sorted(event.details["cancelled_jobs"]) == sorted([queued, retrying, shadow])
    assert len(event.details["queued_jobs"]) == 3
    # What the workers claim now is the active version's or the other alias's, never a
    # cancelled job; a cancelled job cannot be put back in the queue.
    claimed = set()
    while (job := queue.claim("w", lease_seconds=30)) is not None:
        claimed.add((job.study_instance_uid, job.model_version))
    assert claimed == {("1.1", "1"), ("1.2", "1"), ("1.3", "1"), ("1.5", "2")}
    assert not queue.requeue(queued)


def test_a_canary_job_claimed_before_the_rollback_is_skipped_when_it_would_run(
    database: Database,
) -> None:
    store = RolloutStore(database, critical={})
    queue = JobQueue(database)
    store.start(
        "chest",
        active_ref="m@1",
        candidate_ref="m@2",
        state=RolloutState.CANARY,
        actor="t",
        canary_share=0.5,
    )
    job_id = _infer(queue, "1.1", "2", "canary")
    claimed = queue.claim("w1", lease_seconds=30)
    assert claimed is not None and claimed.id == job_id
    assert not store.skip_rolled_back(job_id, "w1")  # the canary is still open: it runs
    store.end("chest", RolloutState.ROLLED_BACK, actor="monitor", expect=RolloutState.CANARY)
    assert _state(database, job_id) == "running"  # a claimed job is its worker's
    assert not store.skip_rolled_back(job_id, "w2")  # only under its own lease
    assert store.skip_rolled_back(job_id, "w1")
    assert _state(database, job_id) == "cancelled"
    assert _active_jobs(database) == {"1.1": ("queued", 3, "chest-xray")}
    with database.session() as session:
        [event] = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.ROLLOUT_REROUTE.value)
        ).all()
    assert event.actor == "worker:w1" and event.details["cancelled_jobs"] == [job_id]


def test_a_dead_lettered_canary_study_goes_to_the_active_version(database: Database) -> None:
    store = RolloutStore(database, critical={})
    queue = JobQueue(database)
    store.start(
        "chest",
        active_ref="m@1",
        candidate_ref="m@2",
        state=RolloutState.CANARY,
        actor="t",
        canary_share=0.5,
    )
    job_id = _infer(queue, "1.1", "2", "canary")
    assert store.reroute_dead_letter(job_id, actor="worker:w") == []  # not dead yet
    claimed = queue.claim("w", lease_seconds=30)
    assert claimed is not None
    assert queue.mark_failed(job_id, "w", "model crashed", retryable=False) == "dead_lettered"
    [active] = store.reroute_dead_letter(job_id, actor="worker:w")
    assert _active_jobs(database) == {"1.1": ("queued", 3, "chest-xray")}
    assert _state(database, job_id) == "dead_lettered"  # still counted as the canary's failure
    assert store.open_rollout("chest") is not None and active > job_id


def test_a_canary_job_whose_worker_is_lost_on_its_last_attempt_goes_to_the_active_version(
    database: Database,
) -> None:
    import time

    store = RolloutStore(database, critical={})
    queue = JobQueue(database, max_attempts=1, on_lost=reroute_lost_canary(database))
    store.start(
        "chest",
        active_ref="m@1",
        candidate_ref="m@2",
        state=RolloutState.CANARY,
        actor="t",
        canary_share=0.5,
    )
    job_id = _infer(queue, "1.1", "2", "canary")
    assert queue.claim("doomed", lease_seconds=0.1) is not None
    time.sleep(0.3)
    taken = queue.claim("other", lease_seconds=60)  # dead-letters the lost job first
    assert _state(database, job_id) == "dead_lettered"
    # The study is not left without a result: the active version reads it.
    [(state, priority, route)] = _active_jobs(database).values()
    assert (priority, route) == (3, "chest-xray") and state in ("queued", "running")
    assert taken is None or taken.model_version == "1"
    with database.session() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.ROLLOUT_REROUTE.value)
        ).all()
    assert [e.actor for e in events] == ["worker:doomed"]


class _NoModels:
    """A model provider that must not be asked: the job is not to run."""

    def get(self, *args: object, **kwargs: object) -> object:
        raise AssertionError("the rolled-back candidate was run")

    __call__ = get
    pipeline = get
    load = get


def test_a_worker_skips_a_requeued_job_of_a_rolled_back_candidate(
    database: Database, tmp_path: Path
) -> None:
    from overread.config import Settings
    from overread.service.config import service_config
    from overread.service.store import ObjectStore
    from overread.service.worker import Worker

    store = RolloutStore(database, critical={})
    queue = JobQueue(database)
    store.start(
        "chest",
        active_ref="m@1",
        candidate_ref="m@2",
        state=RolloutState.CANARY,
        actor="t",
        canary_share=0.5,
    )
    job_id = _infer(queue, "1.1", "2", "canary")
    with database.session() as session:
        job = session.get(Job, job_id)
        assert job is not None
        job.state = JobState.DEAD_LETTERED.value
    store.end("chest", RolloutState.ROLLED_BACK, actor="dr.ops")
    assert _active_jobs(database) == {"1.1": ("queued", 3, "chest-xray")}
    with database.session() as session:  # the study's active job is done meanwhile
        for job in session.scalars(select(Job).where(Job.model_version == "1")).all():
            job.state = JobState.SUCCEEDED.value
    assert queue.requeue(job_id)  # an operator puts the dead letter back
    worker = Worker(
        service_config(Settings(data_dir=tmp_path / "data")),
        database,
        ObjectStore(tmp_path / "objects", fsync=False),
        queue,
        _NoModels(),  # type: ignore[arg-type]
        None,
        name="w1",
    )
    ran = worker.run_once()
    assert ran is not None and ran.id == job_id
    assert _state(database, job_id) == "cancelled"
    assert worker.run_once() is None  # nothing else to run: the active job is done


@pytest.mark.parametrize("then", ["nothing", "new-canary", "promoted"])
def test_a_canary_result_finished_after_the_rollback_is_not_sent_and_its_study_rerouted(
    database: Database, tmp_path: Path, then: str
) -> None:
    from overread.config import Settings
    from overread.service.config import service_config
    from overread.service.db import Result
    from overread.service.payloads import export_payload
    from overread.service.rollout import RolloutRole
    from overread.service.store import ObjectStore
    from overread.service.worker import Worker

    store = RolloutStore(database, critical={})
    queue = JobQueue(database)
    store.start(
        "chest",
        active_ref="m@1",
        candidate_ref="m@2",
        state=RolloutState.CANARY,
        actor="t",
        canary_share=0.5,
    )
    infer_id = _infer(queue, "1.1", "2", "canary")
    claimed = queue.claim("w0", lease_seconds=30)
    assert claimed is not None and claimed.id == infer_id
    # Rolled back while the canary job runs: it is its worker's and finishes.
    store.end("chest", RolloutState.ROLLED_BACK, actor="monitor", expect=RolloutState.CANARY)
    assert _state(database, infer_id) == "running" and _active_jobs(database) == {}
    with database.session() as session:  # the job's outcome: a result and its exports
        queue.mark_succeeded(session, infer_id, "w0")
        result = Result(
            job_id=infer_id, study_instance_uid="1.1", model_name="m", model_version="2"
        )
        session.add(result)
        session.flush()
        store.mark_result(session, result, alias="chest", role=RolloutRole.CANARY)
        exports = [
            queue.enqueue(
                session,
                study_instance_uid="1.1",
                model_name="m",
                model_version="2",
                kind=JobKind.EXPORT,
                destination=name,
                payload={"fhir_endpoint": name, "result_id": result.id},
            )[0]
            for name in ("EHR", "EHR2")
        ]
    # The exports wait (retrying, held) while the alias moves on: a new rollout or a
    # promotion replaces its current row; the rolled-back result is still not sent.
    active = "1"
    if then != "nothing":
        store.start(
            "chest",
            active_ref="m@1",
            candidate_ref="m@3",
            state=RolloutState.CANARY,
            actor="t",
            canary_share=0.5,
        )
    if then == "promoted":
        store.end("chest", RolloutState.PROMOTED, actor="t")
        active = "3"
    worker = Worker(
        service_config(Settings(data_dir=tmp_path / "data")),
        database,
        ObjectStore(tmp_path / "objects", fsync=False),
        queue,
        _NoModels(),  # type: ignore[arg-type]
        None,
        name="w1",
    )
    running = [queue.claim("w1", lease_seconds=30) for _ in exports]
    assert sorted(j.id for j in running if j is not None) == sorted(exports)
    for job in running:
        assert job is not None
        worker.exporters.export(job, export_payload(job.payload))
    # Nothing sent (an unknown endpoint would have dead-lettered the job), the infer
    # job keeps its outcome, and the study is queued once for the active version.
    assert [_state(database, j) for j in exports] == ["cancelled", "cancelled"]
    assert _state(database, infer_id) == "succeeded"
    with database.session() as session:
        rerouted = session.scalars(
            select(Job).where(Job.model_version == active, Job.kind == JobKind.INFER.value)
        ).all()
        assert [(j.study_instance_uid, j.state, j.priority) for j in rerouted] == [
            ("1.1", "queued", 3)
        ]
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.ROLLOUT_REROUTE.value)
        ).all()
    skipped = [e.details["skipped_export_job"] for e in events if "skipped_export_job" in e.details]
    assert sorted(skipped) == sorted(exports)
    # An export of a result not on a rolled-back canary is not skipped.
    assert not store.skip_rolled_back_export(exports[0], 999, "w1")
