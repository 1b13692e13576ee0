"""Study assembly and routing into jobs, driven directly (no network)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select, update

from overread.config import Settings
from overread.service.assembly import StudyAssembler
from overread.service.config import service_config
from overread.service.db import Database, Job, Study, StudyState
from overread.service.ingest import Ingestor
from overread.service.jobs import JobQueue
from overread.service.routing import InstanceFacts
from overread.service.runtime import RegistryPipelineProvider
from overread.service.store import ObjectStore

pytest.importorskip("overread.inference", reason="the inference pipeline is not importable")


@pytest.fixture
def parts(tmp_path: Path, database_url: str) -> tuple[StudyAssembler, Ingestor, JobQueue]:
    config = service_config(
        Settings(data_dir=tmp_path),
        database_url=database_url,
        stable_seconds=3600,
        destinations=["PACS=PACSAE@127.0.0.1:11113"],
    )
    database = Database(config.database_url)
    queue = JobQueue(database)
    assembler = StudyAssembler(config, database, queue, RegistryPipelineProvider())
    return assembler, Ingestor(database, ObjectStore(tmp_path / "objects")), queue


def _states(queue: JobQueue) -> list[str]:
    return [j.state for j in reversed(queue.list())]


def test_jobs_are_announced_while_receiving_then_queued_on_completion(
    parts: tuple[StudyAssembler, Ingestor, JobQueue], dx_factory: Callable[..., Path]
) -> None:
    assembler, ingestor, queue = parts
    study = generate_uid()
    ingestor.ingest_file(dx_factory(study_uid=study))
    assert assembler.sweep() == []  # not stable yet
    [job] = queue.list()
    assert job.state == "received" and job.model_name == "cxr-default"
    assert job.payload == {
        "alias": "cxr-default",
        "destinations": [
            {"name": "PACS", "ae_title": "PACSAE", "host": "127.0.0.1", "port": 11113}
        ],
    }
    assert queue.claim("w", lease_seconds=60) is None  # announced jobs never run
    assert assembler.complete_study(study) == [job.id]
    assert _states(queue) == ["queued"]
    assert assembler.complete_study(study) == []  # already complete: nothing happens
    claimed = queue.claim("w", lease_seconds=60)
    assert claimed is not None and claimed.id == job.id


def test_stable_time_completes_and_a_late_instance_does_not_duplicate_work(
    parts: tuple[StudyAssembler, Ingestor, JobQueue], dx_factory: Callable[..., Path]
) -> None:
    assembler, ingestor, queue = parts
    study = generate_uid()
    ingestor.ingest_file(dx_factory(study_uid=study))
    assembler.config.stable_seconds = 0  # every study is now past its stable time
    ids = assembler.sweep()
    assert len(ids) == 1 and _states(queue) == ["queued"]
    ingestor.ingest_file(dx_factory(study_uid=study))  # a late instance reopens the study
    with assembler.database.session() as session:
        assert session.scalar(select(Study.state)) == StudyState.RECEIVING.value
    assert assembler.sweep() == ids  # routed again: the same job, not a new one
    assert len(queue.list()) == 1


def test_a_study_matching_no_route_gets_no_job(
    parts: tuple[StudyAssembler, Ingestor, JobQueue], dx_factory: Callable[..., Path]
) -> None:
    assembler, ingestor, queue = parts
    study = generate_uid()
    ingestor.ingest_file(dx_factory(study_uid=study, body_part="HAND"))
    assert assembler.association_released({study}) == []  # no route: no early completion
    assert assembler.complete_study(study) == []
    with assembler.database.session() as session:
        assert session.scalar(select(Study.state)) == StudyState.ROUTED.value
    assert queue.list() == []


def test_a_study_completed_but_never_routed_is_recovered(
    parts: tuple[StudyAssembler, Ingestor, JobQueue], dx_factory: Callable[..., Path]
) -> None:
    assembler, ingestor, queue = parts
    study = generate_uid()
    ingestor.ingest_file(dx_factory(study_uid=study))
    with assembler.database.session() as session:  # as if the process died mid-way
        session.execute(update(Study).values(state=StudyState.COMPLETE.value))
    assert len(assembler.sweep()) == 1
    assert _states(queue) == ["queued"]
    with assembler.database.session() as session:
        assert session.scalar(select(Job.route)) == "chest-xray"


def test_completion_marks_complete_queues_and_routes_in_one_transaction(
    parts: tuple[StudyAssembler, Ingestor, JobQueue],
    dx_factory: Callable[..., Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assembler, ingestor, queue = parts
    study = generate_uid()
    ingestor.ingest_file(dx_factory(study_uid=study))
    opened = 0
    session = assembler.database.session

    def counting() -> object:
        nonlocal opened
        opened += 1
        return session()

    monkeypatch.setattr(assembler.database, "session", counting)
    planned = assembler._plan_jobs(study)  # reads only: the instances, then the rollouts
    reads = opened
    [job_id] = assembler.association_released([study])
    # One read of the study's arrivals and instances (which both the release rule and
    # the plan take), the plan's other reads, then one transaction marks, queues and
    # routes.
    assert opened - reads == 1 + (reads - 1) + 1
    monkeypatch.undo()
    assert planned and _states(queue) == ["queued"]
    with assembler.database.session() as session_:
        row = session_.scalars(select(Study)).one()
        assert row.state == StudyState.ROUTED.value
        assert row.complete_reason == "association-released" and row.completed_at is not None
    assert assembler.complete_study(study) == []  # routed already: nothing is written
    assert [j.id for j in queue.list()] == [job_id]


def test_a_study_completed_elsewhere_meanwhile_is_not_routed_twice(
    parts: tuple[StudyAssembler, Ingestor, JobQueue], dx_factory: Callable[..., Path]
) -> None:
    assembler, ingestor, queue = parts
    study = generate_uid()
    ingestor.ingest_file(dx_factory(study_uid=study))
    plan = assembler._plan_jobs

    def racing(uid: str, facts: list[InstanceFacts] | None = None) -> list[dict[str, object]]:
        planned = plan(uid, facts)
        # The stable-age sweep completes the study while this completion plans.
        with assembler.database.session() as session:
            session.execute(update(Study).values(state=StudyState.ROUTED.value))
        return planned

    assembler._plan_jobs = racing  # type: ignore[method-assign]
    assert assembler.complete_study(study) == []
    assert queue.list() == []


def test_an_instance_arriving_while_the_study_is_planned_is_routed(
    parts: tuple[StudyAssembler, Ingestor, JobQueue], dx_factory: Callable[..., Path]
) -> None:
    assembler, ingestor, queue = parts
    study = generate_uid()
    ingestor.ingest_file(dx_factory(study_uid=study, body_part="HAND"))  # matches no route
    plan = assembler._plan_jobs
    plans: list[int] = []

    def racing(uid: str, facts: list[InstanceFacts] | None = None) -> list[dict[str, object]]:
        planned = plan(uid, facts)
        plans.append(len(planned))
        if len(plans) == 1:  # a chest DX arrives while the hand alone is planned
            ingestor.ingest_file(dx_factory(study_uid=study))
        return planned

    assembler._plan_jobs = racing  # type: ignore[method-assign]
    job_ids = assembler.complete_study(study, reason="association-released")
    # The stale plan (no job) was not applied: the study was planned again with both.
    assert plans == [0, 1]
    assert [j.id for j in queue.list()] == job_ids and len(job_ids) == 1
    assert [j.model_name for j in queue.list()] == ["cxr-default"]
    with assembler.database.session() as session:
        row = session.scalars(select(Study)).one()
        assert (row.state, row.instance_count) == (StudyState.ROUTED.value, 2)


def test_a_study_that_keeps_receiving_while_planned_is_left_to_the_sweep(
    parts: tuple[StudyAssembler, Ingestor, JobQueue], dx_factory: Callable[..., Path]
) -> None:
    assembler, ingestor, queue = parts
    study = generate_uid()
    ingestor.ingest_file(dx_factory(study_uid=study, body_part="HAND"))
    plan = assembler._plan_jobs

    def racing(uid: str, facts: list[InstanceFacts] | None = None) -> list[dict[str, object]]:
        planned = plan(uid, facts)
        ingestor.ingest_file(dx_factory(study_uid=study))  # every plan is stale
        return planned

    assembler._plan_jobs = racing  # type: ignore[method-assign]
    assert assembler.complete_study(study) == []
    with assembler.database.session() as session:
        assert session.scalar(select(Study.state)) == StudyState.RECEIVING.value
    assembler._plan_jobs = plan  # type: ignore[method-assign]
    assembler.config.stable_seconds = 0
    [job_id] = assembler.sweep()
    assert [(j.id, j.state, j.model_name) for j in queue.list()] == [
        (job_id, "queued", "cxr-default")
    ]
