"""Query/retrieve as an SCU: find a patient's studies on a PACS and pull them in.

The gateway asks a PACS (a :class:`~overread.service.config.QueryPeer`) three things:

* :func:`find_studies`: C-FIND at STUDY level in the Study Root model, answered as
  typed :class:`StudyRecord` objects (the viewer's priors come from
  :func:`prior_studies`, which asks every configured query peer);
* :func:`move_study`: C-MOVE a study to an AE title, normally the gateway's own, so
  that it arrives through the ordinary C-STORE ingest path (the PACS must know that
  AE title's host and port: it opens the association);
* :func:`get_study`: C-GET, for a PACS that cannot connect back: the instances come
  on the association the gateway opened and each is handed to a callback as the
  bytes the PACS encoded.

A failure status, a refused association or a lost connection become one
:class:`QueryRetrieveError` that says which peer, which study and what the status
means; sub-operations that failed while others succeeded are counted in the
:class:`RetrieveOutcome` rather than raised.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydicom import Dataset
from pydicom.datadict import dictionary_VR
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, StoragePresentationContexts, build_role, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)

from overread.errors import ServiceError
from overread.service.config import QueryPeer, ServiceConfig
from overread.service.dicomweb.query import QueryParameterError, attribute_tag

logger = logging.getLogger(__name__)

#: The default calling AE title of the gateway's queries.
DEFAULT_CALLING_AE = "OVERREAD"

#: Storage classes proposed for C-GET (128 contexts at most, one goes to C-GET itself).
_GET_STORAGE_CONTEXTS = 127

#: What a failure status of C-FIND, C-MOVE or C-GET means (PS3.4 C.4, PS3.7 C).
_STATUS_MEANING: dict[int, str] = {
    0x0122: "SOP class not supported",
    0x0124: "not authorised (the peer does not allow this calling AE title to query)",
    0xA700: "out of resources",
    0xA701: "out of resources: unable to calculate the number of matches",
    0xA702: "out of resources: unable to perform the sub-operations",
    0xA801: "move destination unknown (the PACS does not know the destination AE title)",
    0xA900: "identifier does not match the SOP class",
    0xB000: "sub-operations completed with one or more failures",
    0xFE00: "cancelled",
}


class QueryRetrieveError(ServiceError):
    """A query or retrieve that the peer refused or that could not be carried out."""


class RetrieveMethod(enum.StrEnum):
    """How a study is retrieved."""

    MOVE = "move"
    GET = "get"


@dataclass(frozen=True)
class StudyRecord:
    """One study as a PACS described it in a C-FIND response.

    Attributes
    ----------
    study_instance_uid
        The study.
    patient_id, patient_name
        Whose it is (the name as the PACS spells it, ``^`` between components).
    study_date
        The study date (``None`` when the PACS gave none or an unreadable one).
    study_time, accession_number, study_description
        As given; empty when not given.
    modalities
        Modalities in Study.
    number_of_instances
        Number of Study Related Instances, when the PACS counts them.
    source
        The name of the query peer that answered.
    """

    study_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    study_date: date | None = None
    study_time: str = ""
    accession_number: str = ""
    study_description: str = ""
    modalities: tuple[str, ...] = ()
    number_of_instances: int | None = None
    source: str = ""

    @classmethod
    def from_identifier(cls, identifier: Dataset, *, source: str = "") -> StudyRecord:
        """Read a C-FIND response identifier."""

        def text(keyword: str) -> str:
            value = identifier.get(keyword)
            return "" if value is None else str(value).strip()

        modalities = identifier.get("ModalitiesInStudy")
        if modalities is None or modalities == "":
            found: tuple[str, ...] = ()
        elif isinstance(modalities, str):
            found = tuple(m for m in modalities.split("\\") if m)
        else:
            found = tuple(str(m) for m in modalities if m)
        count = identifier.get("NumberOfStudyRelatedInstances")
        try:
            instances = None if count in (None, "") else int(count)
        except (TypeError, ValueError):
            instances = None
        return cls(
            study_instance_uid=text("StudyInstanceUID"),
            patient_id=text("PatientID"),
            patient_name=text("PatientName"),
            study_date=_date(text("StudyDate")),
            study_time=text("StudyTime"),
            accession_number=text("AccessionNumber"),
            study_description=text("StudyDescription"),
            modalities=found,
            number_of_instances=instances,
            source=source,
        )


@dataclass(frozen=True)
class RetrieveOutcome:
    """What a C-MOVE or C-GET did, from the peer's final response.

    ``completed``, ``failed`` and ``warning`` count the C-STORE sub-operations the
    peer reported; ``failed_sop_instance_uids`` lists the failed ones when it says.
    """

    study_instance_uid: str
    method: RetrieveMethod
    peer: str
    completed: int = 0
    failed: int = 0
    warning: int = 0
    failed_sop_instance_uids: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether every sub-operation succeeded (warnings included)."""
        return self.failed == 0


