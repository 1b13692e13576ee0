"""Retention: when a study's images and results were deleted by the retention policy.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Two nullable columns on ``studies``: ``images_purged_at`` and ``results_purged_at``.
The study row stays when retention deletes its data, so the API and the viewer say
"images deleted by retention policy on DATE" rather than failing to find them. A
column already present (a database created from the current models) is left as is.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_COLUMNS = ("images_purged_at", "results_purged_at")


def _present() -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("studies")}


def _studies() -> list[sa.Column[Any]]:
    """The ``studies`` columns as of this revision (frozen here, as the baseline's are)."""
    return [
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("instance_count", sa.Integer(), nullable=False),
        sa.Column("first_instance_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_instance_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("complete_reason", sa.String(32), nullable=False),
        *(sa.Column(c, sa.DateTime(timezone=True), nullable=True) for c in _COLUMNS),
    ]


def upgrade() -> None:
    missing = [name for name in _COLUMNS if name not in _present()]
    if not missing:
        return
    if op.get_bind().dialect.name != "sqlite":
        for name in missing:
            op.add_column("studies", sa.Column(name, sa.DateTime(timezone=True), nullable=True))
        return
    # SQLite keeps each table's CREATE statement as text, and ADD COLUMN edits that
    # text: the table is rebuilt instead, so its definition is exactly the one a new
    # database gets from the models.
    kept = ", ".join(c.name for c in _studies() if c.name not in _COLUMNS)
    op.drop_index("ix_studies_state", table_name="studies")
    op.rename_table("studies", "_studies_before_0004")
    op.create_table("studies", *_studies())
    op.create_index("ix_studies_state", "studies", ["state"])
    op.execute(f"INSERT INTO studies ({kept}) SELECT {kept} FROM _studies_before_0004")
    op.drop_table("_studies_before_0004")


def downgrade() -> None:
    present = _present()
    with op.batch_alter_table("studies") as batch:
        for name in _COLUMNS:
            if name in present:
                batch.drop_column(name)
