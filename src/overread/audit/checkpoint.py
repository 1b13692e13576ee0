"""Signed checkpoints: anchoring the chain outside the database.

A hash chain alone only proves internal consistency: whoever can write the
database can delete the newest records, or recompute every hash after an edit.
A checkpoint file records the head (seq, hash, count, time) and is signed
(HMAC-SHA256, or Ed25519 when ``cryptography`` is installed; see
:mod:`overread.audit.signing`) under a key the database does not hold, so every record up to the
newest checkpoint is fixed: editing, deleting, reordering or truncating it is
detected by :func:`~overread.audit.chain.verify_chain` even if the tamperer
re-hashes the chain.

The key comes from ``OVERREAD_AUDIT_KEY`` (hex, or any text) or from
``<data_dir>/audit/checkpoint.key``, created (mode 0600) on first use. Keep the key,
and copies of the checkpoint files, away from the database host's writers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from sqlalchemy import Connection, Engine, func, select
from sqlalchemy.orm import Session

from overread.audit.actions import AuditAction
from overread.audit.chain import (
    Checkpoint,
    canonical_json,
    format_timestamp,
    record_event,
    verify_chain,
)
from overread.audit.schema import AuditEvent
from overread.audit.signing import (
    HMAC_ALGORITHM,
    KEY_ENV,
    CheckpointSigner,
    HmacSigner,
    load_checkpoint_key,
    load_checkpoint_signer,
    load_verification_ring,
)
from overread.errors import AuditError

logger = logging.getLogger(__name__)

#: Seconds before trying again after a failure that is not a broken chain.
_SHORT_BACKOFF = 30.0

ALGORITHM = HMAC_ALGORITHM
_FORMAT_VERSION = 1


def checkpoint_dir(data_dir: Path) -> Path:
    """Where checkpoints of the chain in ``data_dir`` are kept."""
    return data_dir / "audit" / "checkpoints"


def key_id(key: bytes) -> str:
    """A short public fingerprint of an HMAC key, so a checkpoint names the key it needs."""
    return HmacSigner(key).key_id


def _as_signer(key: bytes | CheckpointSigner) -> CheckpointSigner:
    return HmacSigner(key) if isinstance(key, bytes) else key


# A key, or several (the current one and retired ones) any of which may have signed.
CheckpointKeys = bytes | CheckpointSigner | Sequence[CheckpointSigner]


def _ring(keys: CheckpointKeys) -> list[CheckpointSigner]:
    if isinstance(keys, bytes):
        return [HmacSigner(keys)]
    if isinstance(keys, Sequence):
        return [cast(CheckpointSigner, k) for k in keys]
    return [keys]


def write_checkpoint(
    source: Session | Connection | Engine,
    directory: Path,
    key: bytes | CheckpointSigner,
    *,
    retired: Sequence[CheckpointSigner] = (),
    incremental: bool = False,
) -> Checkpoint:
    """Verify the chain, then write a signed checkpoint of its head into ``directory``.

    ``key`` is an HMAC key or a :class:`~overread.audit.signing.CheckpointSigner`
    (e.g. Ed25519, from :func:`~overread.audit.signing.load_checkpoint_signer`);
    ``retired`` are keys that signed earlier checkpoints.

    The chain is verified against the existing checkpoints first: signing a chain
    that is already broken would launder the tampering. By default the whole chain
    is recomputed against every checkpoint; with ``incremental`` only the newest
    checkpoint is read (its signature checked), its record checked against it, and
    the records after it recomputed (:func:`~overread.audit.chain.verify_chain`'s
    ``since``). That cannot launder an edit before the newest checkpoint either:
    the new head's hash still commits, through the checkpointed record, to the
    records as they were signed, so a full verify names the edit.

    Raises
    ------
    AuditError
        If the chain does not verify, or an existing checkpoint's signature fails.
    """
    signer = _as_signer(key)
    if not signer.can_sign:
        raise AuditError("cannot write a checkpoint: only the public key is available")
    ring = [signer, *retired]
    if incremental:
        newest = latest_checkpoint(directory, ring)
        result = verify_chain(source, since=newest)
    else:
        result = verify_chain(source, checkpoints=load_checkpoints(directory, ring))
    if not result.ok:
        raise AuditError(f"not writing a checkpoint over a broken chain: {result.summary()}")
    body: dict[str, object] = {
        "version": _FORMAT_VERSION,
        "head_seq": result.head_seq,
        "head_hash": result.head_hash,
        "count": result.count,
        "created_at": format_timestamp(datetime.now(UTC)),
        "algorithm": signer.algorithm,
        "key_id": signer.key_id,
    }
    document = {**body, "signature": signer.sign(canonical_json(body))}
    directory.mkdir(parents=True, exist_ok=True)
    stamp = str(body["created_at"]).replace(":", "").replace("-", "").replace(".", "")
    path = directory / f"checkpoint-{result.head_seq:012d}-{stamp}.json"
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        json.dump(document, handle, indent=2, sort_keys=True)
        handle.write("\n")
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)
    return Checkpoint(
        path=path,
        head_seq=result.head_seq,
        head_hash=result.head_hash,
        count=result.count,
        created_at=str(body["created_at"]),
    )


def read_checkpoint(path: Path, key: CheckpointKeys) -> Checkpoint:
    """Read one checkpoint file and check its signature.

    Raises
    ------
    AuditError
        If the file is unreadable, malformed, signed with another key, or its
        signature does not match (the file was edited).
    """
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        signature = str(document.pop("signature"))
        head_seq = int(document["head_seq"])
        head_hash = str(document["head_hash"])
        count = int(document["count"])
        created_at = str(document["created_at"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise AuditError(f"{path}: not a readable audit checkpoint ({exc})") from None
    ring = _ring(key)
    wanted = (document.get("algorithm"), document.get("key_id"))
    matching = [k for k in ring if (k.algorithm, k.key_id) == wanted]
    if not matching:
        known = ", ".join(f"{k.algorithm} key {k.key_id}" for k in ring) or "none"
        raise AuditError(
            f"{path}: signed with {wanted[0]} key {wanted[1]}, not the configured "
            f"or a retired key ({known})"
        )
    signer = matching[0]
    if not signer.verify(canonical_json(document), signature):
        raise AuditError(f"{path}: checkpoint signature does not match: the file was altered")
    if count != head_seq:
        raise AuditError(f"{path}: checkpoint count {count} differs from head seq {head_seq}")
    return Checkpoint(
        path=path, head_seq=head_seq, head_hash=head_hash, count=count, created_at=created_at
    )


def load_checkpoints(directory: Path, key: CheckpointKeys) -> list[Checkpoint]:
    """Every checkpoint in ``directory``, signature-checked, oldest head first."""
    if not directory.is_dir():
        return []
    found = [read_checkpoint(path, key) for path in sorted(directory.glob("checkpoint-*.json"))]
    return sorted(found, key=lambda c: (c.head_seq, c.created_at))


_NAME = re.compile(r"checkpoint-(\d{12})-[^/]*\.json")


def latest_checkpoint(directory: Path, key: CheckpointKeys) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` (highest head seq), signature-checked.

    Only that one file is read, whatever the number of older ones: file names start
    with the zero-padded head seq, so the last name is the newest head; a file whose
    name does not match the head seq it signs is refused (a renamed older checkpoint).

    Raises
    ------
    AuditError
        If that file is unreadable or its signature fails.
    """
    if not directory.is_dir():
        return None
    named = sorted(
        (int(match.group(1)), path)
        for path in directory.glob("checkpoint-*.json")
        if (match := _NAME.fullmatch(path.name))
    )
    if not named:
        return None
    seq, path = named[-1]
    found = read_checkpoint(path, key)
    if seq != found.head_seq:
        # A renamed older file would otherwise become the anchor of every later check.
        raise AuditError(f"{path}: its name says head seq {seq}, the signed file {found.head_seq}")
    return found


