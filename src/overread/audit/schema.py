"""The audit tables: the append-only event chain and its one-row head.

The tables declare on the one base of :mod:`overread.db`, beneath the gateway that
records events while it works; the schema migrations create them with every other
table, and :func:`create_tables` makes sure they (and the head row) exist.

The timestamp is stored as a fixed-width ISO 8601 string in UTC with milliseconds
(``2026-01-02T03:04:05.678Z``): that is exactly what is hashed, so no database's
datetime round trip can change a hash, and fixed width keeps string order equal to
time order for range queries.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, Integer, String, insert, select
from sqlalchemy.orm import Mapped, mapped_column

from overread.db import Base, ensure_schema

# The hash every chain starts from (the prev_hash of record 1).
GENESIS_HASH = "0" * 64
# The single row of the chain-head table.
HEAD_ID = 1


class AuditEvent(Base):
    """One audited event, linked to the previous one by ``prev_hash``."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    timestamp: Mapped[str] = mapped_column(String(24), index=True)
    actor: Mapped[str] = mapped_column(String(128), index=True)
    role: Mapped[str] = mapped_column(String(32), default="")
    action: Mapped[str] = mapped_column(String(32), index=True)
    object_uids: Mapped[list[Any]] = mapped_column(default=list)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64), unique=True)


class AuditChainHead(Base):
    """The newest (seq, hash) of the chain; its row lock serialises appends.

    Not a security anchor (whoever can write the events can write this row too);
    signed checkpoints are. It makes appends O(1) and gives concurrent writers one
    row to queue on.
    """

    __tablename__ = "audit_chain_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    seq: Mapped[int] = mapped_column(Integer)
    hash: Mapped[str] = mapped_column(String(64))


def create_tables(engine: Engine) -> None:
    """Make sure the audit tables and the chain-head row exist (idempotent).

    A new, empty database is created at the current schema version (every table,
    not only the audit chain's); one at another version is refused
    (:func:`overread.db.ensure_schema`). A missing head row is rebuilt from the
    newest event, so an existing chain is continued rather than restarted.

    Raises
    ------
    DatabaseSchemaError
        If the database's schema is not at this overread's version.
    """
    ensure_schema(engine)
    with engine.begin() as conn:
        head = conn.execute(select(AuditChainHead.id).where(AuditChainHead.id == HEAD_ID)).first()
        if head is None:
            last = conn.execute(
                select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
            ).first()
            seq, digest = (last[0], last[1]) if last is not None else (0, GENESIS_HASH)
            conn.execute(insert(AuditChainHead).values(id=HEAD_ID, seq=seq, hash=digest))


__all__ = ["GENESIS_HASH", "HEAD_ID", "AuditChainHead", "AuditEvent", "create_tables"]
