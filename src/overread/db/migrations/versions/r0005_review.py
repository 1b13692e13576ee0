"""Result reviews: a reader's accept, edit or reject of a result held for review, and
the verified versions of results that went out unverified.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

The table is declared here, frozen, as the model declared it when this revision was
written. A database that already has it (made by ``create_all``) is left as it is.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def _str(name: str, length: int, **kw: Any) -> sa.Column[Any]:
    kw.setdefault("nullable", False)
    return sa.Column(name, sa.String(length), **kw)


def _dt(name: str, *, nullable: bool = True) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def reviews_table(meta: sa.MetaData) -> sa.Table:
    """``result_reviews`` as this revision makes it."""
    return sa.Table(
        "result_reviews",
        meta,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("result_id", sa.Integer(), nullable=False, unique=True),
        _str("study_instance_uid", 64, index=True),
        _str("route", 128),
        _str("state", 16, index=True),
        sa.Column("held", sa.Boolean(), nullable=False),
        _str("report_status", 16),
        _dt("due_at"),
        _dt("escalated_at"),
        _str("reviewer", 128),
        _str("reviewer_role", 32),
        _str("organization", 64),
        _dt("reviewed_at"),
        sa.Column("decisions", sa.JSON(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        _dt("released_at"),
        sa.Column("superseded", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _dt("created_at", nullable=False),
        _dt("updated_at", nullable=False),
    )


def upgrade() -> None:
    meta = sa.MetaData()
    reviews_table(meta)
    meta.create_all(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    op.drop_table("result_reviews")