def missing_checkpoints(
    source: Session | Connection | Engine, directory: Path
) -> list[tuple[int, str]]:
    """Checkpoints the chain says were written (``audit-checkpoint`` events) but are gone.

    Deleting checkpoint files would remove the anchors that catch truncation; the
    chain itself remembers each checkpoint written, so their disappearance shows.

    Returns
    -------
    list of (int, str)
        The seq of the recording event and the missing file's name.
    """
    if isinstance(source, Engine):
        with source.connect() as connection:
            return missing_checkpoints(connection, directory)
    rows = source.execute(
        select(AuditEvent.seq, AuditEvent.details)
        .where(AuditEvent.action == AuditAction.AUDIT_CHECKPOINT.value)
        .order_by(AuditEvent.seq)
    ).all()
    missing = []
    for seq, details in rows:
        name = str((details or {}).get("file", ""))
        if name and not (directory / Path(name).name).is_file():
            missing.append((int(seq), name))
    return missing


def checkpoint_now(
    engine: Engine, data_dir: Path, *, actor: str, incremental: bool = False
) -> Checkpoint:
    """Write a signed checkpoint of the chain in ``data_dir`` and record it in the chain.

    The key is the one configured for ``data_dir`` (created on first use, see
    :func:`~overread.audit.signing.load_checkpoint_signer`); the ``audit-checkpoint``
    event names the file, so deleting it later shows. ``incremental``: verify only
    from the newest checkpoint on (see :func:`write_checkpoint`).

    Raises
    ------
    AuditError
        If the chain does not verify, or no signing key is available.
    """
    signer = load_checkpoint_signer(data_dir, create=True)
    written = write_checkpoint(
        engine,
        checkpoint_dir(data_dir),
        signer,
        retired=load_verification_ring(data_dir),
        incremental=incremental,
    )
    with Session(engine) as session, session.begin():
        record_event(
            session,
            actor=actor,
            role="service",
            action=AuditAction.AUDIT_CHECKPOINT,
            details={
                "file": written.name,
                "head_seq": written.head_seq,
                "head_hash": written.head_hash,
            },
        )
    return written


