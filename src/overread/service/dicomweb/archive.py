"""The gateway's stored instances seen as a DICOMweb origin server's archive.

What was received (the ``instances`` rows and the files in the object store) is
searched (QIDO-RS) and retrieved (WADO-RS) here, with no web framework in sight:
the routes in :mod:`overread.web.api.qido` and :mod:`overread.web.api.wado` only
translate HTTP. The database narrows a search by UID and modality; everything
else (patient, dates, accession...) is matched on the instance headers, which are
read once and kept in a small in-memory cache keyed by the object's key: stored
objects are content-addressed and never change, so a cached header is never stale.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import dcmwrite
from pydicom.datadict import dictionary_VR, keyword_for_tag
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID
from sqlalchemy import select

from overread.errors import OverreadError
from overread.imaging import read_dataset
from overread.service.db import Database, Instance
from overread.service.dicomweb.media import (
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
)
from overread.service.dicomweb.query import QueryLevel, SearchQuery, uid_values
from overread.service.store import ObjectStore

logger = logging.getLogger(__name__)

#: How many instance headers are kept in memory.
HEADER_CACHE_SIZE = 4096

#: Attributes returned at each level by default (PS3.18 Tables 10.6.3-3 to -5).
DEFAULT_ATTRIBUTES: dict[QueryLevel, tuple[str, ...]] = {
    QueryLevel.STUDY: (
        "SpecificCharacterSet",
        "StudyDate",
        "StudyTime",
        "AccessionNumber",
        "ReferringPhysicianName",
        "TimezoneOffsetFromUTC",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "StudyInstanceUID",
        "StudyID",
        "StudyDescription",
    ),
    QueryLevel.SERIES: (
        "Modality",
        "TimezoneOffsetFromUTC",
        "SeriesDescription",
        "SeriesInstanceUID",
        "SeriesNumber",
        "PerformedProcedureStepStartDate",
        "PerformedProcedureStepStartTime",
        "RequestAttributesSequence",
        "BodyPartExamined",
        "StudyInstanceUID",
    ),
    QueryLevel.INSTANCE: (
        "SOPClassUID",
        "SOPInstanceUID",
        "TimezoneOffsetFromUTC",
        "InstanceNumber",
        "Rows",
        "Columns",
        "BitsAllocated",
        "NumberOfFrames",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    ),
}

#: Patient and visit identifiers, left out for callers who may not see PHI (the
#: same identifiers :data:`overread.security.phi.PHI_FIELD_NAMES` names).
PHI_KEYWORDS: frozenset[str] = frozenset(
    {
        "PatientName",
        "PatientID",
        "IssuerOfPatientID",
        "PatientBirthDate",
        "PatientBirthTime",
        "PatientBirthName",
        "PatientMotherBirthName",
        "PatientAddress",
        "PatientTelephoneNumbers",
        "OtherPatientIDs",
        "OtherPatientIDsSequence",
        "OtherPatientNames",
        "MedicalRecordLocator",
        "AccessionNumber",
    }
)

_LEVEL_ORDER = (QueryLevel.STUDY, QueryLevel.SERIES, QueryLevel.INSTANCE)


class NotStoredError(OverreadError, LookupError):
    """No stored instance is what the request names (the HTTP 404)."""


@dataclass(frozen=True)
class StoredInstance:
    """One received instance: its UIDs and where its file is."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    object_key: str

    @classmethod
    def of(cls, row: Instance) -> StoredInstance:
        """The archive's view of an ``instances`` row."""
        return cls(
            study_instance_uid=row.study_instance_uid,
            series_instance_uid=row.series_instance_uid,
            sop_instance_uid=row.sop_instance_uid,
            sop_class_uid=row.sop_class_uid,
            transfer_syntax_uid=row.transfer_syntax_uid,
            modality=row.modality,
            object_key=row.object_key,
        )


def strip_phi(dataset: Dataset) -> Dataset:
    """A copy of ``dataset`` without patient and visit identifiers, also inside sequences.

    A copy, because results share elements with the cached headers.
    """
    stripped = copy.deepcopy(dataset)
    _strip_in_place(stripped)
    return stripped


