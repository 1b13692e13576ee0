"""A deleted result's (or job's) id is never handed out again: on SQLite the tables are
AUTOINCREMENT (revision 0008), on PostgreSQL sequences never go back."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command

import overread.service.db  # noqa: F401  (the tables)
from overread.db import Database, upgrade_schema
from overread.db.schema import alembic_config
from overread.service.db import Job, Result

STUDY = "1.2.826.0.1.3680043.8.498.8008"


def _result(db: Database, model: str) -> int:
    with db.session() as session:
        row = Result(
            job_id=1, study_instance_uid=STUDY, model_name=model, model_version="1", summary={}
        )
        session.add(row)
        session.flush()
        return int(row.id)


def _job(db: Database, model: str) -> int:
    with db.session() as session:
        row = Job(study_instance_uid=STUDY, model_name=model, model_version="1", kind="infer")
        session.add(row)
        session.flush()
        return int(row.id)


def test_the_id_of_a_deleted_result_or_job_is_not_reused(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        first, last = _result(db, "a"), _result(db, "b")
        job = _job(db, "a")
        with db.session() as session:
            session.execute(sa.delete(Result).where(Result.id == last))
            session.execute(sa.delete(Job).where(Job.id == job))
        assert _result(db, "c") > last > first
        assert _job(db, "b") > job
    finally:
        db.dispose()


def test_the_upgrade_keeps_the_rows_and_starts_above_every_referenced_id(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0007")
        conn.execute(
            sa.text(
                "INSERT INTO results (id, job_id, study_instance_uid, model_name, "
                "model_version, summary, artifacts, created_at) VALUES "
                "(1, 7, :s, 'a', '1', '{}', '[]', '2026-12-01 00:00:00'), "
                "(2, 7, :s, 'b', '1', '{}', '[]', '2026-12-01 00:00:00')"
            ),
            {"s": STUDY},
        )
        conn.execute(sa.text("DELETE FROM results WHERE id = 2"))
        # Result 3 was stored and deleted before the upgrade; its review row names it.
        conn.execute(
            sa.text(
                "INSERT INTO result_reviews (result_id, study_instance_uid, route, state, held, "
                "report_status, reviewer, reviewer_role, organization, decisions, note, reason, "
                "superseded, version, created_at, updated_at) VALUES (3, :s, '', 'pending', 1, "
                "'preliminary', '', '', '', '{}', '', '', '[]', 0, '2026-12-01 00:00:00', "
                "'2026-12-01 00:00:00')"
            ),
            {"s": STUDY},
        )
    before, after = upgrade_schema(engine)
    assert before.revision == "0007" and int(after.revision) >= 8
    with engine.connect() as conn:
        ddl = conn.execute(
            sa.text("SELECT sql FROM sqlite_master WHERE name IN ('results', 'jobs')")
        ).scalars()
        assert all("AUTOINCREMENT" in str(d) for d in ddl)
        assert conn.execute(sa.text("SELECT id, job_id FROM results")).all() == [(1, 7)]
        indexes = conn.execute(
            sa.text("SELECT name FROM sqlite_master WHERE type='index' AND tbl_name='results'")
        ).scalars()
        assert "ix_results_study_instance_uid" in set(indexes)
    engine.dispose()
    db = Database(url)
    try:
        assert _result(db, "c") == 4  # not 2 (deleted), not 3 (still named by a review)
        assert _job(db, "a") == 8  # above every job id a result names
    finally:
        db.dispose()
