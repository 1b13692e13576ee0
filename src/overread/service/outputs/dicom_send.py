"""Send results to a PACS with DICOM C-STORE.

One association carries all datasets of one delivery (an SR and its overlays), so
a PACS sees them arrive together. Each dataset gets its own status, because a PACS
may store the SR and refuse a Secondary Capture it has no storage for; the caller
(the job system) decides what to retry. What cannot be a per-dataset status - the
peer refusing or dropping the association, or nothing listening - raises
:class:`DeliveryError` naming the peer and the reason, which is what an
operator needs to fix a destination.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from overread.errors import ServiceError
from overread.imaging import read_dataset

logger = logging.getLogger(__name__)

_DESTINATION_RE = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")
_AE_CHARS_RE = re.compile(r"^[ -~]+$")

#: C-STORE status codes that mean "stored" (PS3.4 Table B.2-1): success, and the
#: warnings "coercion of data elements", "elements discarded", "data set does not
#: match SOP class".
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})


class DeliveryError(ServiceError):
    """A result could not be delivered: association refused, aborted, or no peer.

    Attributes
    ----------
    peer
        The destination, as ``AE@host:port`` or a URL.
    results
        Per-dataset results obtained before the failure (possibly empty).
    retryable
        Whether trying again later may succeed (a transient refusal, an abort, a
        peer that is down); ``False`` for permanent refusals such as an unknown
        called AE title.
    response
        For HTTP deliveries, the :class:`~.http_send.HttpResult` parsed from the
        server's answer (which instances it stored and which it refused), if any.
    """

    def __init__(
        self,
        message: str,
        *,
        peer: str,
        results: Sequence[SendResult] = (),
        retryable: bool = True,
        response: Any = None,
    ) -> None:
        super().__init__(message)
        self.peer = peer
        self.results = list(results)
        self.retryable = retryable
        self.response = response


def _check_ae_title(value: str, what: str) -> str:
    title = value.strip()
    if not title or len(title) > 16 or not _AE_CHARS_RE.match(title) or "\\" in title:
        raise ServiceError(f"{what} {value!r} is not a valid AE title (1-16 printable ASCII)")
    return title


@dataclass(frozen=True)
class DicomDestination:
    """A DICOM storage peer: called AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", _check_ae_title(self.ae_title, "called AE title"))
        if not self.host:
            raise ServiceError("DICOM destination needs a host")
        if not 0 < int(self.port) < 65536:
            raise ServiceError(f"DICOM destination port {self.port} is outside 1-65535")

    @classmethod
    def parse(cls, text: str) -> DicomDestination:
        """Parse ``AE@host:port`` (IPv6 hosts in brackets: ``AE@[::1]:104``).

        Raises
        ------
        ServiceError
            If ``text`` is not of that form.
        """
        match = _DESTINATION_RE.match(text.strip())
        if match is None:
            raise ServiceError(f"DICOM destination {text!r} is not of the form AE@host:port")
        host = match["host"].strip("[]")
        return cls(match["ae"], host, int(match["port"]))

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


@dataclass(frozen=True)
class SendResult:
    """The outcome of storing one dataset."""

    sop_instance_uid: str
    sop_class_uid: str
    status: int | None
    message: str = ""

    @property
    def ok(self) -> bool:
        """Whether the peer stored the dataset (success or a storage warning)."""
        return self.status is not None and self.status in STORED_STATUSES


DatasetOrPath = Dataset | str | PathLike[str]


def load_dataset(item: DatasetOrPath) -> Dataset:
    if isinstance(item, Dataset):
        return item
    path = Path(item)
    try:
        return read_dataset(path)
    except Exception as exc:
        raise ServiceError(f"{path}: cannot be read as DICOM ({exc})") from exc


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    uid = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(uid) if uid else str(ExplicitVRLittleEndian)


def _describe_rejection(assoc: Any) -> tuple[str, bool]:
    primitive = getattr(getattr(assoc, "acceptor", None), "primitive", None)
    if primitive is None or getattr(primitive, "result", None) not in (0x01, 0x02):
        return "association rejected", True
    text = f"{primitive.result_str}, source: {primitive.source_str}, reason: {primitive.reason_str}"
    return text, primitive.result == 0x02