class AutoCheckpointer:
    """Signed checkpoints written by the gateway itself, so truncation shows in practice.

    A checkpoint is written once ``every_events`` events were recorded since the last
    one, or ``every_seconds`` after it when anything was recorded at all (the
    ``audit-checkpoint`` events themselves do not count). Either bound may be 0 to
    switch it off. A chain that no longer verifies is not signed over: the failure is
    logged as an error, then not tried again for ``retry_seconds`` (``every_seconds``,
    or 5 minutes when that bound is off), and the gateway carries on.

    The first checkpoint this object writes verifies the whole chain against every
    checkpoint (a full verify reads every event once); later ones verify from the
    newest checkpoint on (``incremental`` in :func:`write_checkpoint`), so their cost
    is the events since the last checkpoint, not the length of the trail. After a
    refusal the next try is a full verify again, and so is the first checkpoint due
    ``full_every_seconds`` (86,400 s by default) after the last full one; 0 or less:
    only the first check is full.
    """

    def __init__(
        self,
        engine: Engine,
        data_dir: Path,
        *,
        every_events: int = 100,
        every_seconds: float = 300.0,
        poll_seconds: float = 2.0,
        actor: str = "service:audit",
        full_every_seconds: float = 86_400.0,
    ) -> None:
        self.engine = engine
        self.data_dir = Path(data_dir)
        self.every_events = every_events
        self.every_seconds = every_seconds
        self.poll_seconds = poll_seconds
        self.actor = actor
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_at = time.monotonic()
        self._failed_at: float | None = None
        self._backoff = 0.0
        self.retry_seconds = every_seconds if every_seconds > 0 else 300.0
        self.written: list[Checkpoint] = []
        # Whether a full verify has passed since start: later checks go incremental,
        # until ``full_every_seconds`` after that full one (then one full check again, so
        # an edit before the newest checkpoint is reported by the gateway itself too).
        self._verified_whole = False
        self.full_every_seconds = full_every_seconds
        self._full_at = 0.0

    @property
    def enabled(self) -> bool:
        """Whether either bound is set."""
        return self.every_events > 0 or self.every_seconds > 0

    def start(self) -> None:
        """Check in a background thread until :meth:`stop`."""
        if not self.enabled or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="audit-checkpoints", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop checking (a last checkpoint is written when one is due)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.check()
        self._check(respect_backoff=False)  # a last one when due, on the way out

    def pending(self) -> int:
        """Events recorded since the last ``audit-checkpoint`` event."""
        with self.engine.connect() as connection:
            head = connection.scalar(select(func.max(AuditEvent.seq))) or 0
            last = (
                connection.scalar(
                    select(func.max(AuditEvent.seq)).where(
                        AuditEvent.action == AuditAction.AUDIT_CHECKPOINT.value
                    )
                )
                or 0
            )
        return int(head) - int(last)

    def due(self, pending: int, now: float | None = None) -> bool:
        """Whether ``pending`` new events call for a checkpoint now."""
        now = time.monotonic() if now is None else now
        if pending <= 0:
            return False
        if self.every_events > 0 and pending >= self.every_events:
            return True
        return self.every_seconds > 0 and now - self._last_at >= self.every_seconds

    def check(self) -> Checkpoint | None:
        """Write a checkpoint if one is due; never raises."""
        return self._check(respect_backoff=True)

    def _check(self, *, respect_backoff: bool) -> Checkpoint | None:
        now = time.monotonic()
        if (
            respect_backoff
            and self._failed_at is not None
            and now - self._failed_at < self._backoff
        ):
            return None  # it failed recently: do not re-verify and re-log every poll
        try:
            if not self.due(self.pending(), now):
                return None
            incremental = self._verified_whole and (
                self.full_every_seconds <= 0 or now - self._full_at < self.full_every_seconds
            )
            written = checkpoint_now(
                self.engine, self.data_dir, actor=self.actor, incremental=incremental
            )
        except AuditError as exc:  # a broken chain stays broken: wait the interval
            logger.error("audit checkpoint not written: %s", exc)
            self._verified_whole = False
            self._failed_at, self._backoff = time.monotonic(), self.retry_seconds
            return None
        except Exception:  # e.g. the database briefly away: try again soon
            logger.exception("audit checkpoint failed")
            self._failed_at, self._backoff = time.monotonic(), _SHORT_BACKOFF
            return None
        self._failed_at = None
        if not incremental:
            self._full_at = now
        self._verified_whole = True
        self._last_at = time.monotonic()
        self.written.append(written)
        logger.info("audit checkpoint at record %d: %s", written.head_seq, written.name)
        return written


__all__ = [
    "ALGORITHM",
    "KEY_ENV",
    "AutoCheckpointer",
    "Checkpoint",
    "CheckpointKeys",
    "checkpoint_dir",
    "checkpoint_now",
    "key_id",
    "latest_checkpoint",
    "load_checkpoint_key",
    "load_checkpoints",
    "missing_checkpoints",
    "read_checkpoint",
    "write_checkpoint",
]
