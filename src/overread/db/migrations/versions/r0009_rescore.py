"""Worklist rows say when their score next changes.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05

``worklist_items`` gains ``rescore_at`` (indexed): when waiting time next changes the
row's score, empty once the waiting points are capped. The periodic rescoring reads
only the rows due by then instead of every unread row. Existing rows get their
``scored_at``, so the first rescoring after the upgrade rescores each of them once.
On SQLite the table is rebuilt, so its definition is exactly the one a new database
gets from the models.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_INDEX = "ix_worklist_items_rescore_at"


def _dt(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, length: int, **kw: Any) -> sa.Column[Any]:
    kw.setdefault("nullable", False)
    return sa.Column(name, sa.String(length), **kw)


def _worklist_items(with_rescore_at: bool) -> list[Any]:
    """The ``worklist_items`` table as of this revision (frozen here)."""
    columns = [
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
    if with_rescore_at:
        columns.append(_dt("rescore_at", nullable=True))
    return columns


_INDEXES = (
    ("ix_worklist_items_department", ["department"]),
    ("ix_worklist_items_score", ["score"]),
    ("ix_worklist_items_has_critical", ["has_critical"]),
)


def _rebuild_sqlite(with_rescore_at: bool) -> None:
    kept = ", ".join(c.name for c in _worklist_items(False))
    for name, _ in _INDEXES:
        op.drop_index(name, table_name="worklist_items")
    op.drop_index("ix_worklist_order", table_name="worklist_items")
    if not with_rescore_at:
        op.drop_index(_INDEX, table_name="worklist_items")
    op.rename_table("worklist_items", "_worklist_items_before_0009")
    op.create_table("worklist_items", *_worklist_items(with_rescore_at))
    for name, columns in _INDEXES:
        op.create_index(name, "worklist_items", columns)
    op.create_index(
        "ix_worklist_order",
        "worklist_items",
        ["state", sa.text("priority DESC"), sa.text("score DESC"), "received_at", "id"],
    )
    if with_rescore_at:
        op.create_index(_INDEX, "worklist_items", ["rescore_at"])
        op.execute(
            f"INSERT INTO worklist_items ({kept}, rescore_at) "
            f"SELECT {kept}, scored_at FROM _worklist_items_before_0009"
        )
    else:
        op.execute(
            f"INSERT INTO worklist_items ({kept}) SELECT {kept} FROM _worklist_items_before_0009"
        )
    op.drop_table("_worklist_items_before_0009")


def _present() -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("worklist_items")}


def upgrade() -> None:
    if "rescore_at" in _present():  # a database created from the current models
        return
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(True)
        return
    op.add_column("worklist_items", _dt("rescore_at", nullable=True))
    op.create_index(_INDEX, "worklist_items", ["rescore_at"])
    op.execute("UPDATE worklist_items SET rescore_at = scored_at")


def downgrade() -> None:
    if "rescore_at" not in _present():
        return
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_sqlite(False)
        return
    op.drop_index(_INDEX, table_name="worklist_items")
    op.drop_column("worklist_items", "rescore_at")
