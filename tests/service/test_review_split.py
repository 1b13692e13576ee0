"""Only an edit carries a decision per finding: an accept or a reject applies to every
result of the study it names as it is, and one that carries decisions is refused (it
is never split so that a reject becomes another result's accept)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from overread.config import Settings
from overread.results import Decision, FindingResult, ModelRef, Prediction, ResultSummary
from overread.service.config import service_config
from overread.service.db import (
    Database,
    Job,
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
    result_version,
)
from overread.service.store import ObjectStore

STUDY = "1.2.826.0.1.3680043.8.498.19002"
READER = Reader("dr.split", "radiologist")


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[ReviewDesk, Database]]:
    database = Database(f"sqlite:///{tmp_path / 'overread.db'}")
    config = service_config(Settings(data_dir=tmp_path / "data"))
    store = ObjectStore(tmp_path / "store", fsync=False)
    yield ReviewDesk(config, database, store, JobQueue(database)), database
    database.dispose()


def _held(database: Database, model: str, label: str) -> int:
    """A held result of ``model`` with one positive finding ``label``."""
    prediction = Prediction(
        path=None,
        ok=True,
        model=ModelRef(model, "1.0"),
        findings=[FindingResult(label, 0.9, True, 0.5, 0.5)],
    )
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
            summary=ResultSummary(instances=(prediction,)).to_dict(),
            artifacts=[],
            created_at=now,
        )
        session.add(result)
        session.flush()
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
        return int(result.id)


def _states(database: Database) -> dict[int, str]:
    with database.session() as session:
        return {r.result_id: r.state for r in session.scalars(select(ResultReview)).all()}


@pytest.mark.parametrize("action", [ReviewAction.REJECT, ReviewAction.ACCEPT])
def test_an_accept_or_reject_with_decisions_is_refused_and_changes_nothing(
    setup: tuple[ReviewDesk, Database], action: ReviewAction
) -> None:
    desk, database = setup
    classifier = _held(database, "cxr", "Effusion")
    lung = _held(database, "cxr-lung", "lung-field")
    seen = {r.id: result_version(r, v) for r, v in desk.results_of(STUDY)}
    request = ReviewRequest(
        action=action,
        seen=seen,
        decisions={"lung-field": Decision.NEGATIVE},
        reason="wrong patient",
    )
    with pytest.raises(ReviewError, match="only with an edit"):
        desk.review(STUDY, request, READER)
    assert _states(database) == {classifier: "pending", lung: "pending"}


def test_a_reject_rejects_every_named_result(setup: tuple[ReviewDesk, Database]) -> None:
    desk, database = setup
    classifier = _held(database, "cxr", "Effusion")
    lung = _held(database, "cxr-lung", "lung-field")
    seen = {r.id: result_version(r, v) for r, v in desk.results_of(STUDY)}
    request = ReviewRequest(action=ReviewAction.REJECT, seen=seen, reason="wrong patient")
    outcomes = desk.review(STUDY, request, READER)
    assert sorted(o.state.value for o in outcomes) == ["rejected", "rejected"]
    assert _states(database) == {classifier: "rejected", lung: "rejected"}
