"""A verdict names the results the reader saw: the review desk refuses it when the
study's results changed since (a new result, a re-read, another reader's review), and
a shadow model's result is neither reviewed nor counted."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from overread.config import Settings
from overread.service.config import service_config
from overread.service.db import (
    Database,
    Job,
    JobKind,
    JobState,
    Result,
    ResultReview,
    ReviewState,
    utcnow,
)
from overread.service.jobs import JobQueue
from overread.service.review import (
    Reader,
    ReviewAction,
    ReviewDesk,
    ReviewError,
    ReviewRequest,
    ReviewStaleError,
    result_version,
)
from overread.service.rollout import RolloutResult, RolloutRole, RolloutState, RolloutStore
from overread.service.store import ObjectStore

STUDY = "1.2.826.0.1.3680043.8.498.19001"
READER = Reader("dr.seen", "radiologist")


@dataclass
class Desk:
    desk: ReviewDesk
    database: Database


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    database = Database(f"sqlite:///{tmp_path / 'overread.db'}")
    config = service_config(Settings(data_dir=tmp_path / "data"))
    store = ObjectStore(tmp_path / "store", fsync=False)
    yield Desk(ReviewDesk(config, database, store, JobQueue(database)), database)
    database.dispose()


def _result(
    database: Database, model: str, *, held: bool, shadow: bool = False, canary: bool = False
) -> int:
    now = utcnow()
    with database.session() as session:
        job = Job(
            study_instance_uid=STUDY,
            model_name=model,
            model_version="1.0",
            kind="infer",
            route="chest-xray",
        )
        session.add(job)
        session.flush()
        result = Result(
            job_id=job.id,
            study_instance_uid=STUDY,
            model_name=model,
            model_version="1.0",
            summary={},
            artifacts=[],
            created_at=now,
        )
        session.add(result)
        session.flush()
        if held:
            session.add(
                ResultReview(
                    result_id=result.id,
                    study_instance_uid=STUDY,
                    route="chest-xray",
                    state=ReviewState.PENDING.value,
                    held=True,
                    created_at=now,
                    updated_at=now,
                )
            )
        if shadow or canary:
            session.add(
                RolloutResult(
                    result_id=result.id,
                    alias="cxr-default",
                    role=(RolloutRole.SHADOW if shadow else RolloutRole.CANARY).value,
                    study_instance_uid=STUDY,
                )
            )
        return int(result.id)


def _seen(desk: Desk) -> dict[int, str]:
    return {r.id: result_version(r, v) for r, v in desk.desk.results_of(STUDY)}


def _reject(seen: dict[int, str]) -> ReviewRequest:
    return ReviewRequest(action=ReviewAction.REJECT, seen=seen, reason="motion")


def _states(database: Database) -> dict[int, str]:
    with database.session() as session:
        return {r.result_id: r.state for r in session.scalars(select(ResultReview)).all()}


def test_a_verdict_must_name_the_results_it_is_about(desk: Desk) -> None:
    first = _result(desk.database, "cxr", held=True)
    with pytest.raises(ReviewError, match="names the results"):
        desk.desk.review(STUDY, _reject({}), READER)
    assert _states(desk.database) == {first: "pending"}


def test_a_result_that_arrived_after_the_page_refuses_the_verdict(desk: Desk) -> None:
    first = _result(desk.database, "cxr", held=True)
    seen = _seen(desk)
    second = _result(desk.database, "cxr-other", held=True)  # arrives while the reader looks
    with pytest.raises(ReviewStaleError, match=f"new result {second}"):
        desk.desk.review(STUDY, _reject(seen), READER)
    # Neither the seen result nor the unseen one was rejected.
    assert _states(desk.database) == {first: "pending", second: "pending"}
    # With both seen, the verdict applies to both.
    done = desk.desk.review(STUDY, _reject(_seen(desk)), READER)
    assert sorted(o.result_id for o in done) == sorted([first, second])
    assert set(_states(desk.database).values()) == {"rejected"}


def test_a_re_read_or_another_readers_review_refuses_the_verdict(desk: Desk) -> None:
    first = _result(desk.database, "cxr", held=True)
    seen = _seen(desk)
    with desk.database.session() as session:  # read again in place ("analyse anyway")
        row = session.get(Result, first)
        assert row is not None
        row.created_at = row.created_at + timedelta(seconds=5)
    with pytest.raises(ReviewStaleError, match=f"result {first} read again"):
        desk.desk.review(STUDY, _reject(seen), READER)
    seen = _seen(desk)
    with desk.database.session() as session:  # another reader's review meanwhile
        review = session.scalar(select(ResultReview))
        assert review is not None
        review.version = 1
    with pytest.raises(ReviewStaleError, match="reload the study"):
        desk.desk.review(STUDY, _reject(seen), READER)
    assert _states(desk.database) == {first: "pending"}


def test_a_result_that_is_gone_refuses_the_verdict(desk: Desk) -> None:
    first = _result(desk.database, "cxr", held=True)
    second = _result(desk.database, "cxr-other", held=True)
    seen = _seen(desk)
    with desk.database.session() as session:
        session.delete(session.get(Result, second))
    with pytest.raises(ReviewStaleError, match=f"result {second} no longer stored"):
        desk.desk.review(STUDY, _reject(seen), READER)
    assert _states(desk.database)[first] == "pending"


def test_a_shadow_result_is_not_reviewed(desk: Desk) -> None:
    first = _result(desk.database, "cxr", held=True)
    shadow = _result(desk.database, "cxr-candidate", held=True, shadow=True)
    assert [r.id for r, _ in desk.desk.results_of(STUDY)] == [first]
    seen = _seen(desk)
    assert shadow not in seen
    [outcome] = desk.desk.review(STUDY, _reject(seen), READER)
    assert outcome.result_id == first
    assert _states(desk.database) == {first: "rejected", shadow: "pending"}


def test_a_rolled_back_canary_result_is_not_reviewed(desk: Desk) -> None:
    rollouts = RolloutStore(desk.database, critical={})
    rollouts.start(
        "cxr-default",
        active_ref="cxr@1.0",
        candidate_ref="cxr-candidate@1.0",
        state=RolloutState.CANARY,
        actor="t",
        canary_share=0.5,
    )
    canary = _result(desk.database, "cxr-candidate", held=True, canary=True)
    assert [r.id for r, _ in desk.desk.results_of(STUDY)] == [canary]  # still open
    rollouts.end("cxr-default", RolloutState.ROLLED_BACK, actor="t")
    active = _result(desk.database, "cxr", held=True)  # the study re-routed
    # Left out even after a later rollout replaces the alias's current row.
    rollouts.start(
        "cxr-default",
        active_ref="cxr@1.0",
        candidate_ref="cxr-next@1.0",
        state=RolloutState.CANARY,
        actor="t",
        canary_share=0.5,
    )
    assert [r.id for r, _ in desk.desk.results_of(STUDY)] == [active]
    seen = _seen(desk)
    assert canary not in seen
    [outcome] = desk.desk.review(STUDY, _reject(seen), READER)
    assert outcome.result_id == active
    assert _states(desk.database) == {active: "rejected", canary: "pending"}


def test_a_correction_requeues_only_exports_sent_or_given_up_on(desk: Desk) -> None:
    first = _result(desk.database, "cxr", held=False)
    states = [s for s in JobState if s is not JobState.QUEUED and s is not JobState.RECEIVED]
    with desk.database.session() as session:
        jobs = {}
        for state in states:
            job = Job(
                study_instance_uid=STUDY,
                model_name="cxr",
                model_version="1.0",
                kind=JobKind.EXPORT.value,
                route="chest-xray",
                destination=f"D-{state.value}",
                state=state.value,
                payload={"fhir_endpoint": "EHR", "result_id": first},
            )
            session.add(job)
            session.flush()
            jobs[state] = job.id
        result = session.get(Result, first)
        assert result is not None
        requeued = desk.desk._requeue_corrections(session, result, None)
    with desk.database.session() as session:
        after = {s: session.get(Job, i).state for s, i in jobs.items()}  # type: ignore[union-attr]
    sent_again = {JobState.SUCCEEDED, JobState.FAILED, JobState.DEAD_LETTERED}
    assert requeued == len(sent_again)
    assert after == {s: ("queued" if s in sent_again else s.value) for s in states}


def test_a_verdict_that_fails_on_one_result_applies_to_none(
    desk: Desk, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.service.review import ReviewConflictError

    first = _result(desk.database, "cxr", held=True)
    second = _result(desk.database, "cxr-other", held=True)
    seen = _seen(desk)
    reject = desk.desk._reject
    calls: list[int] = []

    def racing(result: Result, *args: object) -> object:
        if not calls:  # another reader reviews the other result meanwhile
            other = second if result.id == first else first
            with desk.database.session() as session:
                review = session.scalar(select(ResultReview).where(ResultReview.result_id == other))
                assert review is not None
                review.version = 1
        calls.append(result.id)
        return reject(result, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(desk.desk, "_reject", racing)
    with pytest.raises(ReviewConflictError, match="someone else"):
        desk.desk.review(STUDY, _reject(seen), READER)
    assert len(calls) == 2
    # The result rejected before the conflict is not left rejected on its own.
    assert _states(desk.database) == {first: "pending", second: "pending"}