def _strip_in_place(dataset: Dataset) -> None:
    for element in list(dataset):
        if element.keyword in PHI_KEYWORDS:
            del dataset[element.tag]
        elif element.VR == "SQ":
            for item in element.value:
                _strip_in_place(item)


class StoredArchive:
    """Search and read the gateway's stored instances.

    Parameters
    ----------
    database
        Where the ``instances`` rows are.
    store
        Where their files are.
    cache_size
        How many headers to keep in memory.
    """

    def __init__(
        self, database: Database, store: ObjectStore, *, cache_size: int = HEADER_CACHE_SIZE
    ) -> None:
        self.database = database
        self.store = store
        self.cache_size = cache_size
        self._headers: OrderedDict[str, Dataset] = OrderedDict()
        self._lock = threading.Lock()

    # -- files ------------------------------------------------------------------------
    def path(self, instance: StoredInstance) -> Path:
        """The file of ``instance``.

        Raises
        ------
        NotStoredError
            If the file is no longer in the store.
        """
        try:
            path = self.store.path(instance.object_key)
        except OverreadError:
            path = None
        if path is None or not path.is_file():
            raise NotStoredError(f"instance {instance.sop_instance_uid}: its file is not stored")
        return path

    def header(self, instance: StoredInstance) -> Dataset:
        """The instance's header without Pixel Data (cached; do not modify it)."""
        with self._lock:
            found = self._headers.get(instance.object_key)
            if found is not None:
                self._headers.move_to_end(instance.object_key)
                return found
        dataset = read_dataset(self.path(instance), pixels=False)
        with self._lock:
            self._headers[instance.object_key] = dataset
            while len(self._headers) > self.cache_size:
                self._headers.popitem(last=False)
        return dataset

    def transfer_syntax(self, instance: StoredInstance) -> str:
        """The transfer syntax the instance is stored in."""
        if instance.transfer_syntax_uid:
            return instance.transfer_syntax_uid
        meta = getattr(self.header(instance), "file_meta", None)
        return str(getattr(meta, "TransferSyntaxUID", "") or "")

    def can_encode(self, instance: StoredInstance, transfer_syntax: str | None) -> bool:
        """Whether :meth:`part10` can give the instance in ``transfer_syntax``.

        As stored (``None`` or ``*``, or the stored syntax), or Explicit VR Little
        Endian (the DICOMweb default) from Implicit VR Little Endian; no
        recompression.
        """
        stored = self.transfer_syntax(instance)
        if transfer_syntax in (None, "*", stored):
            return True
        return transfer_syntax == EXPLICIT_VR_LITTLE_ENDIAN and stored == IMPLICIT_VR_LITTLE_ENDIAN

    def part10(self, instance: StoredInstance, transfer_syntax: str | None = None) -> bytes:
        """The instance as a DICOM Part 10 file in ``transfer_syntax`` (see :meth:`can_encode`).

        Raises
        ------
        NotStoredError
            If the file is gone.
        ValueError
            If it cannot be given in that transfer syntax.
        """
        path = self.path(instance)
        stored = self.transfer_syntax(instance)
        if transfer_syntax in (None, "*", stored):
            return path.read_bytes()
        if not self.can_encode(instance, transfer_syntax):
            raise ValueError(f"instance {instance.sop_instance_uid} is not in {transfer_syntax}")
        dataset = read_dataset(path)
        dataset.file_meta.TransferSyntaxUID = UID(EXPLICIT_VR_LITTLE_ENDIAN)
        buffer = BytesIO()
        dcmwrite(buffer, dataset, enforce_file_format=True, implicit_vr=False, little_endian=True)
        return buffer.getvalue()

    def dataset(self, instance: StoredInstance) -> Dataset:
        """The whole stored data set, pixels included (not cached)."""
        return read_dataset(self.path(instance))

    # -- rows -------------------------------------------------------------------------
    def instances(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        sop_instance_uid: str | None = None,
    ) -> list[StoredInstance]:
        """The stored instances of a study, series or one instance, in receipt order.

        Raises
        ------
        NotStoredError
            If there is none (the study, series or instance is unknown).
        """
        found = self._rows(
            studies=[study_instance_uid],
            series=None if series_instance_uid is None else [series_instance_uid],
            sops=None if sop_instance_uid is None else [sop_instance_uid],
        )
        if not found:
            what = (
                f"instance {sop_instance_uid}"
                if sop_instance_uid
                else f"series {series_instance_uid}"
                if series_instance_uid
                else f"study {study_instance_uid}"
            )
            raise NotStoredError(f"{what} is not stored")
        return found

    def _rows(
        self,
        *,
        studies: Sequence[str] | None = None,
        series: Sequence[str] | None = None,
        sops: Sequence[str] | None = None,
        sop_classes: Sequence[str] | None = None,
    ) -> list[StoredInstance]:
        statement = select(Instance)
        if studies is not None:
            statement = statement.where(Instance.study_instance_uid.in_(list(studies)))
        if series is not None:
            statement = statement.where(Instance.series_instance_uid.in_(list(series)))
        if sops is not None:
            statement = statement.where(Instance.sop_instance_uid.in_(list(sops)))
        if sop_classes is not None:
            statement = statement.where(Instance.sop_class_uid.in_(list(sop_classes)))
        with self.database.session() as session:
            rows = session.scalars(statement.order_by(Instance.id)).all()
            return [StoredInstance.of(r) for r in rows]

    # -- search -----------------------------------------------------------------------
    def search(self, query: SearchQuery, *, retrieve_base: str = "") -> list[Dataset]:
        """The results of a QIDO-RS search, one data set per study, series or instance.

        ``retrieve_base`` is the DICOMweb root the Retrieve URL (0008,1190) of each
        result starts with (left out when empty). A path that names an unknown study
        or series gives no result (the route answers an empty list, as for any search).
        """
        studies = _intersect(
            [query.study_instance_uid] if query.study_instance_uid else None,
            uid_values(query.key("StudyInstanceUID")),
        )
        series = _intersect(
            [query.series_instance_uid] if query.series_instance_uid else None,
            uid_values(query.key("SeriesInstanceUID"))
            if query.level is not QueryLevel.STUDY
            else None,
        )
        sops = (
            uid_values(query.key("SOPInstanceUID")) if query.level is QueryLevel.INSTANCE else None
        )
        sop_classes = (
            uid_values(query.key("SOPClassUID")) if query.level is QueryLevel.INSTANCE else None
        )
        rows = self._rows(studies=studies, series=series, sops=sops, sop_classes=sop_classes)
        groups: OrderedDict[str, list[StoredInstance]] = OrderedDict()
        for row in rows:
            groups.setdefault(_group_key(row, query.level), []).append(row)
        results: list[Dataset] = []
        skip = query.offset
        for members in groups.values():
            built = self._result(query, members, retrieve_base)
            if built is None:
                continue
            if skip:
                skip -= 1
                continue
            results.append(built)
            if len(results) >= query.limit:
                break
        return results

    def _result(
        self, query: SearchQuery, members: list[StoredInstance], retrieve_base: str
    ) -> Dataset | None:
        """The result of one group, or None when it does not match or cannot be read."""
        first = members[0]
        try:
            header = self.header(first)
        except (OverreadError, OSError) as exc:
            logger.warning("QIDO-RS: %s left out of results (%s)", first.sop_instance_uid, exc)
            return None
        computed = _computed(query.level, members, retrieve_base)
        for key in query.keys:
            source = computed.get(key.tag) or header.get(key.tag)
            if not key.matches(_values(source)):
                return None
        result = Dataset()
        wanted: list[BaseTag] = []
        for level in _returned_levels(query):
            wanted.extend(Tag(k) for k in DEFAULT_ATTRIBUTES[level])
        asked = [*query.include, *(k.tag for k in query.keys)]
        if query.include_all and query.level is QueryLevel.INSTANCE:
            wanted.extend(e.tag for e in header)
        for tag in [*wanted, *asked]:
            if tag in result:
                continue
            if tag in computed:
                result[tag] = computed[tag]
            elif tag in header:
                result[tag] = header[tag]
            elif tag in asked:  # a key asked for is returned, empty when the header lacks it
                result.add_new(tag, dictionary_VR(tag), None)
        for tag, element in computed.items():
            if tag not in result and _returned_by_default(tag, query):
                result[tag] = element
        return result


