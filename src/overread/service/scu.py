"""A C-STORE SCU for files: ``overread send`` and the export jobs use it.

Files are sent as they are encoded on disk (pynetdicom reads the file meta for the
SOP class and transfer syntax and streams the rest), so what arrives at the PACS is
byte for byte what was stored. One association carries a whole batch; presentation
contexts are proposed for the (SOP class, transfer syntax) pairs the batch needs.
Export jobs send through an :class:`AssociationPool`, which keeps the association to
a destination open between sends for a while (checked by C-ECHO before reuse).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from overread.errors import InvalidDicomError, ServiceError
from overread.imaging import read_metadata

logger = logging.getLogger(__name__)

_MAX_CONTEXTS = 128


@dataclass(frozen=True)
class SendStatus:
    """The outcome of sending one file."""

    path: Path
    status: int | None
    error: str | None = None
    sop_instance_uid: str = ""

    @property
    def ok(self) -> bool:
        """Whether the peer acknowledged success (or a warning, 0xB000-0xBFFF)."""
        return self.status is not None and (self.status == 0 or 0xB000 <= self.status <= 0xBFFF)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    """Files named, and every file under folders named, in a stable order."""
    for path in paths:
        path = Path(path)
        if path.is_dir():
            yield from sorted(
                p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
        else:
            yield path


@dataclass(frozen=True)
class _Prepared:
    path: Path
    sop_class_uid: str
    sop_instance_uid: str
    transfer_syntax_uid: str


def _prepare(path: Path) -> _Prepared:
    header = read_metadata(path)
    if not (header.sop_class_uid and header.sop_instance_uid and header.transfer_syntax):
        raise InvalidDicomError(f"{path}: no SOP Class, SOP Instance or Transfer Syntax UID")
    return _Prepared(path, header.sop_class_uid, header.sop_instance_uid, header.transfer_syntax)


def _prepare_all(
    paths: Sequence[Path],
) -> tuple[dict[Path, SendStatus], list[list[_Prepared]]]:
    """Read each file's header; group the readable ones into batches of at most 128
    presentation contexts. Unreadable files get their status at once."""
    statuses: dict[Path, SendStatus] = {}
    prepared: list[_Prepared] = []
    for path in paths:
        try:
            prepared.append(_prepare(path))
        except (OSError, InvalidDicomError) as exc:
            statuses[path] = SendStatus(path, None, f"not a DICOM file: {exc}")
    batches: list[list[_Prepared]] = []
    current: list[_Prepared] = []
    contexts: set[tuple[str, str]] = set()
    for item in prepared:
        needed = {(item.sop_class_uid, item.transfer_syntax_uid)}
        if item.transfer_syntax_uid != ExplicitVRLittleEndian:
            needed.add((item.sop_class_uid, ExplicitVRLittleEndian))
        if len(contexts | needed) > _MAX_CONTEXTS and current:
            batches.append(current)
            current, contexts = [], set()
        current.append(item)
        contexts |= needed
    if current:
        batches.append(current)
    return statuses, batches


def send_files(
    paths: Sequence[Path],
    *,
    ae_title: str,
    host: str,
    port: int,
    calling_ae: str = "OVERREAD",
    timeout: float = 30.0,
) -> list[SendStatus]:
    """C-STORE every file to ``ae_title@host:port``; one status per file, in order.

    Unreadable files get a status of ``None`` with an error and do not stop the batch.
    Batches needing more than 128 presentation contexts are split over associations.

    Raises
    ------
    ServiceError
        Never for a per-file problem; only when the arguments themselves are unusable.
    """
    statuses, batches = _prepare_all(paths)
    for batch in batches:
        for status in _send_batch(batch, ae_title, host, port, calling_ae, timeout):
            statuses[status.path] = status
    return [statuses[p] for p in paths]


def _requested_contexts(batch: Sequence[_Prepared]) -> list[tuple[str, list[str]]]:
    """(SOP class, transfer syntaxes) to propose for ``batch``."""
    pairs: dict[str, set[str]] = {}
    for item in batch:
        pairs.setdefault(item.sop_class_uid, set()).add(item.transfer_syntax_uid)
    wanted: list[tuple[str, list[str]]] = []
    for sop_class, syntaxes in pairs.items():
        # Offer each file's own syntax, with the uncompressed ones as fallbacks only when
        # the file is uncompressed (a compressed file cannot be sent as another syntax).
        offered = sorted(syntaxes)
        if all(s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) for s in syntaxes):
            offered = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        wanted.append((sop_class, offered))
    return wanted


def _open(
    batch: Sequence[_Prepared],
    ae_title: str,
    host: str,
    port: int,
    calling_ae: str,
    timeout: float,
    *,
    verification: bool = False,
) -> tuple[Association | None, str]:
    """An association proposing what ``batch`` needs (and C-ECHO when asked), or
    ``None`` with why not."""
    if not 1 <= len(ae_title.strip()) <= 16:
        raise ServiceError(f"invalid called AE title {ae_title!r}")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    for sop_class, syntaxes in _requested_contexts(batch):
        ae.add_requested_context(sop_class, syntaxes)
    if verification:
        ae.add_requested_context(Verification)
    try:
        assoc = ae.associate(host, port, ae_title=ae_title.strip())
    except Exception as exc:  # socket errors surface in many types
        return None, f"cannot connect: {exc}"
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "association failed"
        return None, f"{why} by {ae_title}@{host}:{port}"
    _no_delay(assoc)
    return assoc, ""


def _no_delay(assoc: Association) -> None:
    """Send each PDU at once: a C-STORE is request then answer, and Nagle's algorithm
    with the peer's delayed acknowledgement would hold its last segment for ~40 ms."""
    raw = getattr(getattr(assoc.dul, "socket", None), "socket", None)
    if isinstance(raw, socket.socket):
        with contextlib.suppress(OSError):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _store_all(assoc: Association, batch: Sequence[_Prepared]) -> list[SendStatus]:
    """C-STORE each item on an established association."""
    results: list[SendStatus] = []
    for item in batch:
        try:
            rsp = assoc.send_c_store(item.path)
        except Exception as exc:  # no accepted context, decode errors, ...
            results.append(SendStatus(item.path, None, str(exc), item.sop_instance_uid))
            continue
        status = int(rsp.Status) if rsp is not None and "Status" in rsp else None
        error = None
        if status is None:
            error = "no response (timeout or aborted association)"
        elif status != 0 and not 0xB000 <= status <= 0xBFFF:
            comment = str(rsp.get("ErrorComment", "") or "")
            error = f"peer answered 0x{status:04X}" + (f": {comment}" if comment else "")
        results.append(SendStatus(item.path, status, error, item.sop_instance_uid))
        if not assoc.is_established:
            for rest in batch[len(results) :]:
                results.append(
                    SendStatus(rest.path, None, "association lost", rest.sop_instance_uid)
                )
            break
    return results


