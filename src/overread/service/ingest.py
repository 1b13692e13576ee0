"""Persist a received instance: bytes to the object store, a row to the database.

This is the one place every ingest path (C-STORE, STOW-RS, files) goes through, and
it enforces the gateway's first promise: an instance is fsync'd on disk *and*
committed in the database before :meth:`Ingestor.ingest` returns, so a caller may
acknowledge only after that. A SOP Instance UID seen before is answered as a
duplicate without storing a second copy.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from overread.audit import AuditAction, record_event
from overread.imaging import ImageMetadata, read_instance
from overread.service.db import Database, Instance, Study, StudyState, utcnow
from overread.service.diskspace import DiskGuard
from overread.service.store import IncomingObject, ObjectStore, StoredObject

logger = logging.getLogger(__name__)


def _clip(value: str | None, limit: int) -> str:
    return (value or "")[:limit]


#: How an instance came, by the calling AE title the receiving side records.
_VIA = {"STOW-RS": "stow-rs", "FILE": "file"}


@dataclass(frozen=True)
class InstanceColumns:
    """An ``Instance`` row's values from a received header, cut to the column widths."""

    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str
    series_instance_uid: str
    transfer_syntax_uid: str
    modality: str
    body_part: str
    view_position: str
    institution: str
    series_description: str

    @classmethod
    def of(cls, header: ImageMetadata) -> InstanceColumns:
        return cls(
            sop_instance_uid=_clip(header.sop_instance_uid, 64),
            sop_class_uid=_clip(header.sop_class_uid, 64),
            study_instance_uid=_clip(header.study_instance_uid, 64),
            series_instance_uid=_clip(header.series_instance_uid, 64),
            transfer_syntax_uid=header.transfer_syntax or "",
            modality=_clip(header.modality, 16).upper(),
            body_part=_clip(header.body_part, 64).upper(),
            view_position=_clip(header.view_position, 16).upper(),
            institution=_clip(header.institution_name, 128),
            series_description=_clip(header.series_description, 256),
        )


@dataclass(frozen=True)
class IngestOutcome:
    """What happened to one received instance."""

    sop_instance_uid: str
    study_instance_uid: str
    object_key: str
    duplicate: bool
    sop_class_uid: str = ""
    size: int = 0
    via: str = ""


@dataclass
class _PendingRow:
    """An instance whose bytes are durable and whose row waits for a commit."""

    header: InstanceColumns
    key: str
    sha256: str
    size: int
    calling_ae: str
    peer_host: str
    finished: bool = False
    error: BaseException | None = None
    wake: threading.Event = field(default_factory=threading.Event)


