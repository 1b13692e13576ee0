"""Baseline: every table as the last release before schema versioning made it.

Revision ID: 0001
Revises:
Create Date: 2026-01-12

That release created missing tables on every start (``metadata.create_all``) and
recorded no version. This revision does the same: on an empty database it creates
every table; on a database that release made it creates only what is missing,
checks that the tables present have every column, and so adopts the database as the
baseline. The audit chain gets its one-row head (rebuilt from the newest event when
the events are already there).

The tables are declared here, frozen, rather than imported from the models: later
revisions change them, this one must keep making exactly the baseline.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op

from overread.errors import DatabaseSchemaError

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

GENESIS_HASH = "0" * 64
HEAD_ID = 1


def _dt(name: str, *, nullable: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _str(name: str, length: int, **kw: Any) -> sa.Column[Any]:
    kw.setdefault("nullable", False)
    return sa.Column(name, sa.String(length), **kw)


def _int(name: str, **kw: Any) -> sa.Column[Any]:
    kw.setdefault("nullable", False)
    return sa.Column(name, sa.Integer(), **kw)


def _float(name: str, *, nullable: bool = False, index: bool = False) -> sa.Column[Any]:
    return sa.Column(name, sa.Float(), nullable=nullable, index=index)


def _json(name: str) -> sa.Column[Any]:
    return sa.Column(name, sa.JSON(), nullable=False)


def _id() -> sa.Column[Any]:
    return sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True)


def baseline_metadata() -> sa.MetaData:
    """The baseline's tables, as the models declared them when it was taken."""
    meta = sa.MetaData()
    # The gateway (overread.service.db).
    sa.Table(
        "instances",
        meta,
        _id(),
        _str("sop_instance_uid", 64, unique=True),
        _str("study_instance_uid", 64, index=True),
        _str("series_instance_uid", 64),
        _str("sop_class_uid", 64),
        _str("transfer_syntax_uid", 64),
        _str("modality", 16),
        _str("body_part", 64),
        _str("view_position", 16),
        _str("institution", 128),
        _str("series_description", 256),
        _str("calling_ae", 16),
        _str("peer_host", 255),
        _str("object_key", 128),
        _str("sha256", 64),
        sa.Column("size", sa.BigInteger(), nullable=False),
        _dt("received_at"),
    )
    sa.Table(
        "studies",
        meta,
        _id(),
        _str("study_instance_uid", 64, unique=True),
        _str("state", 16, index=True),
        _int("instance_count"),
        _dt("first_instance_at"),
        _dt("last_instance_at"),
        _dt("completed_at", nullable=True),
        _str("complete_reason", 32),
    )
    sa.Table(
        "jobs",
        meta,
        _id(),
        _str("study_instance_uid", 64, index=True),
        _str("model_name", 128),
        _str("model_version", 64),
        _str("kind", 16),
        _str("destination", 64),
        _str("route", 128),
        _str("state", 16),
        _int("priority"),
        _int("attempts"),
        _int("max_attempts"),
        _dt("next_attempt_at"),
        _str("lease_owner", 128, nullable=True),
        _dt("lease_expires_at", nullable=True),
        _json("payload"),
        sa.Column("error", sa.Text(), nullable=True),
        _dt("created_at"),
        _dt("updated_at"),
        _dt("started_at", nullable=True),
        _dt("finished_at", nullable=True),
        sa.UniqueConstraint(
            "study_instance_uid",
            "model_name",
            "model_version",
            "kind",
            "destination",
            name="uq_job_identity",
        ),
        sa.Index("ix_jobs_claim", "state", "next_attempt_at"),
    )
    sa.Table(
        "results",
        meta,
        _id(),
        _int("job_id", index=True),
        _str("study_instance_uid", 64, index=True),
        _str("model_name", 128),
        _str("model_version", 64),
        _json("summary"),
        _json("artifacts"),
        _dt("created_at"),
        sa.UniqueConstraint(
            "study_instance_uid", "model_name", "model_version", name="uq_result_identity"
        ),
    )
    # Triage (overread.triage.schema).
    sa.Table(
        "worklist_items",
        meta,
        _id(),
        _str("study_instance_uid", 64, unique=True),
        _str("sop_instance_uid", 64),
        _str("path", 1024),
        _str("patient_id", 64),
        _str("department", 64, index=True),
        _float("patient_age", nullable=True),
        _dt("received_at", nullable=True),
        _float("score", index=True),
        _json("breakdown"),
        _json("findings"),
        sa.Column("has_critical", sa.Boolean(), nullable=False, index=True),
        _json("critical_findings"),
        _str("model_name", 128),
        _str("model_version", 64),
        _str("state", 16),
        _str("reader", 128),
        _dt("scored_at"),
        _dt("updated_at"),
        sa.Index("ix_worklist_order", "state", sa.text("score DESC"), "received_at", "id"),
    )
    sa.Table(
        "alerts",
        meta,
        _id(),
        _str("study_instance_uid", 64),
        _str("finding", 64),
        _float("probability"),
        _float("threshold"),
        _str("department", 64),
        _float("score"),
        _str("state", 16, index=True),
        _int("level"),
        _dt("raised_at"),
        _dt("last_seen_at"),
        _int("duplicates"),
        _dt("escalated_at", nullable=True),
        _str("acknowledged_by", 128, nullable=True),
        _dt("acknowledged_at", nullable=True),
        sa.Index("ix_alerts_identity", "study_instance_uid", "finding", "raised_at"),
    )
    sa.Table(
        "alert_deliveries",
        meta,
        _id(),
        sa.Column("alert_id", sa.Integer(), sa.ForeignKey("alerts.id"), nullable=False, index=True),
        _str("channel", 64),
        _int("level"),
        _str("state", 16),
        _int("attempts"),
        _dt("next_attempt_at"),
        sa.Column("last_error", sa.Text(), nullable=True),
        _dt("sent_at", nullable=True),
        _dt("created_at"),
        sa.Index("ix_alert_deliveries_due", "state", "next_attempt_at"),
    )
    sa.Table(
        "feedback",
        meta,
        _id(),
        _str("study_instance_uid", 64, index=True),
        _str("finding", 64),
        _str("verdict", 16),
        _float("label"),
        _float("probability", nullable=True),
        _float("threshold", nullable=True),
        _float("uncertainty", nullable=True),
        _str("reader", 128),
        _dt("created_at"),
    )
    # The audit chain (overread.audit.schema).
    sa.Table(
        "audit_events",
        meta,
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=False),
        _str("timestamp", 24, index=True),
        _str("actor", 128, index=True),
        _str("role", 32),
        _str("action", 32, index=True),
        _json("object_uids"),
        _json("details"),
        _str("prev_hash", 64),
        _str("hash", 64, unique=True),
    )
    sa.Table(
        "audit_chain_head",
        meta,
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        _int("seq"),
        _str("hash", 64),
    )
    # Access control (overread.security.schema).
    sa.Table(
        "users",
        meta,
        _id(),
        _str("username", 64, unique=True),
        _str("role", 32),
        _str("password_hash", 255),
        sa.Column("active", sa.Boolean(), nullable=False),
        _int("session_epoch"),
        _dt("created_at"),
        _dt("last_login_at", nullable=True),
    )
    sa.Table(
        "api_tokens",
        meta,
        _id(),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=False, index=True),
        _str("token_sha256", 64, unique=True),
        _str("role", 32),
        _str("label", 128),
        _dt("created_at"),
        _dt("expires_at", nullable=True),
        sa.Column("revoked", sa.Boolean(), nullable=False),
        _dt("last_used_at", nullable=True),
    )
    sa.Table(
        "login_throttle",
        meta,
        sa.Column("key", sa.String(300), primary_key=True),
        _int("failures"),
        _dt("last_failure_at", nullable=True),
        _dt("locked_until", nullable=True),
    )
    return meta


