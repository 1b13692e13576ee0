"""Incremental rescoring: only rows whose score changed are rewritten, and the worklist
is the same, row by row, as if every unread row had been rescored."""

from __future__ import annotations

import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from overread.service.db import Database
from overread.triage import (
    ReadState,
    StudyContext,
    TriageConfig,
    WorklistItem,
    refresh_scores,
    score_study,
    set_read_state,
    upsert_study,
)
from overread.triage.score import score_changes_at

from .conftest import NOW, F, _open

LABELS = ("Pneumothorax", "Edema", "Cardiomegaly", "Pleural Effusion", "No Finding")
DEPARTMENTS = ("ED", "ICU", "outpatient", "")


def _config(step: float, rate: float, cap: float) -> TriageConfig:
    return TriageConfig.model_validate(
        {
            "weights": {
                "waiting_step_minutes": step,
                "points_per_waiting_hour": rate,
                "max_waiting_points": cap,
            }
        }
    )


def _rows(db: Database) -> dict[str, tuple[Any, ...]]:
    with db.session() as session:
        items = session.execute(select(WorklistItem)).scalars().all()
        return {
            i.study_instance_uid: (i.state, i.score, i.breakdown, i.priority, i.rescore_at)
            for i in items
        }


def _random_moment(rng: random.Random, now: Any) -> Any:
    # Whole steps (a row falls due exactly now), odd seconds and microseconds.
    return now - timedelta(
        minutes=rng.choice((0, 5, 10, 25, 60, 90)) + rng.randint(0, 40),
        seconds=rng.choice((0, 0, rng.randint(0, 59))),
        microseconds=rng.choice((0, rng.randint(0, 999_999))),
    )


@pytest.mark.parametrize(
    ("seed", "step", "rate", "cap"),
    [(1, 5.0, 2.0, 24.0), (2, 5.0, 6.0, 1.5), (3, 7.5, 2.0, 3.0), (4, 0.0, 2.0, 1.0)],
)
def test_incremental_rescoring_equals_a_full_rescore_row_by_row(
    tmp_path: Path, seed: int, step: float, rate: float, cap: float
) -> None:
    config = _config(step, rate, cap)
    incremental = _open(f"sqlite:///{tmp_path / 'incremental.db'}")
    full = _open(f"sqlite:///{tmp_path / 'full.db'}")
    rng = random.Random(seed)
    now = NOW
    uids = [f"1.{i}" for i in range(24)]
    skipped = 0
    try:
        for _ in range(160):
            action = rng.random()
            if action < 0.35:
                uid = rng.choice(uids)
                findings = [
                    F(rng.choice(LABELS), rng.random(), rng.random() < 0.5, rng.random())
                    for _ in range(rng.randint(0, 3))
                ]
                context = StudyContext(
                    rng.choice(DEPARTMENTS),
                    rng.choice((None, 8.0, 50.0, 80.0)),
                    _random_moment(rng, now),
                )
                for db in (incremental, full):
                    with db.session() as session:
                        upsert_study(session, uid, findings, context, config, now=now)
            elif action < 0.5:
                uid = rng.choice(uids)
                state = rng.choice(list(ReadState))
                for db in (incremental, full):
                    with db.session() as session:
                        if session.execute(
                            select(WorklistItem.id).where(WorklistItem.study_instance_uid == uid)
                        ).first():
                            set_read_state(session, uid, state, reader="dr.r", now=now)
            else:
                # The clock moves on: seconds, a step exactly, or hours (caps reached).
                now += rng.choice(
                    (
                        timedelta(seconds=rng.randint(1, 90)),
                        timedelta(minutes=step or 5),
                        timedelta(minutes=rng.randint(1, 30), microseconds=rng.randint(0, 999)),
                        timedelta(hours=rng.randint(1, 4)),
                    )
                )
                with incremental.session() as session:
                    done = refresh_scores(session, config, now=now)
                with full.session() as session:
                    everything = refresh_scores(session, config, now=now, full=True)
                assert done <= everything
                skipped += everything - done
                a, b = _rows(incremental), _rows(full)
                assert a.keys() == b.keys()
                for uid in a:
                    # State, score, breakdown, band and next change: identical.
                    assert a[uid] == b[uid], uid
        # The point of it: most rows were left alone.
        if step > 0:
            assert skipped > 0
    finally:
        incremental.dispose()
        full.dispose()