class _GroupCommit:
    """Commit the rows of concurrent ingests together: one transaction, one fsync.

    The first caller to arrive while no commit runs leads: it takes every row
    waiting, commits them in one transaction and wakes their callers; rows that
    arrived meanwhile go to the next leader (the oldest waiter). A caller returns
    only once its own row is committed, so acknowledging after :meth:`commit` is
    still acknowledging a durable row. With one sender at a time every batch holds
    one row and nothing changes; with several associations the database's commit
    (a WAL fsync on SQLite) is paid once per batch instead of once per instance.
    If a batch fails, its rows are committed one by one so each caller gets its
    own outcome (for instance an ``IntegrityError`` for a concurrent duplicate).
    """

    def __init__(self, write: Callable[[Sequence[_PendingRow]], None]) -> None:
        self._write = write
        self._lock = threading.Lock()
        self._pending: list[_PendingRow] = []
        self._busy = False

    def commit(self, row: _PendingRow) -> None:
        """Commit ``row`` (possibly with others); raise what its commit raised."""
        with self._lock:
            self._pending.append(row)
            lead = not self._busy
            self._busy = True
        if not lead:
            row.wake.wait()
            lead = not row.finished  # woken to lead the next batch
        if lead:
            self._lead()
        if row.error is not None:
            raise row.error

    def _lead(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        try:
            self._flush(batch)
        finally:
            with self._lock:
                if self._pending:
                    self._pending[0].wake.set()  # the oldest waiter leads next
                else:
                    self._busy = False

    def _flush(self, batch: list[_PendingRow]) -> None:
        try:
            self._write(batch)
        except BaseException as exc:
            if len(batch) == 1:
                batch[0].error = exc
            else:
                for row in batch:
                    try:
                        self._write([row])
                    except BaseException as single:
                        row.error = single
        for row in batch:
            row.finished = True
            row.wake.set()


@dataclass(frozen=True)
class _StoredRow:
    """The columns of an already stored instance that a duplicate is answered from."""

    study_instance_uid: str
    object_key: str
    sha256: str
    sop_class_uid: str


class Ingestor:
    """Stores instances and records them, one transaction per instance.

    Parameters
    ----------
    database, store
        Where rows and bytes go.
    on_stored
        Called with the outcome after each *new* instance is committed (the study
        assembler uses it to notice arrivals without polling).
    disk
        The disk watermarks checked before each write (``None``: none).
    """

    def __init__(
        self,
        database: Database,
        store: ObjectStore,
        *,
        on_stored: Callable[[IngestOutcome], None] | None = None,
        disk: DiskGuard | None = None,
    ) -> None:
        self.database = database
        self.store = store
        self.on_stored = on_stored
        self.disk = disk
        self._commits = _GroupCommit(self._record)

    def ingest(
        self, data: bytes, *, calling_ae: str, peer_host: str = "", source: str = "payload"
    ) -> IngestOutcome:
        """Persist ``data`` (a DICOM Part 10 byte string) durably.

        Raises
        ------
        InvalidDicomError
            If ``data`` is not usable DICOM; nothing is stored.
        InsufficientStorageError
            If the disk is under the refuse watermark; nothing is written.
        OSError, sqlalchemy.exc.SQLAlchemyError
            If the disk or the database fails; the caller must not acknowledge.
        """
        header = InstanceColumns.of(read_instance(data, source=source))
        existing = self._find(header.sop_instance_uid)
        if existing is not None:
            return self._duplicate(header, existing, hashlib.sha256(data).hexdigest(), calling_ae)
        if self.disk is not None:
            self.disk.check()
        # The object is held against retention's removal until its row is committed:
        # identical bytes share one file, which a clean-up may be about to remove.
        with self.store.referencing(data) as stored:
            duplicate = self._commit(header, stored, calling_ae, peer_host)
        return self._stored(header, stored, calling_ae, duplicate)

    def ingest_incoming(
        self,
        incoming: IncomingObject,
        *,
        calling_ae: str,
        peer_host: str = "",
        source: str = "payload",
    ) -> IngestOutcome:
        """Persist an object that was written to the store while it arrived.

        The same checks and the same promise as :meth:`ingest` (the header is read
        from the file, mapped, without a copy), but the bytes are already in the page
        cache and hashed, so what is left is the file's fsync, its rename into place,
        the directory's fsync and the row. The caller discards ``incoming``
        afterwards (:meth:`IncomingObject.discard`), whatever happened.

        Raises
        ------
        As :meth:`ingest`; ``OSError`` also when writing the arriving bytes failed.
        """
        sha256, _ = incoming.finish()
        with incoming.mapped() as view:
            header = InstanceColumns.of(read_instance(view, source=source))
        existing = self._find(header.sop_instance_uid)
        if existing is not None:
            return self._duplicate(header, existing, sha256, calling_ae)
        if self.disk is not None:
            self.disk.check()
        with self.store.referencing_incoming(incoming) as stored:
            duplicate = self._commit(header, stored, calling_ae, peer_host)
        return self._stored(header, stored, calling_ae, duplicate)

    @staticmethod
    def _duplicate(
        header: InstanceColumns, existing: _StoredRow, sha256: str, calling_ae: str
    ) -> IngestOutcome:
        if sha256 != existing.sha256:
            logger.warning(
                "instance %s from %s differs from the copy already stored; "
                "the first copy is kept (SOP Instance UIDs must be unique)",
                header.sop_instance_uid,
                calling_ae,
            )
        else:
            logger.info(
                "duplicate instance %s from %s: already stored", header.sop_instance_uid, calling_ae
            )
        return IngestOutcome(
            header.sop_instance_uid,
            existing.study_instance_uid,
            existing.object_key,
            True,
            existing.sop_class_uid,
        )

    def _commit(
        self, header: InstanceColumns, stored: StoredObject, calling_ae: str, peer_host: str
    ) -> _StoredRow | None:
        """Commit the row of a durably stored object; the row already there if the
        same instance arrived concurrently (a duplicate), else None."""
        for attempt in range(3):
            try:
                self._commits.commit(
                    _PendingRow(
                        header, stored.key, stored.sha256, stored.size, calling_ae, peer_host
                    )
                )
                return None
            except IntegrityError:
                # Either the same instance arrived concurrently (a duplicate), or two
                # associations created the same study at once (retry the upsert).
                existing = self._find(header.sop_instance_uid)
                if existing is not None:
                    return existing
                if attempt == 2:
                    raise
        return None  # not reached

    def _stored(
        self,
        header: InstanceColumns,
        stored: StoredObject,
        calling_ae: str,
        duplicate: _StoredRow | None,
    ) -> IngestOutcome:
        if duplicate is not None:
            return IngestOutcome(
                header.sop_instance_uid,
                duplicate.study_instance_uid,
                duplicate.object_key,
                True,
                duplicate.sop_class_uid,
            )
        outcome = IngestOutcome(
            header.sop_instance_uid,
            header.study_instance_uid,
            stored.key,
            False,
            header.sop_class_uid,
            size=stored.size,
            via=_VIA.get(calling_ae.strip(), "c-store"),
        )
        logger.info(
            "stored instance %s of study %s from %s (%d bytes)",
            header.sop_instance_uid,
            header.study_instance_uid,
            calling_ae,
            stored.size,
        )
        if self.on_stored is not None:
            self.on_stored(outcome)
        return outcome

    def ingest_file(self, path: Path, *, calling_ae: str = "FILE") -> IngestOutcome:
        """Persist a DICOM file from disk (the ``files / CLI`` ingest path)."""
        return self.ingest(Path(path).read_bytes(), calling_ae=calling_ae, source=str(path))

    def references(self, object_key: str) -> bool:
        """Whether an instance row references the stored object ``object_key``."""
        with self.database.session() as session:
            found = session.execute(
                select(Instance.sop_instance_uid).where(Instance.object_key == object_key).limit(1)
            ).first()
        return found is not None

    def _find(self, sop_instance_uid: str) -> _StoredRow | None:
        with self.database.session() as session:
            row = session.execute(
                select(
                    Instance.study_instance_uid,
                    Instance.object_key,
                    Instance.sha256,
                    Instance.sop_class_uid,
                ).where(Instance.sop_instance_uid == sop_instance_uid)
            ).first()
        return None if row is None else _StoredRow(*row)

    def _record(self, rows: Sequence[_PendingRow]) -> None:
        """Insert ``rows`` and update their studies in one transaction (one commit)."""
        now = utcnow()
        with self.database.session() as session:
            for row in rows:
                self._record_row(session, row, now)

    @staticmethod
    def _record_row(session: Session, row: _PendingRow, now: datetime) -> None:
        header, calling_ae, peer_host = row.header, row.calling_ae, row.peer_host
        key, sha256, size = row.key, row.sha256, row.size
        session.execute(
            insert(Instance).values(
                sop_instance_uid=header.sop_instance_uid,
                study_instance_uid=header.study_instance_uid,
                series_instance_uid=header.series_instance_uid,
                sop_class_uid=header.sop_class_uid,
                transfer_syntax_uid=header.transfer_syntax_uid,
                modality=header.modality,
                body_part=header.body_part,
                view_position=header.view_position,
                institution=header.institution,
                series_description=header.series_description,
                calling_ae=calling_ae.strip(),
                peer_host=peer_host,
                object_key=key,
                sha256=sha256,
                size=size,
                received_at=now,
            )
        )
        updated = session.execute(
            update(Study)
            .where(Study.study_instance_uid == header.study_instance_uid)
            .values(
                instance_count=Study.instance_count + 1,
                last_instance_at=now,
                state=StudyState.RECEIVING.value,
                images_purged_at=None,  # received again after a retention purge
            )
        )
        if updated.rowcount == 0:  # type: ignore[attr-defined]
            session.execute(
                insert(Study).values(
                    study_instance_uid=header.study_instance_uid,
                    state=StudyState.RECEIVING.value,
                    instance_count=1,
                    first_instance_at=now,
                    last_instance_at=now,
                )
            )
        record_event(
            session,
            actor=f"ae:{calling_ae.strip()}",
            role="modality",
            action=AuditAction.RECEIVE,
            object_uids=[header.study_instance_uid, header.sop_instance_uid],
            details={"peer_host": peer_host, "sha256": sha256, "size": size},
        )


def record_refusal(
    database: Database,
    *,
    actor: str,
    action: AuditAction,
    peer_host: str,
    reason: str,
    object_uids: Sequence[str] = (),
    status: int | None = None,
) -> None:
    """Audit something the receiving side refused, in its own transaction.

    A refusal must leave a trace, but recording it must never change the answer:
    when the database itself is the problem (the refusal is then 0xA700), the
    event cannot be written and only the log keeps it.
    """
    details: dict[str, Any] = {"peer_host": peer_host, "reason": reason}
    if status is not None:
        details["status"] = f"0x{status:04X}"
    try:
        with database.session() as session:
            record_event(
                session,
                actor=actor,
                role="modality",
                action=action,
                object_uids=[u for u in object_uids if u],
                details=details,
            )
    except Exception as exc:
        logger.error("refusal from %s (%s) could not be audited: %s", actor, reason, exc)


__all__ = ["IngestOutcome", "Ingestor", "InstanceColumns", "record_refusal"]
