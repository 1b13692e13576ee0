"""Appending to the audit hash chain, and verifying it.

Each event's ``hash`` is SHA-256 over a canonical JSON encoding of every other field,
``prev_hash`` included, so changing, removing or moving any record breaks the link
to the next one. :func:`record_event` writes in the caller's transaction: an action
and its audit record commit or roll back together, and nothing is audited that did
not happen.

Appends are serialised by the one-row chain head: the first statement of an append
is ``UPDATE audit_chain_head SET seq = seq + 1``, which takes SQLite's write lock or
PostgreSQL's row lock and holds it until the caller's transaction ends. A second
writer waits there, then reads the head the first one committed, so the chain never
forks.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from overread.audit.actions import AuditAction
from overread.audit.schema import GENESIS_HASH, HEAD_ID, AuditChainHead, AuditEvent
from overread.errors import AuditError

logger = logging.getLogger(__name__)

# The fields, other than ``hash`` itself, that each event's hash covers.
HASHED_FIELDS: tuple[str, ...] = (
    "seq",
    "timestamp",
    "actor",
    "role",
    "action",
    "object_uids",
    "details",
    "prev_hash",
)

_BATCH = 2000


@dataclass(frozen=True)
class Checkpoint:
    """A signed checkpoint of the chain's head, verified and read from ``path``.

    Written and read by :mod:`overread.audit.checkpoint`; defined here so that
    :func:`verify_chain` can take checkpoints without importing that module.
    """

    path: Path
    head_seq: int
    head_hash: str
    count: int
    created_at: str

    @property
    def name(self) -> str:
        """The file name, for messages."""
        return self.path.name


def canonical_json(value: Any) -> bytes:
    """The one byte encoding that is hashed or signed: sorted keys, no spaces, UTF-8.

    Raises
    ------
    AuditError
        If the value holds NaN/infinity or a type JSON cannot represent.
    """
    try:
        text = json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit event field is not canonical JSON: {exc}") from None
    return text.encode("utf-8")


def event_hash(fields: dict[str, Any]) -> str:
    """SHA-256 (hex) of an event's :data:`HASHED_FIELDS`."""
    return hashlib.sha256(canonical_json({k: fields[k] for k in HASHED_FIELDS})).hexdigest()


