"""HL7 orders: imaging orders received by HL7 v2 (ORM^O01, OMI^O23), one per accession
number, and whether each is linked to a study.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-05

The table is declared here, frozen, as the model declared it when this revision was
written. A database that already has it (made by ``create_all``) is left as it is.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _str(name: str, length: int, *, nullable: bool = False, **kw: object) -> sa.Column[str]:
    return sa.Column(name, sa.String(length), nullable=nullable, **kw)  # type: ignore[arg-type]


def orders_table(meta: sa.MetaData) -> sa.Table:
    """``hl7_orders`` as this revision makes it."""
    return sa.Table(
        "hl7_orders",
        meta,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        _str("accession_number", 64, unique=True),
        _str("patient_id", 64),
        _str("issuer_of_patient_id", 64),
        _str("patient_name", 256),
        _str("placer_order_number", 64),
        _str("filler_order_number", 64),
        _str("order_control", 4),
        _str("service_code", 256),
        _str("message_type", 16),
        _str("control_id", 199),
        _str("sending_application", 128),
        _str("sending_facility", 128),
        _str("study_instance_uid", 64, nullable=True, index=True),
        _str("match", 24),
        sa.Column("match_note", sa.Text(), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("matched_at", sa.DateTime(timezone=True), nullable=True),
    )


def upgrade() -> None:
    meta = sa.MetaData()
    orders_table(meta)
    meta.create_all(op.get_bind(), checkfirst=True)


def downgrade() -> None:
    op.drop_table("hl7_orders")
