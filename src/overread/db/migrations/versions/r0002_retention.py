"""Retention: when a study's images and results were deleted by the retention policy.

Revision ID: 0002_retention
Revises: 0001
Create Date: 2026-12-05

Two nullable columns on ``studies``: ``images_purged_at`` and ``results_purged_at``.
The study row stays when retention deletes its data, so the API and the viewer say
"images deleted by retention policy on DATE" rather than failing to find them. A
column already present (a database created from the current models) is left as is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_retention"
down_revision = "0001"
branch_labels = None
depends_on = None

_COLUMNS = ("images_purged_at", "results_purged_at")


def _present() -> set[str]:
    return {c["name"] for c in sa.inspect(op.get_bind()).get_columns("studies")}


def upgrade() -> None:
    present = _present()
    for name in _COLUMNS:
        if name not in present:
            op.add_column("studies", sa.Column(name, sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    present = _present()
    with op.batch_alter_table("studies") as batch:
        for name in _COLUMNS:
            if name in present:
                batch.drop_column(name)