def format_timestamp(moment: datetime) -> str:
    """UTC ISO 8601 with milliseconds and ``Z``: the stored and hashed form."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass(frozen=True)
class AuditRecord:
    """An event as written to (or read from) the chain."""

    seq: int
    timestamp: str
    actor: str
    role: str
    action: str
    object_uids: list[str]
    details: dict[str, Any]
    prev_hash: str
    hash: str

    def as_dict(self) -> dict[str, Any]:
        """All fields, for export."""
        return {
            "seq": self.seq,
            "timestamp": self.timestamp,
            "actor": self.actor,
            "role": self.role,
            "action": self.action,
            "object_uids": list(self.object_uids),
            "details": dict(self.details),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def _normalised_details(details: dict[str, Any] | None) -> dict[str, Any]:
    # Stored exactly as hashed: a round trip through canonical JSON.
    result: dict[str, Any] = json.loads(canonical_json(dict(details or {})))
    return result


def _action_value(action: AuditAction | str) -> str:
    try:
        return AuditAction(action).value
    except ValueError:
        known = ", ".join(a.value for a in AuditAction)
        raise AuditError(f"unknown audit action {action!r} (known: {known})") from None


def record_event(
    session: Session | Connection,
    *,
    actor: str,
    action: AuditAction | str,
    role: str = "",
    object_uids: Iterable[str] = (),
    details: dict[str, Any] | None = None,
) -> AuditRecord:
    """Append one event to the chain inside the caller's transaction; do not commit.

    Parameters
    ----------
    session
        The caller's session (or connection). The event is written with it, so it
        commits or rolls back with whatever the caller did; until then it holds the
        chain lock, so keep the transaction short.
    actor
        Who acted: a user name, a service account, or a DICOM AE title (``ae:NAME``).
    action
        One of :class:`~overread.audit.actions.AuditAction`.
    role
        The actor's role when they acted.
    object_uids
        What was acted on: study, series or SOP instance UIDs, job ids.
    details
        Anything else worth keeping (JSON-able): source address, model version, reason.

    Raises
    ------
    AuditError
        If the action is unknown, the details are not JSON-able, or the audit tables
        have not been created.
    """
    action_value = _action_value(action)
    if not actor or len(actor) > 128 or len(role) > 32:
        raise AuditError(f"audit actor must be 1-128 and role at most 32 characters: {actor!r}")
    uids = [str(uid) for uid in object_uids]
    clean_details = _normalised_details(details)
    # Take the chain lock first: the UPDATE waits for any other appender to finish.
    try:
        bumped = session.execute(
            update(AuditChainHead)
            .where(AuditChainHead.id == HEAD_ID)
            .values(seq=AuditChainHead.seq + 1)
        )
    except (OperationalError, ProgrammingError) as exc:
        raise AuditError(
            "cannot lock the audit chain head (database locked too long, or the audit "
            f"tables not created with overread.audit.create_tables?): {exc.orig}"
        ) from exc
    if getattr(bumped, "rowcount", 1) != 1:
        raise AuditError(
            "the audit chain head is missing: create the audit tables "
            "(overread.audit.create_tables) before recording events"
        )
    head = session.execute(
        select(AuditChainHead.seq, AuditChainHead.hash).where(AuditChainHead.id == HEAD_ID)
    ).one()
    fields: dict[str, Any] = {
        "seq": int(head[0]),
        "timestamp": format_timestamp(datetime.now(UTC)),
        "actor": actor,
        "role": role,
        "action": action_value,
        "object_uids": uids,
        "details": clean_details,
        "prev_hash": str(head[1]),
    }
    digest = event_hash(fields)
    session.execute(insert(AuditEvent).values(**fields, hash=digest))
    session.execute(update(AuditChainHead).where(AuditChainHead.id == HEAD_ID).values(hash=digest))
    logger.debug("audit %s by %s: seq %d", action_value, actor, fields["seq"])
    return AuditRecord(**fields, hash=digest)


def _row_record(row: Any) -> AuditRecord:
    return AuditRecord(
        seq=int(row.seq),
        timestamp=str(row.timestamp),
        actor=str(row.actor),
        role=str(row.role),
        action=str(row.action),
        object_uids=list(row.object_uids or []),
        details=dict(row.details or {}),
        prev_hash=str(row.prev_hash),
        hash=str(row.hash),
    )


def iter_records(
    conn: Session | Connection, *, after_seq: int = 0, batch: int = _BATCH
) -> Iterable[AuditRecord]:
    """Every record with ``seq > after_seq`` in seq order, read in batches."""
    last = after_seq
    while True:
        rows = conn.execute(
            select(AuditEvent.__table__)
            .where(AuditEvent.seq > last)
            .order_by(AuditEvent.seq)
            .limit(batch)
        ).all()
        if not rows:
            return
        for row in rows:
            record = _row_record(row)
            last = record.seq
            yield record


class BreakReason:
    """Why verification stopped (string constants, also used in messages)."""

    HASH_MISMATCH = "hash-mismatch"
    PREV_HASH_MISMATCH = "prev-hash-mismatch"
    SEQ_GAP = "seq-gap"
    REORDERED = "reordered"
    TRUNCATED = "truncated"
    HEAD_MISMATCH = "head-mismatch"
    CHECKPOINT_MISMATCH = "checkpoint-mismatch"


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :func:`verify_chain`.

    ``broken_seq`` names the first record at fault (for truncation: the first
    missing one) and ``reason`` is one of :class:`BreakReason`. ``since`` names the
    signed checkpoint an incremental check started from (``None``: the whole chain
    was recomputed) and ``records_read`` how many records the check read.
    """

    ok: bool
    count: int
    head_seq: int
    head_hash: str
    checkpoints_checked: int = 0
    broken_seq: int | None = None
    reason: str | None = None
    message: str = ""
    first_timestamp: str | None = None
    last_timestamp: str | None = None
    since: str | None = None
    records_read: int = 0

    def as_dict(self) -> dict[str, Any]:
        """All fields, for JSON output to monitoring."""
        return {
            "ok": self.ok,
            "count": self.count,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "checkpoints_checked": self.checkpoints_checked,
            "broken_seq": self.broken_seq,
            "reason": self.reason,
            "message": self.message,
            "first_timestamp": self.first_timestamp,
            "last_timestamp": self.last_timestamp,
        }

    def summary(self) -> str:
        """One line for humans and logs."""
        if self.ok and self.since is not None:
            return (
                f"OK: {self.count} audit records, the {self.records_read} from signed "
                f"checkpoint {self.since} on recomputed, head seq {self.head_seq} "
                f"hash {self.head_hash[:16]}"
            )
        if self.ok:
            span = f" from {self.first_timestamp} to {self.last_timestamp}" if self.count else ""
            return (
                f"OK: {self.count} audit records{span}, head seq {self.head_seq} "
                f"hash {self.head_hash[:16]}, {self.checkpoints_checked} signed checkpoint(s) matched"
            )
        return f"BROKEN at record {self.broken_seq} ({self.reason}): {self.message}"


