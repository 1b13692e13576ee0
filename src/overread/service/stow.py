"""STOW-RS ingest (DICOMweb Store, PS3.18 §10.5) through the same durable path as C-STORE.

``POST /dicom-web/studies`` with a ``multipart/related; type="application/dicom"``
body. Each part goes through :class:`~overread.service.ingest.Ingestor` (fsync'd and
committed before the response), and the response is the standard DICOM JSON with a
Referenced SOP Sequence for the stored instances and a Failed SOP Sequence for the
others: HTTP 200 when all were stored, 202 when some failed, 409 when none was stored.
A part whose Study, Series, SOP Instance or SOP Class UID is malformed is refused with
reason 0xC000 (its SOP Class and Instance UIDs are named in the Failed SOP Sequence
where those two are well formed) and nothing of it is stored.
"""

from __future__ import annotations

import logging
import mmap
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from overread.audit import AuditAction
from overread.errors import InvalidDicomError, InvalidUidError
from overread.imaging import read_instance
from overread.service.diskspace import InsufficientStorageError
from overread.service.ingest import Ingestor, IngestOutcome, record_refusal

logger = logging.getLogger(__name__)

STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_STUDY_MISMATCH = 0xA900

_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


class StowRequestError(ValueError):
    """The request cannot be read as a STOW-RS request.

    ``status`` is its HTTP answer (PS3.18 10.5.3): 415 for a body that is not
    ``multipart/related``, 400 for one that is but cannot be parsed (no boundary,
    no part).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


#: A body the parts are found in: the bytes, or a memory map of the spooled request.
Body = bytes | mmap.mmap


def boundary_of(content_type: str) -> str:
    """The boundary of a ``multipart/related`` content type (checked before any body
    is read).

    Raises
    ------
    StowRequestError
        415 when it is not ``multipart/related``; 400 when it names no boundary.
    """
    if not content_type.lower().startswith("multipart/related"):
        raise StowRequestError(
            "expected Content-Type multipart/related; type=application/dicom", status=415
        )
    match = _BOUNDARY.search(content_type)
    if match is None:
        raise StowRequestError("multipart/related without a boundary")
    return match.group(1).strip()


def iter_multipart(content_type: str, body: Body) -> Iterator[tuple[str, bytes]]:
    """The ``(content type, bytes)`` of each part of a ``multipart/related`` body, one
    at a time: only the part being handled is copied out of ``body``.

    Raises
    ------
    StowRequestError
        415 when the body is not ``multipart/related``; 400 when it has no boundary
        or no part (raised once the body is scanned, before anything else is read).
    """
    delimiter = b"--" + boundary_of(content_type).encode("ascii")
    found = False
    start = body.find(delimiter)
    while start != -1:
        begin = start + len(delimiter)
        if body[begin : begin + 2] == b"--":
            break  # the close delimiter
        following = body.find(delimiter, begin)
        end = len(body) if following == -1 else following
        if body[begin : begin + 2] == b"\r\n":
            begin += 2
        separator = body.find(b"\r\n\r\n", begin, end)
        if separator != -1:
            part_type = "application/dicom"
            for line in bytes(body[begin:separator]).decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-type":
                    part_type = value.strip()
            content_start, content_end = separator + 4, end
            if content_end - 2 >= content_start and body[content_end - 2 : content_end] == b"\r\n":
                content_end -= 2
            found = True
            yield part_type, bytes(body[content_start:content_end])
        start = following
    if not found:
        raise StowRequestError("the multipart body has no part delimited by its boundary")


def split_multipart(content_type: str, body: Body) -> list[tuple[str, bytes]]:
    """Every part of a ``multipart/related`` body at once (see :func:`iter_multipart`)."""
    return list(iter_multipart(content_type, body))


@dataclass
class StowResult:
    """What a STOW-RS request stored and refused."""

    stored: list[IngestOutcome] = field(default_factory=list)
    failed: list[tuple[str, str, int]] = field(default_factory=list)
    """(SOP class UID, SOP instance UID, failure reason) of refused parts."""

    @property
    def http_status(self) -> int:
        """200 all stored, 202 some failed, 409 none stored (PS3.18 10.5.3)."""
        if not self.failed:
            return 200
        return 202 if self.stored else 409

    @property
    def studies(self) -> set[str]:
        """Study Instance UIDs the request brought."""
        return {o.study_instance_uid for o in self.stored}

    def to_dicom_json(self) -> dict[str, Any]:
        """The response body (PS3.18 Store Instances Response Module, DICOM JSON)."""

        def ref(sop_class: str, sop_instance: str) -> dict[str, Any]:
            item: dict[str, Any] = {}
            if sop_class:
                item["00081150"] = {"vr": "UI", "Value": [sop_class]}
            if sop_instance:
                item["00081155"] = {"vr": "UI", "Value": [sop_instance]}
            return item

        body: dict[str, Any] = {}
        if self.stored:
            body["00081199"] = {
                "vr": "SQ",
                "Value": [ref(o.sop_class_uid, o.sop_instance_uid) for o in self.stored],
            }
        if self.failed:
            body["00081198"] = {
                "vr": "SQ",
                "Value": [
                    {**ref(c, i), "00081197": {"vr": "US", "Value": [reason]}}
                    for c, i, reason in self.failed
                ],
            }
        return body


def store_instances(
    ingestor: Ingestor,
    content_type: str,
    body: Body,
    *,
    client: str = "",
    study_instance_uid: str | None = None,
) -> StowResult:
    """Ingest every ``application/dicom`` part; a bad part does not stop the others.

    Each refused part is audited (``receive-refused``) with its reason.
    """
    result = StowResult()

    def refuse(sop_class: str, sop_instance: str, status: int, reason: str) -> None:
        result.failed.append((sop_class, sop_instance, status))
        record_refusal(
            ingestor.database,
            actor="ae:STOW-RS",
            action=AuditAction.RECEIVE_REFUSED,
            peer_host=client,
            reason=reason,
            object_uids=(sop_instance,),
            status=status,
        )

    for index, (part_type, data) in enumerate(iter_multipart(content_type, body), start=1):
        source = f"STOW-RS part {index} from {client or 'unknown client'}"
        if not part_type.lower().startswith("application/dicom"):
            logger.error("%s: unsupported part type %s", source, part_type)
            refuse("", "", STATUS_CANNOT_UNDERSTAND, f"part {index}: unsupported type")
            continue
        try:
            if study_instance_uid is not None:
                header = read_instance(data, source=source)
                if header.study_instance_uid != study_instance_uid:
                    logger.error("%s: belongs to study %s", source, header.study_instance_uid)
                    refuse(
                        header.sop_class_uid or "",
                        header.sop_instance_uid or "",
                        STATUS_STUDY_MISMATCH,
                        f"part {index}: belongs to another study than the request names",
                    )
                    continue
            result.stored.append(
                ingestor.ingest(data, calling_ae="STOW-RS", peer_host=client, source=source)
            )
        except InvalidUidError as exc:
            logger.error("STOW-RS refused: %s", exc)
            refuse(
                exc.sop_class_uid,
                exc.sop_instance_uid,
                STATUS_CANNOT_UNDERSTAND,
                f"part {index}: {exc.comment}",
            )
        except InvalidDicomError as exc:
            logger.error("%s", exc)
            refuse("", "", STATUS_CANNOT_UNDERSTAND, f"part {index}: not a readable DICOM data set")
        except InsufficientStorageError as exc:  # the disk crossed the watermark meanwhile
            logger.error("%s refused: %s", source, exc)
            refuse("", "", STATUS_OUT_OF_RESOURCES, f"part {index}: {exc}")
        except Exception as exc:  # disk full, database down: never report success
            logger.exception("%s: cannot persist (%s)", source, exc)
            refuse("", "", STATUS_OUT_OF_RESOURCES, f"part {index}: cannot persist the instance")
    return result


__all__ = [
    "Body",
    "StowRequestError",
    "StowResult",
    "boundary_of",
    "iter_multipart",
    "split_multipart",
    "store_instances",
]