def send_datasets(
    datasets: Iterable[DatasetOrPath],
    destination: DicomDestination | str,
    *,
    calling_ae: str = "OVERREAD",
    acse_timeout: float = 30.0,
    dimse_timeout: float = 60.0,
    network_timeout: float = 60.0,
    tls: ssl.SSLContext | None = None,
    tls_server_hostname: str | None = None,
) -> list[SendResult]:
    """C-STORE ``datasets`` to ``destination`` over one association.

    Parameters
    ----------
    datasets
        Datasets, or paths of DICOM files, to send.
    destination
        The peer, or its ``AE@host:port`` text.
    calling_ae
        Our AE title, as the peer knows it.
    acse_timeout, dimse_timeout, network_timeout
        Seconds to wait for association negotiation, for each C-STORE response, and
        on an idle connection.
    tls
        A client :class:`ssl.SSLContext` to send over DICOM TLS (PS3.15 Annex B);
        it decides which CAs are trusted and whether we present a certificate.
    tls_server_hostname
        Name to check the peer's certificate against; defaults to the host.

    Returns
    -------
    list[SendResult]
        One result per dataset, in order. A dataset the peer refused (or whose SOP
        class it did not accept) has ``ok == False`` and its status or reason.

    Raises
    ------
    DeliveryError
        If nothing accepts the connection, the peer rejects the association or
        accepts none of the SOP classes, or the association is aborted or a
        C-STORE goes unanswered mid-transfer (results so far are attached).
    """
    peer = (
        destination
        if isinstance(destination, DicomDestination)
        else DicomDestination.parse(destination)
    )
    items = [load_dataset(item) for item in datasets]
    if not items:
        return []
    for ds in items:
        if "SOPClassUID" not in ds or "SOPInstanceUID" not in ds:
            raise ServiceError("dataset to send lacks SOP Class UID or SOP Instance UID")

    ae = AE(ae_title=_check_ae_title(calling_ae, "calling AE title"))
    ae.acse_timeout = acse_timeout
    ae.dimse_timeout = dimse_timeout
    ae.network_timeout = network_timeout
    syntaxes: dict[str, list[str]] = {}
    for ds in items:
        wanted = syntaxes.setdefault(str(ds.SOPClassUID), [])
        for uid in (_transfer_syntax(ds), str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)):
            if uid not in wanted:
                wanted.append(uid)
    if len(syntaxes) > 128:
        raise ServiceError(
            f"{len(syntaxes)} SOP classes in one send; at most 128 fit an association"
        )
    for sop_class, transfer_syntaxes in syntaxes.items():
        ae.add_requested_context(sop_class, transfer_syntaxes)

    tls_args = (tls, tls_server_hostname or peer.host) if tls is not None else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    if assoc.is_rejected:
        reason, transient = _describe_rejection(assoc)
        raise DeliveryError(
            f"{peer} rejected the association from {calling_ae}: {reason}",
            peer=str(peer),
            retryable=transient,
        )
    if not assoc.is_established:
        connected = getattr(getattr(assoc, "acceptor", None), "primitive", None) is not None
        if connected:
            what = "accepted none of the proposed SOP classes / transfer syntaxes"
        elif tls is not None:
            what = (
                "could not be reached over TLS (connection refused, timed out, TLS "
                "handshake or certificate verification failed, or aborted by the peer)"
            )
        else:
            what = "could not be reached (connection refused, timed out, or aborted by the peer)"
        raise DeliveryError(f"{peer} {what}", peer=str(peer))

    results: list[SendResult] = []
    try:
        for ds in items:
            sop_uid, sop_class = str(ds.SOPInstanceUID), str(ds.SOPClassUID)
            started = time.monotonic()
            try:
                response = assoc.send_c_store(ds)
            except (ValueError, RuntimeError) as exc:
                # No accepted presentation context for this SOP class / transfer syntax.
                results.append(SendResult(sop_uid, sop_class, None, str(exc)))
                continue
            status = getattr(response, "Status", None)
            if status is None:
                # No C-STORE response: the peer aborted or dropped the connection,
                # or did not answer within the DIMSE timeout (pynetdicom then aborts
                # the association). Either way nothing more can be sent on it.
                elapsed = time.monotonic() - started
                what = (
                    f"did not answer within {dimse_timeout:g} s"
                    if elapsed >= dimse_timeout * 0.95
                    else "aborted the association or closed the connection"
                )
                raise DeliveryError(
                    f"{peer} {what} while storing {sop_uid} "
                    f"({len(results)} of {len(items)} datasets answered)",
                    peer=str(peer),
                    results=results,
                )
            comment = str(getattr(response, "ErrorComment", "") or "")
            result = SendResult(sop_uid, sop_class, int(status), comment)
            results.append(result)
            log = logger.info if result.ok else logger.warning
            log(
                "C-STORE to %s: %s status 0x%04X",
                peer,
                sop_uid,
                int(status),
                extra={"peer": str(peer), "sop_instance_uid": sop_uid, "status": int(status)},
            )
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def echo(
    destination: DicomDestination | str,
    *,
    calling_ae: str = "OVERREAD",
    timeout: float = 10.0,
    tls: ssl.SSLContext | None = None,
) -> float:
    """Check a destination with C-ECHO (Verification); return the round trip in seconds.

    Lets the service check its configured PACS at start-up, and an operator test a
    destination, before any result depends on it.

    Raises
    ------
    DeliveryError
        If the association is refused or fails, or the echo does not succeed.
    """
    peer = (
        destination
        if isinstance(destination, DicomDestination)
        else DicomDestination.parse(destination)
    )
    ae = AE(ae_title=_check_ae_title(calling_ae, "calling AE title"))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout
    ae.add_requested_context(Verification)
    started = time.monotonic()
    tls_args = (tls, peer.host) if tls is not None else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    if assoc.is_rejected:
        reason, transient = _describe_rejection(assoc)
        raise DeliveryError(
            f"{peer} rejected the association from {calling_ae}: {reason}",
            peer=str(peer),
            retryable=transient,
        )
    if not assoc.is_established:
        raise DeliveryError(f"{peer} could not be reached for C-ECHO", peer=str(peer))
    try:
        status = getattr(assoc.send_c_echo(), "Status", None)
    finally:
        if assoc.is_established:
            assoc.release()
    if status != 0x0000:
        shown = "no response" if status is None else f"status 0x{int(status):04X}"
        raise DeliveryError(f"{peer} answered C-ECHO with {shown}", peer=str(peer))
    return time.monotonic() - started


__all__ = [
    "STORED_STATUSES",
    "DeliveryError",
    "DicomDestination",
    "SendResult",
    "echo",
    "send_datasets",
]
