"""Revision 0009: worklist rows gain ``rescore_at``; existing rows fall due at once."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command

import overread.service.db  # noqa: F401  (the tables)
from overread.db import upgrade_schema
from overread.db.schema import alembic_config

ROW = (
    "INSERT INTO worklist_items (study_instance_uid, sop_instance_uid, path, patient_id, "
    "department, patient_age, received_at, score, breakdown, findings, has_critical, "
    "critical_findings, model_name, model_version, state, reader, scored_at, updated_at, "
    "priority, priority_source) VALUES ('1.2.3', '', '', '', 'ED', 60, "
    "'2026-12-01 09:00:00.000000', 3.0, '[]', '[]', 0, '[]', '', '', 'unread', '', "
    "'2026-12-01 10:00:00.000000', '2026-12-01 10:00:00.000000', 0, '')"
)


def test_upgrade_makes_existing_rows_due_and_downgrade_keeps_them(tmp_path: Path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'old.db'}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "0008")
        conn.execute(sa.text(ROW))
    _, after = upgrade_schema(engine)
    assert int(after.revision) >= 9
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT scored_at, rescore_at FROM worklist_items")).one()
        assert row.rescore_at == row.scored_at
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("worklist_items")}
        assert {"ix_worklist_items_rescore_at", "ix_worklist_order"} <= indexes
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0008")
    with engine.connect() as conn:
        columns = {c["name"] for c in sa.inspect(conn).get_columns("worklist_items")}
        indexes = {i["name"] for i in sa.inspect(conn).get_indexes("worklist_items")}
        assert "rescore_at" not in columns and "ix_worklist_items_rescore_at" not in indexes
        assert conn.execute(sa.text("SELECT score FROM worklist_items")).scalar_one() == 3.0
    engine.dispose()