_OWN_COMPUTED: dict[QueryLevel, frozenset[str]] = {
    QueryLevel.STUDY: frozenset(
        {
            "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "InstanceAvailability",
            "RetrieveURL",
        }
    ),
    QueryLevel.SERIES: frozenset({"NumberOfSeriesRelatedInstances", "RetrieveURL"}),
    QueryLevel.INSTANCE: frozenset({"InstanceAvailability", "RetrieveURL"}),
}


def _returned_by_default(tag: BaseTag, query: SearchQuery) -> bool:
    """Whether a computed attribute is one of the level's own (counts, URL)."""
    return str(keyword_for_tag(tag)) in _OWN_COMPUTED[query.level]


def _returned_levels(query: SearchQuery) -> list[QueryLevel]:
    """The levels whose default attributes a result carries (PS3.18 10.6.3.3.1).

    Its own level always; the levels above it that the request's path does not
    already fix (``/series`` carries study attributes, ``/studies/{s}/instances``
    series attributes); every level with ``includefield=all``.
    """
    above = _LEVEL_ORDER[: _LEVEL_ORDER.index(query.level)]
    if query.include_all or query.study_instance_uid is None:
        return [*above, query.level]
    if query.series_instance_uid is None and query.level is QueryLevel.INSTANCE:
        return [QueryLevel.SERIES, query.level]
    return [query.level]