def test_a_row_is_rescored_only_when_its_wait_crosses_a_step(db: Database) -> None:
    config = _config(5.0, 2.0, 24.0)
    received = NOW - timedelta(minutes=12, seconds=30)
    with db.session() as session:
        upsert_study(
            session, "2.1", [F("Edema", 0.6)], StudyContext("ICU", 60, received), config, now=NOW
        )
        item = session.execute(select(WorklistItem)).scalar_one()
        assert item.rescore_at == received + timedelta(minutes=15)
        first = item.score
    with db.session() as session:
        assert refresh_scores(session, config, now=NOW + timedelta(minutes=2)) == 0
        assert refresh_scores(session, config, now=NOW + timedelta(minutes=2, seconds=30)) == 1
        item = session.execute(select(WorklistItem)).scalar_one()
        assert item.score == pytest.approx(first + 2.0 * 5 / 60)
        assert item.rescore_at == received + timedelta(minutes=20)
        # A read study is not rescored; back to unread, it is (its step passed meanwhile).
        set_read_state(session, "2.1", ReadState.READ, reader="dr.r", now=NOW)
        assert refresh_scores(session, config, now=NOW + timedelta(minutes=30)) == 0
        set_read_state(session, "2.1", ReadState.UNREAD, reader="dr.r", now=NOW)
        assert refresh_scores(session, config, now=NOW + timedelta(minutes=30)) == 1
        # A clock that went back rescores the rows scored "later" than now.
        assert refresh_scores(session, config, now=NOW) == 1
        assert session.execute(select(WorklistItem)).scalar_one().score == pytest.approx(first)


def test_capped_waiting_is_never_rescored_and_says_so() -> None:
    weights = _config(5.0, 2.0, 3.0).weights
    context = StudyContext(received_at=NOW - timedelta(hours=2))
    assert score_changes_at(context, weights, NOW) is None
    waiting = [t for t in score_study([], context, weights, now=NOW).terms]
    assert [(t.name, t.contribution, t.detail) for t in waiting] == [
        ("waiting", 3.0, "waited 1.50 h or more")
    ]
    # Continuous counting changes at every moment until the cap.
    continuous = _config(0.0, 2.0, 24.0).weights
    assert score_changes_at(context, continuous, NOW) == NOW


def test_a_study_given_no_arrival_time_waits_from_the_time_stored_for_it(db: Database) -> None:
    config = _config(5.0, 2.0, 24.0)
    with db.session() as session:
        upsert_study(
            session, "3.1", [F("Edema", 0.6)], StudyContext("ED", 60, None), config, now=NOW
        )
        item = session.execute(select(WorklistItem)).scalar_one()
        assert item.received_at == NOW and item.rescore_at == NOW + timedelta(minutes=5)
    later = NOW + timedelta(hours=1)
    with db.session() as session:
        assert refresh_scores(session, config, now=later) == 1
        incremental = session.execute(select(WorklistItem)).scalar_one().score
    with db.session() as session:
        refresh_scores(session, config, now=later, full=True)
        assert session.execute(select(WorklistItem)).scalar_one().score == incremental


@pytest.mark.parametrize("step", [1e-9, 0.001, 1441.0, 1e12])
def test_a_waiting_step_outside_one_second_to_a_day_is_refused(step: float) -> None:
    with pytest.raises(ValueError, match="waiting_step_minutes"):
        _config(step, 2.0, 24.0)
