"""The worklist table and its queries (SQLite; PostgreSQL with the service marker)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from overread.errors import ConfigError
from overread.service.db import Database
from overread.triage import (
    ReadState,
    StudyContext,
    TriageConfig,
    WorklistItem,
    claim_next,
    get_item,
    query_worklist,
    refresh_scores,
    set_read_state,
    upsert_study,
)

from .conftest import NOW, F

CONFIG = TriageConfig()


def _fill(db: Database) -> None:
    studies = [
        ("1.1", [F("Pneumothorax", 0.95, True)], StudyContext("ED", 40, NOW)),
        ("1.2", [F("Pneumothorax", 0.95, True)], StudyContext("outpatient", 40, NOW)),
        ("1.3", [F("Cardiomegaly", 0.8, True)], StudyContext("ICU", 50, NOW)),
        ("1.4", [F("No Finding", 0.9, True)], StudyContext("outpatient", 30, NOW)),
        ("1.5", [F("Pleural Effusion", 0.95, True)], StudyContext("ED", 85, NOW)),
    ]
    with db.session() as session:
        for uid, findings, context in studies:
            upsert_study(session, uid, findings, context, CONFIG, now=NOW)


def _uids(page: object) -> list[str]:
    return [i.study_instance_uid for i in page.items]  # type: ignore[attr-defined]


def _check_queries(db: Database) -> None:
    _fill(db)
    with db.session() as session:
        page = query_worklist(session)
        assert page.total == 5
        assert _uids(page) == ["1.1", "1.2", "1.5", "1.3", "1.4"]
        scores = [i.score for i in page.items]
        assert scores == sorted(scores, reverse=True)
        assert _uids(query_worklist(session, limit=2, offset=2)) == ["1.5", "1.3"]
        assert query_worklist(session, limit=2, offset=4).total == 5
        assert _uids(query_worklist(session, department="ed")) == ["1.1", "1.5"]
        assert _uids(query_worklist(session, has_critical=True)) == ["1.1", "1.2", "1.5"]
        assert _uids(query_worklist(session, has_critical=False)) == ["1.3", "1.4"]
        assert _uids(query_worklist(session, min_score=60)) == ["1.1", "1.2", "1.5"]
        set_read_state(session, "1.1", ReadState.READ, reader="dr.a", now=NOW)
        set_read_state(session, "1.2", "in-progress", reader="dr.b", now=NOW)
        assert _uids(query_worklist(session, state="unread")) == ["1.5", "1.3", "1.4"]
        both = query_worklist(session, state=["unread", "in-progress"], has_critical=True)
        assert _uids(both) == ["1.2", "1.5"]


def test_worklist_queries_sqlite(db: Database) -> None:
    _check_queries(db)


@pytest.mark.service
def test_worklist_queries_postgresql(pg_db: Database) -> None:
    _check_queries(pg_db)


def test_row_stores_breakdown_and_critical_findings(db: Database) -> None:
    with db.session() as session:
        upsert_study(
            session,
            "2.1",
            [F("Pneumothorax", 0.8, True, 0.1), F("Pleural Effusion", 0.95, True)],
            StudyContext("ED", 80, NOW - timedelta(hours=1)),
            CONFIG,
            now=NOW,
            sop_instance_uid="2.1.1",
            path="p/1.dcm",
        )
    with db.session() as session:
        item = get_item(session, "2.1")
        assert item.has_critical
        assert item.critical_findings == ["Pneumothorax", "Pleural Effusion"]
        names = [t["name"] for t in item.breakdown]
        assert names[0] == "finding:Pleural Effusion" or names[0] == "finding:Pneumothorax"
        assert {"department", "age", "waiting"} <= set(names)
        assert sum(t["contribution"] for t in item.breakdown) == pytest.approx(item.score, abs=1e-3)
        assert item.findings[0]["threshold"] == 0.5


def test_rescoring_keeps_the_reading_state_and_waiting_raises_the_score(db: Database) -> None:
    with db.session() as session:
        upsert_study(
            session, "3.1", [F("Edema", 0.6)], StudyContext("ICU", 60, NOW), CONFIG, now=NOW
        )
        set_read_state(session, "3.1", "in-progress", reader="dr.c", now=NOW)
        first = get_item(session, "3.1").score
    with db.session() as session:
        assert refresh_scores(session, CONFIG, now=NOW + timedelta(hours=3)) == 1
    with db.session() as session:
        item = get_item(session, "3.1")
        assert item.score == pytest.approx(first + 6.0)
        upsert_study(
            session, "3.1", [F("Edema", 0.9)], StudyContext("ICU", 60, NOW), CONFIG, now=NOW
        )
    with db.session() as session:
        rows = session.execute(select(WorklistItem)).scalars().all()
        assert len(rows) == 1 and rows[0].state == "in-progress"


def test_bad_requests_are_refused(db: Database) -> None:
    with db.session() as session:
        with pytest.raises(ConfigError, match="unknown reading state 'done'"):
            upsert_study(session, "4.1", [], StudyContext(), CONFIG, now=NOW)
            set_read_state(session, "4.1", "done", reader="x", now=NOW)
        with pytest.raises(KeyError, match=r"9\.9"):
            get_item(session, "9.9")
        with pytest.raises(ConfigError, match="invalid page"):
            query_worklist(session, limit=0)


def test_claim_next_hands_out_the_top_unread_study(db: Database) -> None:
    _fill(db)
    with db.session() as session:
        first = claim_next(session, reader="dr.a", now=NOW)
        second = claim_next(session, reader="dr.b", now=NOW)
        assert first is not None and second is not None
        assert (first.study_instance_uid, first.state, first.reader) == (
            "1.1",
            "in-progress",
            "dr.a",
        )
        assert second.study_instance_uid == "1.2"
        ed = claim_next(session, reader="dr.c", now=NOW, department="ED")
        assert ed is not None and ed.study_instance_uid == "1.5"
        plain = claim_next(session, reader="dr.c", now=NOW, has_critical=False)
        assert plain is not None and plain.study_instance_uid == "1.3"
        assert claim_next(session, reader="dr.c", now=NOW) is not None
        assert claim_next(session, reader="dr.c", now=NOW) is None
        with pytest.raises(ConfigError, match="name of the reader"):
            claim_next(session, reader="", now=NOW)