@dataclass(frozen=True)
class PeerFailure:
    """A query peer that could not be asked, and why."""

    peer: str
    reason: str


@dataclass(frozen=True)
class PriorSearch:
    """The prior studies of a patient found on the query peers, newest first.

    ``failures`` names the peers that did not answer, so that a viewer can say the
    list may be incomplete rather than show it as if it were whole.
    """

    studies: tuple[StudyRecord, ...] = ()
    failures: tuple[PeerFailure, ...] = field(default_factory=tuple)


#: The attributes a study-level C-FIND asks for (the fields of :class:`StudyRecord`).
STUDY_RETURN_KEYS: tuple[str, ...] = (
    "StudyInstanceUID",
    "PatientID",
    "PatientName",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "StudyDescription",
    "ModalitiesInStudy",
    "NumberOfStudyRelatedInstances",
)


def _date(text: str) -> date | None:
    try:
        return datetime.strptime(text.replace("-", "").replace(".", "")[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _describe(peer: QueryPeer) -> str:
    return f"{peer.ae_title}@{peer.host}:{peer.port}"


def _status_text(status: int) -> str:
    meaning = _STATUS_MEANING.get(status)
    if meaning is None and 0xC000 <= status <= 0xCFFF:
        meaning = "unable to process"
    return f"status 0x{status:04X} ({meaning or 'failure'})"


def _ae(calling_ae: str, timeout: float) -> AE:
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    return ae


def _associate(
    ae: AE, peer: QueryPeer, what: str, **kwargs: Any
) -> Any:  # pynetdicom's Association is untyped
    try:
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, **kwargs)
    except Exception as exc:  # socket errors surface in many types
        raise QueryRetrieveError(f"{what}: cannot connect to {_describe(peer)}: {exc}") from None
    if assoc.is_rejected:
        raise QueryRetrieveError(
            f"{what}: {_describe(peer)} refused the association "
            f"(does it know the calling AE title {ae.ae_title}?)"
        )
    if not assoc.is_established:
        # pynetdicom marks a refused TCP connection "aborted" too: one message for both.
        raise QueryRetrieveError(
            f"{what}: {_describe(peer)} could not be reached "
            "(connection refused, aborted, or no answer in time)"
        )
    return assoc


def _identifier(level: str, keys: dict[str, str], returned: tuple[str, ...]) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = level
    for keyword in returned:
        identifier.add_new(keyword, dictionary_VR(keyword), "")
    for name, value in keys.items():
        try:
            tag = attribute_tag(name)
        except QueryParameterError as exc:
            raise QueryRetrieveError(f"C-FIND key {name}: {exc}") from None
        identifier.add_new(tag, dictionary_VR(tag), value)
    return identifier


def find_studies(
    peer: QueryPeer,
    *,
    calling_ae: str = DEFAULT_CALLING_AE,
    timeout: float = 30.0,
    **keys: str,
) -> list[StudyRecord]:
    """C-FIND studies on ``peer`` (Study Root, STUDY level) matching ``keys``.

    ``keys`` are attribute keywords and C-FIND matching values:
    ``find_studies(pacs, PatientID="123", StudyDate="-20240131")``. Each result
    carries the attributes of :data:`STUDY_RETURN_KEYS`.

    Raises
    ------
    QueryRetrieveError
        If the peer cannot be reached, refuses the association or answers a
        failure status, or a key is not a DICOM attribute.
    """
    what = f"C-FIND on {_describe(peer)}"
    identifier = _identifier("STUDY", keys, STUDY_RETURN_KEYS)
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = _associate(ae, peer, what)
    studies: list[StudyRecord] = []
    try:
        for status, found in assoc.send_c_find(
            identifier, StudyRootQueryRetrieveInformationModelFind
        ):
            code = _code(status, what)
            if code in (0xFF00, 0xFF01):
                if found is not None:
                    studies.append(StudyRecord.from_identifier(found, source=peer.name))
            elif code != 0x0000:
                raise QueryRetrieveError(f"{what} failed: {_status_text(code)}")
    finally:
        assoc.release()
    return studies


def _code(status: Dataset | None, what: str) -> int:
    if status is None or "Status" not in status:
        raise QueryRetrieveError(
            f"{what}: no response (the connection was lost or the peer timed out)"
        )
    return int(status.Status)


def _outcome(
    responses: Iterator[tuple[Dataset, Dataset | None]],
    *,
    study_instance_uid: str,
    method: RetrieveMethod,
    peer: QueryPeer,
    what: str,
) -> RetrieveOutcome:
    """The final response of a C-MOVE or C-GET, as an outcome or an error."""
    final: Dataset | None = None
    identifier: Dataset | None = None
    for status, found in responses:
        code = _code(status, what)
        if code in (0xFF00, 0xFF01):
            continue
        final, identifier = status, found
    if final is None:
        raise QueryRetrieveError(f"{what}: no final response")
    code = int(final.Status)

    def count(keyword: str) -> int:
        value = final.get(keyword)
        return int(value) if value not in (None, "") else 0

    failed_uids: tuple[str, ...] = ()
    if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
        value = identifier.FailedSOPInstanceUIDList
        failed_uids = tuple(str(v) for v in ([value] if isinstance(value, str) else value) if v)
    outcome = RetrieveOutcome(
        study_instance_uid=study_instance_uid,
        method=method,
        peer=peer.name,
        completed=count("NumberOfCompletedSuboperations"),
        failed=count("NumberOfFailedSuboperations"),
        warning=count("NumberOfWarningSuboperations"),
        failed_sop_instance_uids=failed_uids,
    )
    if code == 0x0000 or code == 0xB000:
        if code == 0x0000 and outcome.completed == 0 and outcome.failed == 0:
            logger.warning("%s: the peer reported nothing to send", what)
        return outcome
    comment = str(final.get("ErrorComment", "") or "").strip()
    raise QueryRetrieveError(
        f"{what} failed: {_status_text(code)}"
        + (f": {comment}" if comment else "")
        + (f" ({outcome.failed} sub-operation(s) failed)" if outcome.failed else "")
    )


def _retrieve_identifier(study_instance_uid: str) -> Dataset:
    identifier = Dataset()
    identifier.QueryRetrieveLevel = "STUDY"
    identifier.StudyInstanceUID = study_instance_uid
    return identifier


def move_study(
    peer: QueryPeer,
    study_instance_uid: str,
    destination_ae: str,
    *,
    calling_ae: str = DEFAULT_CALLING_AE,
    timeout: float = 120.0,
) -> RetrieveOutcome:
    """C-MOVE a study from ``peer`` to ``destination_ae`` (Study Root, STUDY level).

    The peer itself connects to the destination, so it must list ``destination_ae``
    with its host and port; when that is the gateway, the study arrives by C-STORE
    and is ingested, assembled and analysed like any other. Returns when the peer
    sends its final response, that is after every sub-operation.

    Raises
    ------
    QueryRetrieveError
        On a refused association, a failure status (e.g. 0xA801 when the peer does
        not know ``destination_ae``) or a lost connection.
    """
    what = f"C-MOVE of study {study_instance_uid} from {_describe(peer)} to {destination_ae}"
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
    assoc = _associate(ae, peer, what)
    try:
        return _outcome(
            assoc.send_c_move(
                _retrieve_identifier(study_instance_uid),
                destination_ae,
                StudyRootQueryRetrieveInformationModelMove,
            ),
            study_instance_uid=study_instance_uid,
            method=RetrieveMethod.MOVE,
            peer=peer,
            what=what,
        )
    finally:
        assoc.release()


#: Receives each instance of a C-GET as a DICOM Part 10 file: the data set as the
#: peer encoded it, behind a file meta header. An exception fails that instance.
InstanceSink = Callable[[bytes], None]


def get_study(
    peer: QueryPeer,
    study_instance_uid: str,
    on_instance: InstanceSink,
    *,
    calling_ae: str = DEFAULT_CALLING_AE,
    timeout: float = 120.0,
) -> RetrieveOutcome:
    """C-GET a study from ``peer``: its instances come back on this association.

    Each instance is handed to ``on_instance`` before its C-STORE is acknowledged,
    so a success means it was taken; an exception in ``on_instance`` answers that
    sub-operation 0xA700 and the peer counts it as failed. The common storage SOP
    classes are offered (127 of them, the most an association carries beside
    C-GET itself), each with every transfer syntax pynetdicom knows.

    Raises
    ------
    QueryRetrieveError
        As for :func:`move_study`.
    """
    what = f"C-GET of study {study_instance_uid} from {_describe(peer)}"
    ae = _ae(calling_ae, timeout)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for context in StoragePresentationContexts[:_GET_STORAGE_CONTEXTS]:
        ae.add_requested_context(str(context.abstract_syntax), list(ALL_TRANSFER_SYNTAXES))
        roles.append(build_role(str(context.abstract_syntax), scp_role=True))

    def on_c_store(event: evt.Event) -> int:
        try:
            on_instance(event.encoded_dataset())
        except Exception:
            logger.exception("%s: an instance could not be taken", what)
            return 0xA700
        return 0x0000

    assoc = _associate(ae, peer, what, ext_neg=roles, evt_handlers=[(evt.EVT_C_STORE, on_c_store)])
    try:
        return _outcome(
            assoc.send_c_get(
                _retrieve_identifier(study_instance_uid),
                StudyRootQueryRetrieveInformationModelGet,
            ),
            study_instance_uid=study_instance_uid,
            method=RetrieveMethod.GET,
            peer=peer,
            what=what,
        )
    finally:
        assoc.release()


def prior_studies(
    patient_id: str,
    *,
    before: date | None = None,
    peers: list[QueryPeer] | None = None,
    config: ServiceConfig | None = None,
    exclude_study_uid: str | None = None,
    calling_ae: str | None = None,
    timeout: float = 30.0,
) -> PriorSearch:
    """The studies of ``patient_id`` on the query peers, dated before ``before``.

    The peers are ``peers``, or the ``query_peers`` of ``config``; each is asked
    with C-FIND by Patient ID (and a study date range ending the day before
    ``before``, so the current study is not its own prior). A study several peers
    hold is listed once, from the first peer in the list. The calling AE title is
    ``calling_ae``, or the gateway's own (``config.ae_title``), since that is the
    title the PACS knows.

    A peer that cannot be asked is listed in ``failures`` and the others are still
    asked: a viewer can show the priors it found and say which archive was missing.
    """
    if not patient_id.strip():
        raise QueryRetrieveError("a prior-study lookup needs a Patient ID")
    targets = list(peers if peers is not None else (config.query_peers if config else []))
    caller = calling_ae or (config.ae_title if config is not None else DEFAULT_CALLING_AE)
    keys = {"PatientID": patient_id}
    if before is not None:
        keys["StudyDate"] = f"-{before.strftime('%Y%m%d')}"
    found: dict[str, StudyRecord] = {}
    failures: list[PeerFailure] = []
    for peer in targets:
        try:
            studies = find_studies(peer, calling_ae=caller, timeout=timeout, **keys)
        except QueryRetrieveError as exc:
            logger.warning("prior studies of a patient: %s", exc)
            failures.append(PeerFailure(peer.name, str(exc)))
            continue
        for study in studies:
            if study.patient_id and study.patient_id != patient_id:
                continue  # a peer that matched loosely
            if before is not None and (study.study_date is None or study.study_date >= before):
                continue
            if study.study_instance_uid == exclude_study_uid:
                continue
            found.setdefault(study.study_instance_uid, study)
    ordered = sorted(
        found.values(),
        key=lambda s: (s.study_date or date.min, s.study_time),
        reverse=True,
    )
    return PriorSearch(studies=tuple(ordered), failures=tuple(failures))


__all__ = [
    "DEFAULT_CALLING_AE",
    "STUDY_RETURN_KEYS",
    "InstanceSink",
    "PeerFailure",
    "PriorSearch",
    "QueryRetrieveError",
    "RetrieveMethod",
    "RetrieveOutcome",
    "StudyRecord",
    "find_studies",
    "get_study",
    "move_study",
    "prior_studies",
]
