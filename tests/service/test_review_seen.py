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
from overread.service.db import Database, Job, Result, ResultReview, ReviewState, utcnow
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
from overread.service.rollout import RolloutResult, RolloutRole
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


def _result(database: Database, model: str, *, held: bool, shadow: bool = False) -> int:
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
        if shadow:
            session.add(
                RolloutResult(
                    result_id=result.id,
                    alias="cxr-default",
                    role=RolloutRole.SHADOW.value,
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
