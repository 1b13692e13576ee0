"""A C-STORE SCU for files: ``overread send`` and the export jobs use it.

Files are sent as they are encoded on disk (pynetdicom reads the file meta for the
SOP class and transfer syntax and streams the rest), so what arrives at the PACS is
byte for byte what was stored. One association carries a whole batch; presentation
contexts are proposed for the (SOP class, transfer syntax) pairs the batch needs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE

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
    for batch in batches:
        for status in _send_batch(batch, ae_title, host, port, calling_ae, timeout):
            statuses[status.path] = status
    return [statuses[p] for p in paths]


def _send_batch(
    batch: list[_Prepared],
    ae_title: str,
    host: str,
    port: int,
    calling_ae: str,
    timeout: float,
) -> list[SendStatus]:
    if not 1 <= len(ae_title.strip()) <= 16:
        raise ServiceError(f"invalid called AE title {ae_title!r}")
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    pairs: dict[str, set[str]] = {}
    for item in batch:
        syntaxes = pairs.setdefault(item.sop_class_uid, set())
        syntaxes.add(item.transfer_syntax_uid)
    for sop_class, syntaxes in pairs.items():
        # Offer each file's own syntax, with the uncompressed ones as fallbacks only when
        # the file is uncompressed (a compressed file cannot be sent as another syntax).
        wanted = sorted(syntaxes)
        if all(s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) for s in syntaxes):
            wanted = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        ae.add_requested_context(sop_class, wanted)
    try:
        assoc = ae.associate(host, port, ae_title=ae_title.strip())
    except Exception as exc:  # socket errors surface in many types
        return [
            SendStatus(i.path, None, f"cannot connect: {exc}", i.sop_instance_uid) for i in batch
        ]
    if not assoc.is_established:
        why = "association rejected" if assoc.is_rejected else "association failed"
        return [
            SendStatus(i.path, None, f"{why} by {ae_title}@{host}:{port}", i.sop_instance_uid)
            for i in batch
        ]
    results: list[SendStatus] = []
    try:
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
    finally:
        if assoc.is_established:
            assoc.release()
    return results


__all__ = ["SendStatus", "iter_files", "send_files"]
