"""Monitoring in the service: observations per analysed image, routed monitoring alerts,
the last run's daily figures, and what a non-study alert says.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

Adds four tables and changes none: ``study_observations`` (one monitoring
observation per analysed image), ``monitoring_alerts`` (the monitoring alerts routed,
against duplicates), ``monitoring_points`` (each run's daily drift and AUC figures)
and ``alert_notices`` (the kind, subject and message of an alert that concerns no
study). The tables are declared here, frozen, as the models declared them when this
revision was written.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_observations",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("result_id", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(64), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("study_date", sa.Date(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_study_observations_result_id", "study_observations", ["result_id"])
    op.create_index(
        "ix_study_observations_study_instance_uid", "study_observations", ["study_instance_uid"]
    )
    op.create_index("ix_study_observations_date_site", "study_observations", ["study_date", "site"])
    op.create_table(
        "monitoring_alerts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("alert_date", sa.Date(), nullable=False),
        sa.Column("statistic", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("triage_alert_id", sa.Integer(), nullable=True),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_monitoring_alerts_alert_date", "monitoring_alerts", ["alert_date"])
    op.create_table(
        "monitoring_points",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("point_date", sa.Date(), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("site", sa.String(64), nullable=False),
        sa.Column("label", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("data", sa.JSON(), nullable=False),
    )
    op.create_index("ix_monitoring_points_kind_date", "monitoring_points", ["kind", "point_date"])
    op.create_table(
        "alert_notices",
        sa.Column("alert_id", sa.Integer(), sa.ForeignKey("alerts.id"), primary_key=True),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(200), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("alert_notices")
    op.drop_table("monitoring_points")
    op.drop_table("monitoring_alerts")
    op.drop_table("study_observations")