def _where_hash(conn: Session | Connection, digest: str) -> int | None:
    found = conn.execute(select(AuditEvent.seq).where(AuditEvent.hash == digest)).first()
    return None if found is None else int(found[0])


def verify_chain(
    source: Session | Connection | Engine,
    *,
    checkpoints: Sequence[Checkpoint] = (),
    since: Checkpoint | None = None,
) -> VerifyResult:
    """Recompute the chain (the whole of it by default) and name the first broken record.

    Checks, record by record in seq order: seq is contiguous from 1 (else a record
    was deleted), ``prev_hash`` is the previous record's hash (else records were
    reordered or one was altered and re-hashed), and the stored hash is the hash of
    the record's fields (else it was edited). Then the chain must reach the head
    recorded in the chain-head table and every signed checkpoint: a checkpoint whose
    head seq is beyond the last record means the newest records were deleted, and
    one whose hash differs means the chain was rewritten.

    Parameters
    ----------
    source
        A session, connection or engine on the database holding the chain.
    checkpoints
        Signed checkpoints (already signature-checked, see
        :func:`~overread.audit.checkpoint.load_checkpoints`).
    since
        A signed, signature-checked checkpoint to start from (incremental check):
        the record at its head seq must still match its fields' hash and the
        checkpoint's hash, then only the records after it are read. Records before
        it are **not** re-read, so an edit there that leaves the checkpointed record
        untouched shows only in a full check (the checkpointed hash still commits
        to the original records). Checkpoints in ``checkpoints`` below it are
        ignored.
    """
    if isinstance(source, Engine):
        with source.connect() as connection:
            return verify_chain(connection, checkpoints=checkpoints, since=since)
    conn = source
    head_row = conn.execute(
        select(AuditChainHead.seq, AuditChainHead.hash).where(AuditChainHead.id == HEAD_ID)
    ).first()
    start = 0 if since is None else since.head_seq
    by_seq: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        if checkpoint.head_seq > start:
            by_seq.setdefault(checkpoint.head_seq, []).append(checkpoint)

    expected_seq = start + 1
    prev_hash = GENESIS_HASH if since is None else since.head_hash
    count = start
    read = 0
    first_ts: str | None = None
    last_ts: str | None = None
    matched = 0

    def broken(seq: int, reason: str, message: str) -> VerifyResult:
        return VerifyResult(
            ok=False,
            count=count,
            head_seq=expected_seq - 1,
            head_hash=prev_hash,
            checkpoints_checked=matched,
            broken_seq=seq,
            reason=reason,
            message=message,
            first_timestamp=first_ts,
            last_timestamp=last_ts,
            since=None if since is None else since.name,
            records_read=read,
        )

    if since is not None:
        anchor = _check_anchor(conn, since)
        read += since.head_seq > 0  # the checkpointed record itself
        if anchor is not None:
            return broken(*anchor)
        matched += 1

    for record in iter_records(conn, after_seq=start):
        read += 1
        if record.seq != expected_seq:
            missing = (
                f"record {expected_seq} is missing"
                if record.seq == expected_seq + 1
                else f"records {expected_seq} to {record.seq - 1} are missing"
            )
            return broken(expected_seq, BreakReason.SEQ_GAP, f"gap in seq: {missing}")
        if record.prev_hash != prev_hash:
            elsewhere = _where_hash(conn, record.prev_hash)
            if elsewhere is not None and elsewhere != record.seq - 1:
                return broken(
                    record.seq,
                    BreakReason.REORDERED,
                    f"record {record.seq} follows record {elsewhere} in the chain, "
                    f"not record {record.seq - 1}: records were reordered",
                )
            return broken(
                record.seq,
                BreakReason.PREV_HASH_MISMATCH,
                f"prev_hash of record {record.seq} is not the hash of record "
                f"{record.seq - 1}: one of them was altered",
            )
        recomputed = event_hash(record.as_dict())
        if recomputed != record.hash:
            return broken(
                record.seq,
                BreakReason.HASH_MISMATCH,
                f"record {record.seq} ({record.action} by {record.actor} at "
                f"{record.timestamp}) does not match its hash: it was edited",
            )
        for checkpoint in by_seq.get(record.seq, []):
            if checkpoint.head_hash != record.hash:
                return broken(
                    record.seq,
                    BreakReason.CHECKPOINT_MISMATCH,
                    f"record {record.seq} differs from signed checkpoint {checkpoint.name}: "
                    "the chain was rewritten up to here",
                )
            matched += 1
        first_ts = first_ts or record.timestamp
        last_ts = record.timestamp
        prev_hash = record.hash
        expected_seq += 1
        count += 1

    last_seq = expected_seq - 1
    beyond = [c for c in checkpoints if c.head_seq > last_seq]
    if beyond:
        newest = max(beyond, key=lambda c: c.head_seq)
        return broken(
            last_seq + 1,
            BreakReason.TRUNCATED,
            f"the chain ends at record {last_seq} but signed checkpoint {newest.name} "
            f"covers records up to {newest.head_seq}: the newest records were deleted",
        )
    if head_row is not None:
        head_seq, head_hash = int(head_row[0]), str(head_row[1])
        if head_seq > last_seq:
            return broken(
                last_seq + 1,
                BreakReason.TRUNCATED,
                f"the chain ends at record {last_seq} but the chain head records "
                f"{head_seq}: the newest records were deleted",
            )
        at_head = conn.execute(select(AuditEvent.hash).where(AuditEvent.seq == head_seq)).first()
        expected_head = GENESIS_HASH if head_seq == 0 else (None if at_head is None else at_head[0])
        if expected_head != head_hash:
            return broken(
                head_seq,
                BreakReason.HEAD_MISMATCH,
                f"the chain head's hash for record {head_seq} differs from the record's",
            )
    return VerifyResult(
        ok=True,
        count=count,
        head_seq=last_seq,
        head_hash=prev_hash,
        checkpoints_checked=matched,
        first_timestamp=first_ts,
        last_timestamp=last_ts,
        since=None if since is None else since.name,
        records_read=read,
    )


