"""C-FIND and C-MOVE on the gateway's DICOM port: a viewer queries what was stored.

The handlers run on the same listener as C-STORE (:class:`~overread.service.scp.
StorageSCP` registers them) and answer from the stored data: the ``instances`` rows
and the stored headers, through the same :class:`~overread.service.dicomweb.
StoredArchive` and matching rules (PS3.4 C.2.2.2: single value, wildcard, UID list,
range, universal) as QIDO-RS, so a search gives the same studies over DIMSE and over
DICOMweb. Study Root and Patient Root are served at their levels (PATIENT, STUDY,
SERIES, IMAGE); a response carries exactly the keys the request asked for, plus the
level's unique keys and the Retrieve AE Title.

Access: with ``allow_query_ae`` set, only those calling AE titles (optionally from
one host) may query or move; anyone else is refused, and the refusal is audited
(``query-refused``) before the peer hears of it. C-FIND gets 0x0124 (refused: not
authorised); C-MOVE gets 0xC514 (unable to process), the one failure pynetdicom
lets a handler give before naming a destination. Queries and moves that are served
are audited too (``query``, ``export``): they disclose patient data.

C-MOVE sends a stored study, series or instance to a destination the gateway knows
(a configured destination or query peer, matched by AE title); an unknown one gets
0xA801. The files go out as they were stored.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import build_context
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelMove,
)

from overread.audit import AuditAction, record_event
from overread.errors import OverreadError
from overread.imaging import read_dataset
from overread.service.config import ServiceConfig
from overread.service.db import Database
from overread.service.dicomweb.archive import NotStoredError, StoredArchive, StoredInstance
from overread.service.dicomweb.query import (
    QueryLevel,
    QueryParameterError,
    SearchQuery,
    parse_search,
)
from overread.service.ingest import record_refusal
from overread.service.store import ObjectStore

logger = logging.getLogger(__name__)

#: The query/retrieve SOP classes the gateway serves.
FIND_SOP_CLASSES: tuple[str, ...] = (
    str(StudyRootQueryRetrieveInformationModelFind),
    str(PatientRootQueryRetrieveInformationModelFind),
)
MOVE_SOP_CLASSES: tuple[str, ...] = (
    str(StudyRootQueryRetrieveInformationModelMove),
    str(PatientRootQueryRetrieveInformationModelMove),
)

#: The most matches one C-FIND returns (the rest are left out, and the log says so).
FIND_RESULT_LIMIT = 10_000

STATUS_NOT_AUTHORISED = 0x0124
STATUS_IDENTIFIER_MISMATCH = 0xA900
STATUS_UNABLE_TO_PROCESS = 0xC000
STATUS_PENDING = 0xFF00
STATUS_CANCEL = 0xFE00

_LEVELS = {
    "STUDY": QueryLevel.STUDY,
    "SERIES": QueryLevel.SERIES,
    "IMAGE": QueryLevel.INSTANCE,
}
_UNIQUE_KEYS = {
    "PATIENT": ("PatientID",),
    "STUDY": ("StudyInstanceUID",),
    "SERIES": ("StudyInstanceUID", "SeriesInstanceUID"),
    "IMAGE": ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"),
}
#: Elements of an identifier that are not matching or return keys.
_NOT_KEYS = frozenset(
    {Tag("QueryRetrieveLevel"), Tag("SpecificCharacterSet"), Tag("RetrieveAETitle")}
)
_MOVE_CONTEXTS = 128


class QueryRefusedError(OverreadError, PermissionError):
    """A calling AE title that ``allow_query_ae`` does not list."""


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def _text(element: DataElement) -> str:
    value = element.value
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v) for v in value)
    return str(value)


@dataclasses.dataclass(frozen=True)
class _Request:
    """A C-FIND or C-MOVE identifier read into a search."""

    level: str
    query: SearchQuery


class QueryRetrieveSCP:
    """C-FIND and C-MOVE handlers over the stored instances.

    Parameters
    ----------
    config
        ``ae_title``, ``allow_query_ae``, and the destinations a C-MOVE may name.
    database, store
        Where the stored instances are.
    """

    def __init__(self, config: ServiceConfig, database: Database, store: ObjectStore) -> None:
        self.config = config
        self.database = database
        self.archive = StoredArchive(database, store)

    # -- access -----------------------------------------------------------------------
    def may_query(self, ae_title: str, host: str) -> bool:
        """Whether a peer calling as ``ae_title`` from ``host`` may C-FIND and C-MOVE."""
        peers = self.config.allow_query_ae
        return not peers or any(p.admits(ae_title, host) for p in peers)

    def refuse(self, calling: str, host: str, what: str, status: int) -> str:
        """Audit a refused query or move; the reason the peer is told."""
        reason = (
            f"{what} from calling AE {calling!r} at {host} is not allowed (see --allow-query-ae)"
        )
        logger.warning("query refused: %s", reason)
        record_refusal(
            self.database,
            actor=f"ae:{calling}",
            action=AuditAction.QUERY_REFUSED,
            peer_host=host,
            reason=reason,
            status=status,
        )
        return reason

    def _audit(
        self, action: AuditAction, calling: str, host: str, uids: list[str], details: dict[str, Any]
    ) -> None:
        try:
            with self.database.session() as session:
                record_event(
                    session,
                    actor=f"ae:{calling}",
                    role="modality",
                    action=action,
                    object_uids=sorted(set(uids))[:100],
                    details={"peer_host": host, **details},
                )
        except Exception as exc:
            logger.error("%s by %s could not be audited: %s", action, calling, exc)

    # -- identifiers ------------------------------------------------------------------
    def _request(self, identifier: Dataset, *, patient_root: bool) -> _Request:
        level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
        if level == "PATIENT" and not patient_root:
            raise QueryParameterError("PATIENT level is only in the Patient Root model")
        if level not in _LEVELS and level != "PATIENT":
            raise QueryParameterError(f"Query/Retrieve Level {level!r} is not one of ours")
        pairs: list[tuple[str, str]] = []
        for element in identifier:
            if element.tag in _NOT_KEYS or element.tag.element == 0 or element.tag.is_private:
                continue
            if element.VR == "SQ":
                continue  # returned empty, never matched
            try:
                dictionary_VR(element.tag)
            except KeyError:
                continue
            pairs.append((f"{int(element.tag):08X}", _text(element)))
        query = parse_search(_LEVELS.get(level, QueryLevel.STUDY), pairs)
        return _Request(level, dataclasses.replace(query, limit=FIND_RESULT_LIMIT))

    def _response(self, request: Dataset, level: str, result: Dataset) -> Dataset:
        response = Dataset()
        if "SpecificCharacterSet" in result:
            response.SpecificCharacterSet = result.SpecificCharacterSet
        response.QueryRetrieveLevel = level
        for keyword in _UNIQUE_KEYS[level]:
            if keyword in result:
                response[Tag(keyword)] = result[Tag(keyword)]
        for element in request:
            if element.tag in _NOT_KEYS or element.tag in response:
                continue
            if element.tag in result:
                response[element.tag] = result[element.tag]
            else:
                response.add_new(element.tag, element.VR, [] if element.VR == "SQ" else None)
        response.RetrieveAETitle = self.config.ae_title
        return response

    def _patients(self, request: _Request) -> list[Dataset]:
        """PATIENT level: the study-level matches, one per Patient ID."""
        patients: dict[str, Dataset] = {}
        studies: dict[str, int] = {}
        for study in self.archive.search(request.query):
            patient_id = str(study.get("PatientID", "") or "")
            studies[patient_id] = studies.get(patient_id, 0) + 1
            patients.setdefault(patient_id, study)
        for patient_id, result in patients.items():
            result.NumberOfPatientRelatedStudies = studies[patient_id]
        return list(patients.values())

    def _matches(self, request: _Request) -> list[Dataset]:
        if request.level == "PATIENT":
            return self._patients(request)
        found = self.archive.search(request.query)
        if len(found) >= FIND_RESULT_LIMIT:
            logger.warning("C-FIND: only the first %d matches are returned", FIND_RESULT_LIMIT)
        return found

    # -- C-FIND -----------------------------------------------------------------------
    def on_c_find(self, event: Any) -> Iterator[tuple[int | Dataset, Dataset | None]]:
        """pynetdicom's EVT_C_FIND handler: one pending response per match."""
        calling = str(event.assoc.requestor.ae_title).strip()
        host = str(event.assoc.requestor.address)
        if not self.may_query(calling, host):
            reason = self.refuse(calling, host, "C-FIND", STATUS_NOT_AUTHORISED)
            yield _status(STATUS_NOT_AUTHORISED, reason), None
            return
        model = str(event.request.AffectedSOPClassUID)
        try:
            identifier = event.identifier
            request = self._request(
                identifier, patient_root=model == str(PatientRootQueryRetrieveInformationModelFind)
            )
        except QueryParameterError as exc:
            yield _status(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
            return
        except Exception as exc:  # an identifier that does not decode
            logger.error("C-FIND from %s: unreadable identifier (%s)", calling, exc)
            yield _status(STATUS_UNABLE_TO_PROCESS, "unreadable identifier"), None
            return
        try:
            results = self._matches(request)
        except QueryParameterError as exc:
            yield _status(STATUS_IDENTIFIER_MISMATCH, str(exc)), None
            return
        except Exception:
            logger.exception("C-FIND from %s failed", calling)
            yield _status(STATUS_UNABLE_TO_PROCESS, "the search failed"), None
            return
        self._audit(
            AuditAction.QUERY,
            calling,
            host,
            [str(r.get("StudyInstanceUID", "")) for r in results if r.get("StudyInstanceUID")],
            {"level": request.level, "matches": len(results)},
        )
        for result in results:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            yield STATUS_PENDING, self._response(identifier, request.level, result)

    # -- C-MOVE -----------------------------------------------------------------------
    def _destination(self, ae_title: str) -> tuple[str, int] | None:
        for destination in self.config.destinations:
            # A de-identifying destination gets only what the exporter cleans; a move
            # would send the stored originals, identity and all: it is not a move
            # destination (answered as unknown, 0xA801).
            if destination.ae_title == ae_title.strip() and destination.deidentify is None:
                return destination.host, destination.port
        for peer in self.config.query_peers:
            if peer.ae_title == ae_title.strip():
                return peer.host, peer.port
        return None

    def _instances(self, request: _Request) -> list[StoredInstance]:
        """The stored instances a C-MOVE identifier names (its UIDs, level by level)."""
        query = request.query
        studies = _uids(query, "StudyInstanceUID")
        series = _uids(query, "SeriesInstanceUID") if request.level in ("SERIES", "IMAGE") else None
        sops = _uids(query, "SOPInstanceUID") if request.level == "IMAGE" else None
        if request.level == "PATIENT":
            patient = query.key("PatientID")
            if patient is None:
                raise QueryParameterError("a PATIENT level C-MOVE needs a Patient ID")
            if any(c in patient.value for c in "*?\\"):
                # A move names one patient exactly: a wildcard would move every match.
                raise QueryParameterError("a PATIENT level C-MOVE needs one exact Patient ID")
            studies = [
                str(s.StudyInstanceUID)
                for s in self.archive.search(
                    dataclasses.replace(query, level=QueryLevel.STUDY, keys=(patient,))
                )
            ]
        if not studies and request.level != "PATIENT":
            raise QueryParameterError("a C-MOVE needs the Study Instance UID")
        found: list[StoredInstance] = []
        for study in studies or []:
            for one_series in [*series] if series else [None]:
                for sop in [*sops] if sops else [None]:
                    try:
                        found.extend(self.archive.instances(study, one_series, sop))
                    except NotStoredError:
                        continue
        return found

    def on_c_move(self, event: Any) -> Iterator[Any]:
        """pynetdicom's EVT_C_MOVE handler: the destination, the count, then each file."""
        calling = str(event.assoc.requestor.ae_title).strip()
        host = str(event.assoc.requestor.address)
        if not self.may_query(calling, host):
            reason = self.refuse(calling, host, "C-MOVE", 0xC514)
            raise QueryRefusedError(reason)
        destination_ae = str(event.move_destination or "").strip()
        model = str(event.request.AffectedSOPClassUID)
        request = self._request(
            event.identifier,
            patient_root=model == str(PatientRootQueryRetrieveInformationModelMove),
        )
        destination = self._destination(destination_ae)
        if destination is None:
            logger.warning("C-MOVE from %s: unknown destination %r", calling, destination_ae)
            yield None, None
            return
        instances = self._instances(request)
        yield destination[0], destination[1], {"contexts": _contexts(instances)}
        yield len(instances)
        self._audit(
            AuditAction.EXPORT,
            calling,
            host,
            [i.study_instance_uid for i in instances],
            {"via": "C-MOVE", "destination": destination_ae, "instances": len(instances)},
        )
        for instance in instances:
            if event.is_cancelled:
                yield STATUS_CANCEL, None
                return
            try:
                dataset = read_dataset(self.archive.path(instance))
            except (OverreadError, OSError) as exc:
                logger.error("C-MOVE: %s cannot be read (%s)", instance.sop_instance_uid, exc)
                failed = Dataset()
                failed.SOPInstanceUID = instance.sop_instance_uid
                yield STATUS_UNABLE_TO_PROCESS, failed
                continue
            yield STATUS_PENDING, dataset


def _uids(query: SearchQuery, keyword: str) -> list[str] | None:
    key = query.key(keyword)
    if key is None:
        return None
    return [v for v in key.value.replace(",", "\\").split("\\") if v.strip()]


def _contexts(instances: list[StoredInstance]) -> list[Any]:
    """Presentation contexts for sending ``instances`` as stored."""
    syntaxes: dict[str, set[str]] = {}
    for instance in instances:
        wanted = syntaxes.setdefault(instance.sop_class_uid, set())
        wanted.add(instance.transfer_syntax_uid or str(ExplicitVRLittleEndian))
    contexts = []
    for sop_class, stored in sorted(syntaxes.items()):
        offered = sorted(stored)
        if all(s in (ExplicitVRLittleEndian, ImplicitVRLittleEndian) for s in stored):
            offered = [str(ExplicitVRLittleEndian), str(ImplicitVRLittleEndian)]
        contexts.append(build_context(sop_class, offered))
    if len(contexts) > _MOVE_CONTEXTS:
        logger.warning("C-MOVE: %d SOP classes; only %d are offered", len(contexts), _MOVE_CONTEXTS)
    return contexts[:_MOVE_CONTEXTS]


__all__ = [
    "FIND_RESULT_LIMIT",
    "FIND_SOP_CLASSES",
    "MOVE_SOP_CLASSES",
    "STATUS_NOT_AUTHORISED",
    "QueryRefusedError",
    "QueryRetrieveSCP",
]
