"""Worklist bands and closed-loop alerts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05

``worklist_items`` gains ``priority`` (the reading band: 0 routine, 1 urgent,
2 critical) and ``priority_source`` (who set it), and its order index puts the band
before the score. Existing rows with a critical finding start in the critical band.
Two tables are added: ``alert_findings`` (every critical finding of an alert, so one
study's findings share one alert) and ``alert_notes`` (acknowledgements with who was
told and a note, and closures). Columns or tables already present (a database
created from the current models) are left as they are.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_COLUMNS = ("priority", "priority_source")


def _dt(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, length: int, **kw: Any) -> sa.Column[Any]:
    kw.setdefault("nullable", False)
    return sa.Column(name, sa.String(length), **kw)


def _worklist_items() -> list[Any]:
    """The ``worklist_items`` table as of this revision (frozen here)."""
    return [
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _str("study_instance_uid", 64, unique=True),
        _str("sop_instance_uid", 64),
        _str("path", 1024),
        _str("patient_id", 64),
        _str("department", 64),
        sa.Column("patient_age", sa.Float(), nullable=True),
        _dt("received_at", nullable=True),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("breakdown", sa.JSON(), nullable=False),
        sa.Column("findings", sa.JSON(), nullable=False),
        sa.Column("has_critical", sa.Boolean(), nullable=False),
        sa.Column("critical_findings", sa.JSON(), nullable=False),
        _str("model_name", 128),
        _str("model_version", 64),
        _str("state", 16),
        _str("reader", 128),
        _dt("scored_at"),
        _dt("updated_at"),
        sa.Column("priority", sa.Integer(), nullable=False),
        _str("priority_source", 16),
    ]


def _present(table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns(table)}


def _tables() -> set[str]:
    return set(sa.inspect(op.get_bind()).get_table_names())


def _order_index() -> None:
    op.create_index(
        "ix_worklist_order",
        "worklist_items",
        ["state", sa.text("priority DESC"), sa.text("score DESC"), "received_at", "id"],
    )


def _band_columns() -> None:
    missing = [name for name in _COLUMNS if name not in _present("worklist_items")]
    if not missing:
        return
    if op.get_bind().dialect.name != "sqlite":
        op.add_column(
            "worklist_items",
            sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
        )
        op.add_column(
            "worklist_items",
            sa.Column("priority_source", sa.String(16), nullable=False, server_default=""),
        )
        op.alter_column("worklist_items", "priority", server_default=None)
        op.alter_column("worklist_items", "priority_source", server_default=None)
        op.execute(
            "UPDATE worklist_items SET priority = 2, priority_source = 'ai' WHERE has_critical"
        )
        op.drop_index("ix_worklist_order", table_name="worklist_items")
        _order_index()
        return
    # SQLite keeps each table's CREATE statement as text: the table is rebuilt, so its
    # definition is exactly the one a new database gets from the models.
    kept = ", ".join(c.name for c in _worklist_items() if c.name not in _COLUMNS)
    for name in (
        "ix_worklist_order",
        "ix_worklist_items_department",
        "ix_worklist_items_score",
        "ix_worklist_items_has_critical",
    ):
        op.drop_index(name, table_name="worklist_items")
    op.rename_table("worklist_items", "_worklist_items_before_0006")
    op.create_table("worklist_items", *_worklist_items())
    op.create_index("ix_worklist_items_department", "worklist_items", ["department"])
    op.create_index("ix_worklist_items_score", "worklist_items", ["score"])
    op.create_index("ix_worklist_items_has_critical", "worklist_items", ["has_critical"])
    _order_index()
    op.execute(
        f"INSERT INTO worklist_items ({kept}, priority, priority_source) "
        f"SELECT {kept}, CASE WHEN has_critical THEN 2 ELSE 0 END, "
        "CASE WHEN has_critical THEN 'ai' ELSE '' END FROM _worklist_items_before_0006"
    )
    op.drop_table("_worklist_items_before_0006")


def upgrade() -> None:
    _band_columns()
    tables = _tables()
    if "alert_findings" not in tables:
        op.create_table(
            "alert_findings",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column(
                "alert_id", sa.Integer(), sa.ForeignKey("alerts.id"), nullable=False, index=True
            ),
            _str("finding", 64),
            sa.Column("probability", sa.Float(), nullable=False),
            sa.Column("threshold", sa.Float(), nullable=False),
            _dt("added_at"),
        )
        # Alerts raised before grouping had one finding each.
        op.execute(
            "INSERT INTO alert_findings (alert_id, finding, probability, threshold, added_at) "
            "SELECT id, finding, probability, threshold, raised_at FROM alerts"
        )
    if "alert_notes" not in tables:
        op.create_table(
            "alert_notes",
            sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
            sa.Column(
                "alert_id", sa.Integer(), sa.ForeignKey("alerts.id"), nullable=False, index=True
            ),
            _str("event", 16),
            _str("actor", 128),
            _str("communicated_to", 256),
            sa.Column("note", sa.Text(), nullable=False),
            _dt("created_at"),
        )


def downgrade() -> None:
    tables = _tables()
    for table in ("alert_notes", "alert_findings"):
        if table in tables:
            op.drop_table(table)
    present = _present("worklist_items")
    op.drop_index("ix_worklist_order", table_name="worklist_items")
    with op.batch_alter_table("worklist_items") as batch:
        for name in _COLUMNS:
            if name in present:
                batch.drop_column(name)
    op.create_index(
        "ix_worklist_order",
        "worklist_items",
        ["state", sa.text("score DESC"), "received_at", "id"],
    )
