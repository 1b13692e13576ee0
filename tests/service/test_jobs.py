"""The job queue on SQLite and PostgreSQL: idempotency, exclusive claims, leases, retries."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update

from overread.audit import AuditAction
from overread.audit.schema import AuditEvent
from overread.service.db import Database, Job, JobKind, JobState, Result, utcnow
from overread.service.jobs import JobQueue, LeaseLostError, RetryPolicy


def _queue(url: str, **kwargs: object) -> JobQueue:
    return JobQueue(Database(url), **kwargs)  # type: ignore[arg-type]


def _enqueue(queue: JobQueue, study: str, kind: JobKind = JobKind.INFER, dest: str = "") -> int:
    job_id, _ = queue.enqueue(
        study_instance_uid=study,
        model_name="cxr-default",
        model_version="1.0.0",
        kind=kind,
        destination=dest,
    )
    return job_id


def test_enqueue_is_idempotent_per_study_model_kind_destination(database_url: str) -> None:
    queue = _queue(database_url)
    first, created = queue.enqueue(
        study_instance_uid="1.2.3", model_name="m", model_version="1", kind=JobKind.INFER
    )
    again, created_again = queue.enqueue(
        study_instance_uid="1.2.3", model_name="m", model_version="1", kind=JobKind.INFER
    )
    other_version, _ = queue.enqueue(
        study_instance_uid="1.2.3", model_name="m", model_version="2", kind=JobKind.INFER
    )
    export_a = _enqueue(queue, "1.2.3", JobKind.EXPORT, "PACS")
    export_b = _enqueue(queue, "1.2.3", JobKind.EXPORT, "ARCHIVE")
    assert created and not created_again and first == again
    assert len({first, other_version, export_a, export_b}) == 4
    assert queue.counts() == {"queued": 4}


def test_concurrent_workers_claim_each_job_exactly_once(database_url: str) -> None:
    queue = _queue(database_url)
    ids = {_enqueue(queue, f"1.2.{i}") for i in range(30)}
    claimed: list[int] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while True:
            job = queue.claim(name, lease_seconds=60)
            if job is None:
                return
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert Counter(claimed) == Counter(ids)  # every job once, none twice
    assert queue.counts() == {"running": 30}


def test_expired_lease_of_a_dead_worker_is_reclaimed_and_fenced(database_url: str) -> None:
    queue = _queue(database_url)
    job_id = _enqueue(queue, "1.2.9")
    dead = queue.claim("dead-worker", lease_seconds=2)
    assert dead is not None and dead.id == job_id
    assert queue.claim("live-worker", lease_seconds=60) is None  # lease still valid
    time.sleep(2.2)
    live = queue.claim("live-worker", lease_seconds=60)
    assert live is not None and live.id == job_id and live.attempts == 2
    # The dead worker comes back: its lease is gone, it cannot complete the job.
    with pytest.raises(LeaseLostError), queue.database.session() as session:
        session.add(
            Result(
                job_id=job_id,
                study_instance_uid="1.2.9",
                model_name="cxr-default",
                model_version="1.0.0",
            )
        )
        queue.mark_succeeded(session, job_id, "dead-worker")
    assert not queue.renew(job_id, "dead-worker", lease_seconds=60)
    with queue.database.session() as session:
        queue.mark_succeeded(session, job_id, "live-worker")
    job = queue.get(job_id)
    assert job is not None and job.state == JobState.SUCCEEDED.value
    with queue.database.session() as session:  # the fenced transaction left no result
        assert session.query(Result).count() == 0


def test_failures_back_off_exponentially_then_dead_letter(database_url: str) -> None:
    queue = _queue(
        database_url,
        retry=RetryPolicy(base_seconds=10, maximum_seconds=25, jitter=0),
        max_attempts=3,
    )
    job_id = _enqueue(queue, "1.2.10", JobKind.EXPORT, "PACS")
    delays = []
    for attempt in range(1, 4):
        job = queue.claim("w", lease_seconds=60)
        assert job is not None and job.attempts == attempt
        before = utcnow()
        state = queue.mark_failed(job_id, "w", "peer refused")
        failed = queue.get(job_id)
        assert failed is not None
        if attempt < 3:
            assert state == JobState.FAILED.value
            delays.append((failed.next_attempt_at - before).total_seconds())
            assert queue.claim("w", lease_seconds=60) is None  # not before the backoff
            with queue.database.session() as session:  # fast-forward the clock
                session.execute(
                    update(Job).where(Job.id == job_id).values(next_attempt_at=utcnow())
                )
        else:
            assert state == JobState.DEAD_LETTERED.value
    assert delays[0] == pytest.approx(10, abs=1) and delays[1] == pytest.approx(20, abs=1)
    dead = queue.get(job_id)
    assert dead is not None and dead.error == "peer refused"
    (event,) = _dead_letter_events(queue)
    assert event.actor == "worker:w" and event.object_uids == ["1.2.10", f"job:{job_id}"]
    assert event.details["destination"] == "PACS" and event.details["attempts"] == 3
    assert event.details["error"] == "peer refused"
    assert queue.claim("w", lease_seconds=60) is None  # dead letters stay put ...
    assert queue.requeue(job_id)  # ... until someone requeues them
    again = queue.claim("w", lease_seconds=60)
    assert again is not None and again.attempts == 1


def _dead_letter_events(queue: JobQueue) -> list[AuditEvent]:
    with queue.database.session() as session:
        events = session.scalars(
            select(AuditEvent).where(AuditEvent.action == AuditAction.DEAD_LETTER.value)
        ).all()
        session.expunge_all()
        return list(events)


def test_worker_lost_on_last_attempt_is_dead_lettered(database_url: str) -> None:
    queue = _queue(database_url, max_attempts=1)
    job_id = _enqueue(queue, "1.2.11")
    assert queue.claim("doomed", lease_seconds=0.1) is not None
    time.sleep(0.3)
    assert queue.claim("other", lease_seconds=60) is None
    job = queue.get(job_id)
    assert job is not None and job.state == JobState.DEAD_LETTERED.value
    (event,) = _dead_letter_events(queue)
    assert event.actor == "worker:doomed" and f"job:{job_id}" in event.object_uids
    assert "worker lost" in event.details["error"]
    assert "lease expired" in (job.error or "")


def test_queue_survives_a_restart(database_url: str) -> None:
    queue = _queue(database_url)
    ids = {_enqueue(queue, f"1.3.{i}") for i in range(5)}
    queue.database.dispose()
    reopened = _queue(database_url)
    seen = set()
    while (job := reopened.claim("after-restart", lease_seconds=60)) is not None:
        seen.add(job.id)
    assert seen == ids


def test_sqlite_runs_in_wal_mode(tmp_path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'x.db'}")
    with db.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


@pytest.mark.slow
def test_the_heartbeat_keeps_a_long_job_from_being_taken_over(database_url: str) -> None:
    from overread.service.worker import _Heartbeat

    queue = _queue(database_url)
    job_id = _enqueue(queue, "1.2.12")
    # Renewals every lease/3 = 1 s leave 2 s of slack for a loaded machine.
    assert queue.claim("busy", lease_seconds=3) is not None
    with _Heartbeat(queue, job_id, "busy", lease_seconds=3) as beat:
        for _ in range(9):  # 4.5 s of "work": well past the lease
            time.sleep(0.5)
            assert queue.claim("thief", lease_seconds=60) is None
    assert not beat.lost
    time.sleep(3.2)  # no heartbeat any more: the lease runs out
    taken = queue.claim("thief", lease_seconds=60)
    assert taken is not None and taken.id == job_id and taken.attempts == 2


def test_backoff_is_capped_and_jittered_below_the_cap() -> None:
    policy = RetryPolicy(base_seconds=2, maximum_seconds=60, jitter=0.2)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 2), (3, 8), (6, 60), (50, 60), (10**6, 60)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(0.8 * ceiling <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > 0.05 * ceiling  # really spread, not constant
    assert RetryPolicy(jitter=0).delay(3) == 8.0


def test_retrying_is_bounded_by_time_not_count(database_url: str) -> None:
    queue = _queue(
        database_url, retry=RetryPolicy(base_seconds=1, maximum_seconds=60, retry_for_seconds=3600)
    )
    job_id = _enqueue(queue, "1.2.20", JobKind.EXPORT, "PACS")
    # Twenty failures in a row: far past the old count of five, still retrying.
    for _ in range(20):
        assert queue.claim("w", lease_seconds=60) is not None
        assert queue.mark_failed(job_id, "w", "connection refused") == JobState.FAILED.value
        with queue.database.session() as session:
            session.execute(update(Job).where(Job.id == job_id).values(next_attempt_at=utcnow()))
    job = queue.get(job_id)
    assert job is not None and job.attempts == 20 and job.max_attempts == 0
    # The first attempt was long ago: the next retry would fall outside the period.
    with queue.database.session() as session:
        session.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(started_at=utcnow() - timedelta(seconds=3590))
        )
    assert queue.claim("w", lease_seconds=60) is not None
    assert queue.mark_failed(job_id, "w", "connection refused") == JobState.DEAD_LETTERED.value
    dead = queue.get(job_id)
    assert dead is not None and dead.error == "connection refused (gave up after retrying for 1 h)"
    (event,) = _dead_letter_events(queue)
    assert "gave up after retrying for 1 h" in event.details["error"]
    # Requeued, it gets a fresh period: its first attempt is the next one.
    assert queue.requeue(job_id)
    again = queue.claim("w", lease_seconds=60)
    assert again is not None and again.attempts == 1
    assert again.started_at is not None and utcnow() - _aware(again.started_at) < timedelta(
        seconds=60
    )
    assert queue.mark_failed(job_id, "w", "connection refused") == JobState.FAILED.value


def test_a_lost_worker_past_the_retry_period_is_dead_lettered(database_url: str) -> None:
    queue = _queue(database_url, retry=RetryPolicy(retry_for_seconds=600))
    job_id = _enqueue(queue, "1.2.21")
    assert queue.claim("doomed", lease_seconds=0.1) is not None
    with queue.database.session() as session:
        session.execute(
            update(Job).where(Job.id == job_id).values(started_at=utcnow() - timedelta(hours=1))
        )
    time.sleep(0.3)
    assert queue.claim("other", lease_seconds=60) is None
    job = queue.get(job_id)
    assert job is not None and job.state == JobState.DEAD_LETTERED.value


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def test_destination_health_says_which_is_down_since_when_and_what_waits(
    database_url: str,
) -> None:
    queue = _queue(database_url, retry=RetryPolicy(jitter=0), max_attempts=2)
    failing = _enqueue(queue, "1.2.30", JobKind.EXPORT, "PACS")
    waiting = _enqueue(queue, "1.2.31", JobKind.EXPORT, "PACS")
    _enqueue(queue, "1.2.32", JobKind.EXPORT, "VNA")
    assert [(d["name"], d["state"], d["queued"]) for d in queue.destination_health(["PACS"])] == [
        ("PACS", "up", 2),
        ("VNA", "up", 1),
    ]
    claimed = queue.claim("w", lease_seconds=60, kinds=[JobKind.EXPORT])
    assert claimed is not None and claimed.id == failing
    queue.mark_failed(failing, "w", "association rejected")
    pacs, vna = queue.destination_health(["PACS", "VNA", "ARCHIVE"])[:2]
    assert pacs["state"] == "down" and pacs["last_error"] == "association rejected"
    assert pacs["down_since"] is not None and pacs["queued"] == 2 and waiting
    assert vna["state"] == "up"
    archive = queue.destination_health(["PACS", "VNA", "ARCHIVE"])[2]
    assert archive == {
        "name": "ARCHIVE",
        "state": "up",
        "down_since": None,
        "queued": 0,
        "dead_lettered": 0,
        "last_error": None,
    }


def test_a_down_destination_is_probed_by_one_worker_while_others_serve_the_rest(
    database_url: str,
) -> None:
    queue = _queue(database_url, retry=RetryPolicy(jitter=0))
    down = [_enqueue(queue, f"1.2.4{i}", JobKind.EXPORT, "DEADPACS") for i in range(3)]
    healthy = _enqueue(queue, "1.2.49", JobKind.EXPORT, "PACS")
    with queue.database.session() as session:  # DEADPACS jobs first in line
        session.execute(update(Job).where(Job.id == healthy).values(priority=-1))
    first = queue.claim("w1", lease_seconds=60)
    assert first is not None and first.id == down[0]
    queue.mark_failed(first.id, "w1", "connection refused")  # DEADPACS is down now
    with queue.database.session() as session:  # every retry due at once
        session.execute(update(Job).values(next_attempt_at=utcnow()))
    probe = queue.claim("w1", lease_seconds=60)
    assert probe is not None and probe.destination == "DEADPACS"
    # While that probe runs, the other worker gets the healthy destination's export,
    # not another attempt at the dead one.
    other = queue.claim("w2", lease_seconds=60)
    assert other is not None and other.id == healthy
    assert queue.claim("w3", lease_seconds=60) is None
    # The probe succeeds: the destination is back and its exports flow again.
    with queue.database.session() as session:
        queue.mark_succeeded(session, probe.id, "w1")
        session.execute(
            update(Job).where(Job.id == first.id).values(state=JobState.SUCCEEDED.value)
        )
    rest = queue.claim("w3", lease_seconds=60)
    assert rest is not None and rest.destination == "DEADPACS"


def test_a_replaced_result_sends_every_export_again_even_one_in_flight(
    database_url: str,
) -> None:
    queue = _queue(database_url)
    done = _enqueue(queue, "1.2.60", JobKind.EXPORT, "PACS")
    flying = _enqueue(queue, "1.2.60", JobKind.EXPORT, "VNA")
    other_study = _enqueue(queue, "1.2.61", JobKind.EXPORT, "PACS")
    first = queue.claim("w1", lease_seconds=60)
    assert first is not None and first.id == done
    with queue.database.session() as session:
        queue.mark_succeeded(session, done, "w1")
    second = queue.claim("w2", lease_seconds=60)
    assert second is not None and second.id == flying  # still sending the old result
    with queue.database.session() as session:
        count = queue.requeue_exports(
            session, study_instance_uid="1.2.60", model_name="cxr-default", model_version="1.0.0"
        )
    assert count == 2
    # The attempt in flight read the old objects: it can no longer mark the job done.
    with pytest.raises(LeaseLostError), queue.database.session() as session:
        queue.mark_succeeded(session, flying, "w2")
    states = {j: queue.get(j).state for j in (done, flying, other_study)}  # type: ignore[union-attr]
    assert states == {done: "queued", flying: "queued", other_study: "queued"}