def _send_batch(
    batch: list[_Prepared],
    ae_title: str,
    host: str,
    port: int,
    calling_ae: str,
    timeout: float,
) -> list[SendStatus]:
    assoc, why = _open(batch, ae_title, host, port, calling_ae, timeout)
    if assoc is None:
        return [SendStatus(i.path, None, why, i.sop_instance_uid) for i in batch]
    try:
        return _store_all(assoc, batch)
    finally:
        if assoc.is_established:
            assoc.release()


@dataclass
class _Kept:
    """An association kept open for the next send to the same peer."""

    assoc: Association
    contexts: frozenset[tuple[str, str]]
    last_used: float


class AssociationPool:
    """Associations to DICOM destinations kept open between sends (one idle per peer).

    A send to a peer takes the association left by the previous one when it is
    still established, was idle for less than ``idle_seconds``, accepted every
    (SOP class, transfer syntax) the new files need, and answers a C-ECHO; otherwise
    it is released and a new one opened (proposing Verification too). While a send
    holds it no other send can take it (they open their own); when a send is done
    its association is kept unless one is kept for that peer already, in which case
    it is released, so a peer never sees more idle associations from this process
    than one; and it is released too while another send waits to open one (a peer
    that takes one association at a time would keep that send waiting). An association that fails during a send is aborted, never kept. The
    worker threads of a process share one pool.

    Parameters
    ----------
    idle_seconds
        How long an unused association stays open (0: none is kept).
    clock
        Monotonic seconds (replaceable in tests).
    """

    def __init__(
        self, idle_seconds: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.idle_seconds = idle_seconds
        self.clock = clock
        self._kept: dict[tuple[str, str, int, str], _Kept] = {}
        self._opening: dict[tuple[str, str, int, str], int] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.opened = 0
        self.reused = 0

    def send(
        self,
        paths: Sequence[Path],
        *,
        ae_title: str,
        host: str,
        port: int,
        calling_ae: str = "OVERREAD",
        timeout: float = 30.0,
    ) -> list[SendStatus]:
        """Like :func:`send_files`, on a kept association where one is usable."""
        if self.idle_seconds <= 0:
            return send_files(
                paths,
                ae_title=ae_title,
                host=host,
                port=port,
                calling_ae=calling_ae,
                timeout=timeout,
            )
        statuses, batches = _prepare_all(paths)
        key = (ae_title.strip(), host, port, calling_ae)
        for batch in batches:
            for status in self._send_kept(key, batch, timeout):
                statuses[status.path] = status
        return [statuses[p] for p in paths]

    def _send_kept(
        self, key: tuple[str, str, int, str], batch: list[_Prepared], timeout: float
    ) -> list[SendStatus]:
        needed = {(i.sop_class_uid, i.transfer_syntax_uid) for i in batch}
        kept = self._usable(key, needed)
        if kept is None:
            # Counted as opening from before the kept association was looked for:
            # a send finishing meanwhile releases its association instead of
            # keeping it, so a peer taking one association at a time lets this in.
            try:
                assoc, why = _open(batch, *key, timeout, verification=True)
            finally:
                with self._lock:
                    self._opening[key] -= 1
            if assoc is None:
                return [SendStatus(i.path, None, why, i.sop_instance_uid) for i in batch]
            with self._lock:
                self.opened += 1
            kept = _Kept(assoc, _accepted(assoc), self.clock())
        else:
            with self._lock:
                self.reused += 1
        try:
            results = _store_all(kept.assoc, batch)
        except BaseException:
            _end(kept.assoc, abort=True)
            raise
        if kept.assoc.is_established and all(s.status is not None for s in results):
            kept.last_used = self.clock()
            self._give_back(key, kept)
        else:
            _end(kept.assoc, abort=True)
        return results

    def _give_back(self, key: tuple[str, str, int, str], kept: _Kept) -> None:
        with self._lock:
            spare = self._closed or key in self._kept or self._opening.get(key, 0) > 0
            if not spare:
                self._kept[key] = kept
        if spare:
            _end(kept.assoc)

    def _usable(self, key: tuple[str, str, int, str], needed: set[tuple[str, str]]) -> _Kept | None:
        """The kept association for ``key`` if it can carry ``needed``; else ``None``,
        and the caller is counted as opening one (it must uncount itself)."""
        with self._lock:
            kept = self._kept.pop(key, None)  # taken: no other send can use it now
            if kept is None:
                self._opening[key] = self._opening.get(key, 0) + 1
                return None
        usable = self._check(key, kept, needed)
        if usable is None:
            with self._lock:
                self._opening[key] = self._opening.get(key, 0) + 1
        return usable

    def _check(
        self, key: tuple[str, str, int, str], kept: _Kept, needed: set[tuple[str, str]]
    ) -> _Kept | None:
        idle = self.clock() - kept.last_used
        if not kept.assoc.is_established or idle >= self.idle_seconds:
            _end(kept.assoc)
            return None
        if not needed <= kept.contexts:
            _end(kept.assoc)  # files of another kind: negotiate again
            return None
        try:
            rsp = kept.assoc.send_c_echo()
        except Exception as exc:
            logger.info("kept association to %s failed its C-ECHO: %s", key[0], exc)
            rsp = None
        if rsp is None or int(rsp.get("Status", -1)) != 0 or not kept.assoc.is_established:
            _end(kept.assoc, abort=True)
            return None
        return kept

    def close_idle(self) -> int:
        """Release the associations idle for ``idle_seconds`` or more; return how many."""
        now = self.clock()
        with self._lock:
            stale = [k for k, v in self._kept.items() if now - v.last_used >= self.idle_seconds]
            ended = [self._kept.pop(k) for k in stale]
        for kept in ended:
            _end(kept.assoc)
        return len(ended)

    def close(self) -> None:
        """Release every kept association; later sends keep none."""
        with self._lock:
            self._closed = True
            ended = list(self._kept.values())
            self._kept.clear()
        for kept in ended:
            _end(kept.assoc)

    @property
    def open_count(self) -> int:
        """Associations kept open now."""
        with self._lock:
            return len(self._kept)


def _accepted(assoc: Association) -> frozenset[tuple[str, str]]:
    return frozenset(
        (str(c.abstract_syntax), str(ts))
        for c in assoc.accepted_contexts
        for ts in c.transfer_syntax
    )


def _end(assoc: Association, *, abort: bool = False) -> None:
    """Release (or abort) an association; errors are logged, never raised."""
    try:
        if assoc.is_established:
            if abort:
                assoc.abort()
            else:
                assoc.release()
    except Exception as exc:
        logger.info("closing an association failed: %s", exc)


__all__ = ["AssociationPool", "SendStatus", "iter_files", "send_files"]
