"""Compliance export of the audit trail for a time range.

Exporting the trail is itself an audited action (``audit-export``), recorded in the
same transaction that read the records, with the range, format and count.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime
from typing import TextIO

from sqlalchemy import select
from sqlalchemy.orm import Session

from overread.audit.actions import AuditAction
from overread.audit.chain import AuditRecord, _row_record, format_timestamp, record_event
from overread.audit.schema import AuditEvent
from overread.errors import AuditError

EXPORT_FORMATS = ("jsonl", "csv")
CSV_COLUMNS = (
    "seq",
    "timestamp",
    "actor",
    "role",
    "action",
    "object_uids",
    "details",
    "prev_hash",
    "hash",
)


def parse_time(text: str) -> datetime:
    """An ISO 8601 date or date-time; naive values are taken as UTC.

    Raises
    ------
    AuditError
        If the text is not ISO 8601.
    """
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AuditError(f"not an ISO 8601 date or time: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def select_records(session: Session, start: datetime, end: datetime) -> list[AuditRecord]:
    """Records with ``start <= timestamp < end``, in seq order."""
    rows = session.execute(
        select(AuditEvent.__table__)
        .where(AuditEvent.timestamp >= format_timestamp(start))
        .where(AuditEvent.timestamp < format_timestamp(end))
        .order_by(AuditEvent.seq)
    ).all()
    return [_row_record(row) for row in rows]


def export_events(
    session: Session,
    out: TextIO,
    *,
    start: datetime,
    end: datetime,
    fmt: str = "jsonl",
    actor: str,
    role: str = "",
    destination: str = "",
) -> int:
    """Write the records in ``[start, end)`` to ``out`` and audit the export.

    The caller commits ``session``; the ``audit-export`` event is appended after
    the exported records, so it is never part of its own export.

    Returns
    -------
    int
        How many records were exported.
    """
    if fmt not in EXPORT_FORMATS:
        raise AuditError(f"unknown export format {fmt!r} (use one of {', '.join(EXPORT_FORMATS)})")
    if end <= start:
        raise AuditError(f"empty time range: {start.isoformat()} is not before {end.isoformat()}")
    records = select_records(session, start, end)
    if fmt == "jsonl":
        for record in records:
            out.write(json.dumps(record.as_dict(), sort_keys=True, ensure_ascii=False) + "\n")
    else:
        writer = csv.DictWriter(out, fieldnames=list(CSV_COLUMNS))
        writer.writeheader()
        for record in records:
            row = record.as_dict()
            row["object_uids"] = json.dumps(row["object_uids"])
            row["details"] = json.dumps(row["details"], sort_keys=True)
            writer.writerow(row)
    record_event(
        session,
        actor=actor,
        role=role,
        action=AuditAction.AUDIT_EXPORT,
        details={
            "from": format_timestamp(start),
            "to": format_timestamp(end),
            "format": fmt,
            "count": len(records),
            "destination": destination,
        },
    )
    return len(records)


__all__ = ["CSV_COLUMNS", "EXPORT_FORMATS", "export_events", "parse_time", "select_records"]
