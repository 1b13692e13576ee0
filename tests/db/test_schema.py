"""Schema versions: a new database is created at the head revision, the baseline
migration makes exactly the models' schema, and other versions are refused or upgraded."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

# Every package's tables, registered on the one Base.
import overread.audit.schema
import overread.security.schema
import overread.service.db
import overread.service.monitor.store
import overread.service.release_gate
import overread.service.rollout
import overread.triage.schema  # noqa: F401
from overread.db import Base, Database, SchemaState, head_revision, schema_status, upgrade_schema
from overread.db.schema import BASELINE_TABLES
from overread.errors import DatabaseSchemaError

#: Tables later revisions add to the baseline's.
LATER_TABLES = frozenset(
    {
        "hl7_orders",
        "model_rollouts",
        "model_rollout_results",
        "model_kill_switches",
        "model_cohorts",
        "alert_findings",
        "alert_notes",
        "result_reviews",
        "study_observations",
        "monitoring_alerts",
        "monitoring_points",
        "alert_notices",
    }
)


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def _set_revision(engine: sa.Engine, revision: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


def _previous_release(url: str, *, only: set[str] | None = None) -> None:
    """Tables as the release before schema versioning made them: create_all, no version."""
    engine = sa.create_engine(url)
    tables = [t for name, t in Base.metadata.tables.items() if name in (only or BASELINE_TABLES)]
    Base.metadata.create_all(engine, tables=tables)
    engine.dispose()


def test_head_is_a_sequence_number() -> None:
    # An older overread tells "newer" from "unknown" by the number.
    assert head_revision().isdigit() and len(head_revision()) == 4


def test_the_models_declare_exactly_the_baseline_and_later_tables() -> None:
    assert set(Base.metadata.tables) == BASELINE_TABLES | LATER_TABLES


def test_new_database_is_created_at_head(empty_url: str) -> None:
    db = Database(empty_url)
    try:
        status = db.schema_status()
        assert status.state is SchemaState.CURRENT and status.revision == head_revision()
        assert _tables(db.engine) == BASELINE_TABLES | LATER_TABLES | {"alembic_version"}
        with db.engine.connect() as conn:
            head = conn.execute(sa.text("SELECT id, seq, hash FROM audit_chain_head")).all()
        assert [tuple(r) for r in head] == [(1, 0, "0" * 64)]
        # Opening it again changes nothing.
        Database(empty_url).dispose()
        assert db.schema_status().state is SchemaState.CURRENT
    finally:
        db.dispose()


def test_migrated_schema_equals_the_models(empty_url: str) -> None:
    """A model change without a migration fails here."""
    db = Database(empty_url)
    sqlite = db.dialect == "sqlite"

    def include(obj: Any, name: str | None, kind: str, reflected: bool, other: Any) -> bool:
        # SQLite's reflection drops the DESC of this expression index; its DDL is
        # compared exactly below instead.
        return not (sqlite and kind == "index" and name == "ix_worklist_order")

    try:
        with db.engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_object": include}
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        db.dispose()
    if sqlite:
        models = sa.create_engine(empty_url.replace("overread.db", "models.db"))
        Base.metadata.create_all(models)
        query = sa.text("SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'")
        with db.engine.connect() as a, models.connect() as b:
            migrated = {n: s for n, s in a.execute(query) if n != "alembic_version"}
            declared = {n: s for n, s in b.execute(query)}
        models.dispose()
        assert migrated == declared


@pytest.mark.parametrize(
    ("revision", "state", "message"),
    [
        ("9999", SchemaState.NEWER, "database schema 9999 is newer than this overread ({head}); "),
        (
            "0000",
            SchemaState.UNKNOWN,
            "database schema 0000 is unknown to this overread ({head}); ",
        ),
        ("a1b2c3", SchemaState.UNKNOWN, "database schema a1b2c3 is unknown to this overread"),
    ],
)
def test_newer_and_unknown_revisions_are_refused(
    empty_url: str, revision: str, state: SchemaState, message: str
) -> None:
    Database(empty_url).dispose()
    engine = sa.create_engine(empty_url)
    _set_revision(engine, revision)
    assert schema_status(engine).state is state
    with pytest.raises(DatabaseSchemaError) as refused:
        Database(empty_url)
    expected = message.format(head=head_revision())
    assert str(refused.value).startswith(expected) and "\n" not in str(refused.value)
    with pytest.raises(DatabaseSchemaError, match=f"database schema {revision} is"):
        upgrade_schema(engine)
    # Refusing changed nothing.
    assert schema_status(engine).revision == revision
    engine.dispose()


def test_unversioned_database_is_refused_then_adopted(empty_url: str) -> None:
    _previous_release(empty_url)
    engine = sa.create_engine(empty_url)
    assert schema_status(engine).state is SchemaState.UNVERSIONED
    with pytest.raises(DatabaseSchemaError, match="run `overread db upgrade`"):
        Database(empty_url)
    assert "alembic_version" not in _tables(engine)  # refusing wrote nothing
    before, after = upgrade_schema(engine)
    assert before.state is SchemaState.UNVERSIONED
    assert after.state is SchemaState.CURRENT and after.revision == head_revision()
    with engine.connect() as conn:
        head = conn.execute(sa.text("SELECT seq, hash FROM audit_chain_head")).all()
    assert [tuple(r) for r in head] == [(0, "0" * 64)]
    # Upgrading again is a no-op.
    again, _ = upgrade_schema(engine)
    assert again.state is SchemaState.CURRENT
    engine.dispose()
    Database(empty_url).dispose()


def test_partly_created_unversioned_database_gets_its_missing_tables(empty_url: str) -> None:
    # A release before triage existed: only the gateway's and the audit tables.
    _previous_release(empty_url, only={"instances", "studies", "jobs", "results", "audit_events"})
    engine = sa.create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO audit_events (seq, timestamp, actor, role, action, object_uids, "
                "details, prev_hash, hash) VALUES (1, '2026-01-01T00:00:00.000Z', 'a', '', "
                "'view', '[]', '{}', :prev, :hash)"
            ),
            {"prev": "0" * 64, "hash": "ab" * 32},
        )
    before, after = upgrade_schema(engine)
    assert before.state is SchemaState.UNVERSIONED and after.state is SchemaState.CURRENT
    assert _tables(engine) == BASELINE_TABLES | LATER_TABLES | {"alembic_version"}
    with engine.connect() as conn:
        head = conn.execute(sa.text("SELECT seq, hash FROM audit_chain_head")).all()
    assert [tuple(r) for r in head] == [(1, "ab" * 32)]  # the chain continues
    engine.dispose()


def test_unversioned_table_missing_a_column_is_not_adopted(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE users (id INTEGER PRIMARY KEY, username VARCHAR(64))"))
    with pytest.raises(DatabaseSchemaError, match="table users lacks column"):
        upgrade_schema(engine)
    assert _tables(engine) == {"users"}  # nothing created, no version recorded
    engine.dispose()


def test_other_applications_tables_do_not_make_a_database_unversioned(empty_url: str) -> None:
    engine = sa.create_engine(empty_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE someone_elses (id INTEGER PRIMARY KEY)"))
    assert schema_status(engine).state is SchemaState.EMPTY
    engine.dispose()
    Database(empty_url).dispose()


def test_processes_opening_a_new_database_at_once_create_it_once(empty_url: str) -> None:
    errors: list[BaseException] = []

    def open_it() -> None:
        try:
            Database(empty_url).dispose()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    engine = sa.create_engine(empty_url)
    with engine.connect() as conn:
        versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    assert [tuple(v) for v in versions] == [(head_revision(),)]
    engine.dispose()