def _check_adopted(bind: sa.Connection, meta: sa.MetaData, present: set[str]) -> None:
    inspector = sa.inspect(bind)
    for name in sorted(present & set(meta.tables)):
        have = {column["name"] for column in inspector.get_columns(name)}
        missing = [c.name for c in meta.tables[name].columns if c.name not in have]
        if missing:
            raise DatabaseSchemaError(
                f"table {name} lacks column(s) {', '.join(missing)}: the database was made "
                "by an overread too old to adopt; export what you need and start a new one"
            )


def _ensure_chain_head(bind: sa.Connection, meta: sa.MetaData) -> None:
    head = meta.tables["audit_chain_head"]
    events = meta.tables["audit_events"]
    if bind.execute(sa.select(head.c.id).where(head.c.id == HEAD_ID)).first() is not None:
        return
    last = bind.execute(
        sa.select(events.c.seq, events.c.hash).order_by(events.c.seq.desc()).limit(1)
    ).first()
    seq, digest = (last[0], last[1]) if last is not None else (0, GENESIS_HASH)
    bind.execute(sa.insert(head).values(id=HEAD_ID, seq=seq, hash=digest))


def upgrade() -> None:
    bind = op.get_bind()
    meta = baseline_metadata()
    present = set(sa.inspect(bind).get_table_names())
    _check_adopted(bind, meta, present)
    meta.create_all(bind, checkfirst=True)
    _ensure_chain_head(bind, meta)


def downgrade() -> None:
    raise DatabaseSchemaError("the baseline revision cannot be undone")