def _intersect(first: list[str] | None, second: list[str] | None) -> list[str] | None:
    if first is None:
        return second
    if second is None:
        return first
    return [v for v in first if v in second]


def _group_key(row: StoredInstance, level: QueryLevel) -> str:
    if level is QueryLevel.STUDY:
        return row.study_instance_uid
    if level is QueryLevel.SERIES:
        return f"{row.study_instance_uid}/{row.series_instance_uid}"
    return row.sop_instance_uid


def _computed(
    level: QueryLevel, members: list[StoredInstance], retrieve_base: str
) -> dict[BaseTag, DataElement]:
    """Attributes the archive knows rather than the header: counts, modalities, URLs."""
    first = members[0]
    out: dict[BaseTag, DataElement] = {}

    def put(keyword: str, value: Any) -> None:
        tag = Tag(keyword)
        out[tag] = DataElement(tag, dictionary_VR(tag), value)

    base = retrieve_base.rstrip("/")
    if level is QueryLevel.STUDY:
        put("ModalitiesInStudy", sorted({m.modality for m in members if m.modality}))
        put("NumberOfStudyRelatedSeries", len({m.series_instance_uid for m in members}))
        put("NumberOfStudyRelatedInstances", len(members))
        put("InstanceAvailability", "ONLINE")
        if base:
            put("RetrieveURL", f"{base}/studies/{first.study_instance_uid}")
    elif level is QueryLevel.SERIES:
        put("NumberOfSeriesRelatedInstances", len(members))
        if base:
            put(
                "RetrieveURL",
                f"{base}/studies/{first.study_instance_uid}/series/{first.series_instance_uid}",
            )
    else:
        put("InstanceAvailability", "ONLINE")
        if base:
            put(
                "RetrieveURL",
                f"{base}/studies/{first.study_instance_uid}/series/"
                f"{first.series_instance_uid}/instances/{first.sop_instance_uid}",
            )
    return out


def _values(element: DataElement | None) -> Iterable[str]:
    """An element's values as strings (none for a missing or empty one)."""
    if element is None or element.value is None or element.value == "":
        return [""]
    value = element.value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return [str(v) for v in value] or [""]
    return [str(value)]


__all__ = [
    "DEFAULT_ATTRIBUTES",
    "HEADER_CACHE_SIZE",
    "PHI_KEYWORDS",
    "NotStoredError",
    "StoredArchive",
    "StoredInstance",
    "strip_phi",
]
