"""Model rollout: shadow/canary state per alias, result roles, kill switches, cohorts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05

Adds four tables and changes none: ``model_rollouts`` (one row per alias in or after
a rollout), ``model_rollout_results`` (which side of a rollout a result is on),
``model_kill_switches`` (engaged switches) and ``model_cohorts`` (labelled cohorts
registered for the release gate, with their files' hashes). The tables are declared
here, frozen, as the models declared them when this revision was written.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _dt(name: str) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "model_rollouts",
        sa.Column("alias", sa.String(64), primary_key=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("active_ref", sa.String(200), nullable=False),
        sa.Column("candidate_ref", sa.String(200), nullable=False),
        sa.Column("canary_share", sa.Integer(), nullable=False),
        sa.Column("bounds", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        _dt("started_at"),
        _dt("updated_at"),
    )
    op.create_table(
        "model_rollout_results",
        sa.Column("result_id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("alias", sa.String(64), nullable=False, index=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False, index=True),
        _dt("created_at"),
    )
    op.create_table(
        "model_kill_switches",
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        _dt("engaged_at"),
    )
    op.create_table(
        "model_cohorts",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("files", sa.JSON(), nullable=False),
        sa.Column("images", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        _dt("added_at"),
    )


def downgrade() -> None:
    for table in (
        "model_cohorts",
        "model_kill_switches",
        "model_rollout_results",
        "model_rollouts",
    ):
        op.drop_table(table)