def _check_anchor(conn: Session | Connection, since: Checkpoint) -> tuple[int, str, str] | None:
    """Why the record a checkpoint anchors no longer matches it (``None``: it does)."""
    if since.head_seq == 0:
        if since.head_hash == GENESIS_HASH:
            return None
        return (
            since.head_seq,
            BreakReason.CHECKPOINT_MISMATCH,
            f"signed checkpoint {since.name} of an empty chain has a hash",
        )
    row = conn.execute(select(AuditEvent.__table__).where(AuditEvent.seq == since.head_seq)).first()
    if row is None:
        newest = conn.scalar(select(func.max(AuditEvent.seq)))
        if newest is None or int(newest) < since.head_seq:
            return (
                int(newest or 0) + 1,
                BreakReason.TRUNCATED,
                f"the chain ends at record {newest or 0} but signed checkpoint {since.name} "
                f"covers records up to {since.head_seq}: the newest records were deleted",
            )
        return (
            since.head_seq,
            BreakReason.SEQ_GAP,
            f"gap in seq: record {since.head_seq} (signed checkpoint {since.name}) is missing",
        )
    record = _row_record(row)
    if event_hash(record.as_dict()) != record.hash:
        return (
            since.head_seq,
            BreakReason.HASH_MISMATCH,
            f"record {record.seq} ({record.action} by {record.actor} at "
            f"{record.timestamp}) does not match its hash: it was edited",
        )
    if record.hash != since.head_hash:
        return (
            since.head_seq,
            BreakReason.CHECKPOINT_MISMATCH,
            f"record {record.seq} differs from signed checkpoint {since.name}: "
            "the chain was rewritten up to here",
        )
    return None


__all__ = [
    "HASHED_FIELDS",
    "AuditRecord",
    "BreakReason",
    "VerifyResult",
    "canonical_json",
    "event_hash",
    "format_timestamp",
    "iter_records",
    "record_event",
    "verify_chain",
]
