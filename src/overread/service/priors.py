"""A patient's earlier studies, and the comparison of a study with one of them.

Priors are matched on the patient's identity, never on the name: the same Patient ID
and the same Issuer of Patient ID (both absent counts as the same; one present and
the other absent does not, nor a header that cannot be read). A reader who compares
with the wrong patient's film acts on the wrong patient, so an unsure match is no
match.

Priors come from sources (:class:`PriorsSource`): the gateway's own database
(:class:`GatewayPriors`, studies it received and analysed, with their AI summary) is
the one built here; a PACS queried by C-FIND is a second source that returns
:class:`PriorStudy` rows with ``source=PACS`` and ``held=False``.
:func:`list_priors` merges the sources, the gateway's row winning for a study both
hold.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from functools import lru_cache
from typing import Protocol

from sqlalchemy import select
from sqlalchemy.orm import Session

from overread.errors import OverreadError
from overread.imaging import read_metadata
from overread.results import Decision, FindingResult
from overread.service.config import QueryPeer, ServiceConfig
from overread.service.db import Instance
from overread.service.retrieve import StudyRecord, prior_studies
from overread.service.store import ObjectStore
from overread.triage.comparison import DEFAULT_MARGIN, FindingChange, compare_findings
from overread.triage.schema import WorklistItem
from overread.triage.worklist import get_item, stored_findings

logger = logging.getLogger(__name__)


class PatientMismatchError(OverreadError, ValueError):
    """Two studies compared are not known to belong to the same patient."""


class PriorSource(StrEnum):
    """Where a prior study was found."""

    GATEWAY = "gateway"
    PACS = "pacs"


@dataclass(frozen=True)
class PatientKey:
    """Who a study belongs to, as far as matching priors is concerned.

    Attributes
    ----------
    patient_id
        Patient ID (0010,0020); empty when the study has none (it then matches nothing).
    issuer
        Issuer of Patient ID (0010,0021); ``""`` when the header has none, ``None``
        when the header could not be read (it then matches nothing).
    """

    patient_id: str
    issuer: str | None

    def matches(self, other: PatientKey) -> bool:
        """Whether ``other`` is surely the same patient (see the module's rule)."""
        return (
            bool(self.patient_id)
            and self.issuer is not None
            and other.issuer is not None
            and self.patient_id == other.patient_id
            and self.issuer == other.issuer
        )


@dataclass(frozen=True)
class AISummary:
    """The model's calls on a study, in a line."""

    positive: tuple[str, ...] = ()
    indeterminate: tuple[str, ...] = ()
    critical: tuple[str, ...] = ()
    model: str = ""

    @property
    def text(self) -> str:
        """The summary a reader scans in a list."""
        parts = []
        if self.positive:
            parts.append("positive: " + ", ".join(self.positive))
        if self.indeterminate:
            parts.append("indeterminate: " + ", ".join(self.indeterminate))
        return "; ".join(parts) if parts else "no positive finding"

    @classmethod
    def of(cls, item: WorklistItem) -> AISummary:
        """The summary of a worklist row's findings."""
        findings = sorted(stored_findings(item), key=lambda f: -f.probability)
        return cls(
            positive=tuple(f.label for f in findings if f.decision is Decision.POSITIVE),
            indeterminate=tuple(f.label for f in findings if f.decision is Decision.INDETERMINATE),
            critical=tuple(sorted(str(c) for c in item.critical_findings or [])),
            model=f"{item.model_name} {item.model_version}".strip(),
        )


@dataclass(frozen=True)
class StudyFacts:
    """What a study's reference header says that priors need."""

    study_instance_uid: str
    patient: PatientKey
    study_date: date | None
    received_at: datetime | None
    modality: str = ""
    description: str = ""

    @property
    def moment(self) -> tuple[date, datetime]:
        """When the study was taken, for ordering (unknown dates sort first)."""
        return (self.study_date or date.min, self.received_at or datetime.min)


@dataclass(frozen=True)
class PriorStudy:
    """One earlier study of the patient, from one source.

    Attributes
    ----------
    held
        Whether the gateway holds its images and results (it can be compared now).
    summary
        The AI summary; ``None`` when the source has no results (a PACS study).
    """

    study_instance_uid: str
    study_date: date | None
    source: PriorSource
    held: bool
    modality: str = ""
    description: str = ""
    summary: AISummary | None = None


class PriorsSource(Protocol):
    """A place that knows a patient's studies (the gateway's database, a PACS)."""

    def priors_of(self, study: StudyFacts) -> list[PriorStudy]:
        """The studies of ``study``'s patient taken before it."""
        ...


def _parse_date(text: str) -> date | None:
    try:
        return datetime.strptime(text.strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


@dataclass(frozen=True)
class _Header:
    readable: bool
    patient_id: str = ""
    issuer: str = ""
    study_date: str = ""
    modality: str = ""
    description: str = ""


@lru_cache(maxsize=2048)
def _header(path: str) -> _Header:
    """A stored file's identity fields (stored objects never change: cached per file)."""
    try:
        meta = read_metadata(path)
    except Exception as exc:  # an unreadable file: the study matches no one
        logger.warning("cannot read the header of %s: %s", path, exc)
        return _Header(readable=False)
    return _Header(
        readable=True,
        patient_id=(meta.patient_id or "").strip(),
        issuer=(meta.issuer_of_patient_id or "").strip(),
        study_date=meta.study_date or "",
        modality=meta.modality or "",
        description=meta.study_description or "",
    )


def study_facts(session: Session, store: ObjectStore, item: WorklistItem) -> StudyFacts:
    """The identity and date of a worklist study, from its reference image's header."""
    query = select(Instance).where(Instance.study_instance_uid == item.study_instance_uid)
    if item.sop_instance_uid:
        query = query.order_by((Instance.sop_instance_uid == item.sop_instance_uid).desc())
    instance = session.scalars(query.order_by(Instance.id).limit(1)).first()
    header = _Header(readable=False)
    if instance is not None:
        try:
            path = store.path(instance.object_key)
        except OverreadError:
            path = None
        if path is not None and path.is_file():
            header = _header(str(path))
    patient_id = header.patient_id or (item.patient_id or "").strip()
    if header.readable and item.patient_id and header.patient_id != item.patient_id.strip():
        patient_id = ""  # the row and the file disagree: trust neither
    return StudyFacts(
        study_instance_uid=item.study_instance_uid,
        patient=PatientKey(patient_id, header.issuer if header.readable else None),
        study_date=_parse_date(header.study_date),
        received_at=item.received_at,
        modality=header.modality,
        description=header.description,
    )


@dataclass(frozen=True)
class GatewayPriors:
    """The patient's studies the gateway received and analysed (its worklist)."""

    session: Session
    store: ObjectStore

    def priors_of(self, study: StudyFacts) -> list[PriorStudy]:
        """The same patient's studies on the worklist taken before ``study``."""
        if not study.patient.patient_id or study.patient.issuer is None:
            return []
        rows = self.session.scalars(
            select(WorklistItem).where(
                WorklistItem.patient_id == study.patient.patient_id,
                WorklistItem.study_instance_uid != study.study_instance_uid,
            )
        ).all()
        found = []
        for row in rows:
            facts = study_facts(self.session, self.store, row)
            if not study.patient.matches(facts.patient) or facts.moment >= study.moment:
                continue
            found.append(
                PriorStudy(
                    study_instance_uid=row.study_instance_uid,
                    study_date=facts.study_date,
                    source=PriorSource.GATEWAY,
                    held=True,
                    modality=facts.modality,
                    description=facts.description,
                    summary=AISummary.of(row),
                )
            )
        return found


@dataclass(frozen=True)
class PacsPriors:
    """The patient's earlier studies on the query peers (C-FIND), not held here.

    A C-FIND answer carries no Issuer of Patient ID to check, so a study whose header
    names an issuer gets no PACS priors: the match could not be confirmed. Peers that
    cannot be asked are logged and left out (``failures`` of the last search).
    """

    peers: list[QueryPeer] | None = None
    config: ServiceConfig | None = None
    timeout: float = 30.0

    def priors_of(self, study: StudyFacts) -> list[PriorStudy]:
        """The same Patient ID's studies on the peers dated before ``study``."""
        return self.search(study)[0]

    def search(self, study: StudyFacts) -> tuple[list[PriorStudy], list[str]]:
        """:meth:`priors_of`, with what each peer that could not be asked said."""
        patient = study.patient
        if not patient.patient_id or patient.issuer != "":
            return [], []
        search = prior_studies(
            patient.patient_id,
            before=study.study_date,
            peers=self.peers,
            config=self.config,
            exclude_study_uid=study.study_instance_uid,
            timeout=self.timeout,
        )
        found = [self._row(record) for record in search.studies if record.patient_id]
        return found, [f"{f.peer}: {f.reason}" for f in search.failures]

    @staticmethod
    def _row(record: StudyRecord) -> PriorStudy:
        return PriorStudy(
            study_instance_uid=record.study_instance_uid,
            study_date=record.study_date,
            source=PriorSource.PACS,
            held=False,
            modality="/".join(record.modalities),
            description=record.study_description,
        )


def merge_priors(groups: Iterable[Sequence[PriorStudy]]) -> list[PriorStudy]:
    """Several sources' priors as one list, newest first, one row per study.

    A study two groups hold keeps the first group's row (list the gateway first: its
    row carries the AI summary and can be compared at once).
    """
    merged: dict[str, PriorStudy] = {}
    for group in groups:
        for prior in group:
            merged.setdefault(prior.study_instance_uid, prior)
    return sorted(
        merged.values(),
        key=lambda p: (p.study_date or date.min, p.study_instance_uid),
        reverse=True,
    )


def list_priors(study: StudyFacts, sources: Iterable[PriorsSource]) -> list[PriorStudy]:
    """The priors all ``sources`` know of ``study``'s patient (see :func:`merge_priors`)."""
    return merge_priors(source.priors_of(study) for source in sources)


@dataclass(frozen=True)
class StudyComparison:
    """A study, one of its priors, and what changed per finding."""

    current: StudyFacts
    prior: StudyFacts
    current_summary: AISummary
    prior_summary: AISummary
    current_findings: Sequence[FindingResult]
    prior_findings: Sequence[FindingResult]
    margin: float
    changes: list[FindingChange] = field(default_factory=list)


def compare_studies(
    session: Session,
    store: ObjectStore,
    current_uid: str,
    prior_uid: str,
    *,
    margin: float = DEFAULT_MARGIN,
) -> StudyComparison:
    """Compare the findings of ``current_uid`` with those of ``prior_uid``.

    Raises
    ------
    KeyError
        If either study is not on the worklist.
    PatientMismatchError
        If the two are the same study or not surely the same patient's.
    """
    if current_uid == prior_uid:
        raise PatientMismatchError("a study cannot be compared with itself")
    current_item = get_item(session, current_uid)
    prior_item = get_item(session, prior_uid)
    current = study_facts(session, store, current_item)
    prior = study_facts(session, store, prior_item)
    if not current.patient.matches(prior.patient):
        raise PatientMismatchError(
            f"study {prior_uid} is not known to belong to the patient of study {current_uid}"
        )
    now = stored_findings(current_item)
    before = stored_findings(prior_item)
    return StudyComparison(
        current=current,
        prior=prior,
        current_summary=AISummary.of(current_item),
        prior_summary=AISummary.of(prior_item),
        current_findings=now,
        prior_findings=before,
        margin=margin,
        changes=compare_findings(now, before, margin=margin),
    )


__all__ = [
    "AISummary",
    "GatewayPriors",
    "PacsPriors",
    "PatientKey",
    "PatientMismatchError",
    "PriorSource",
    "PriorStudy",
    "PriorsSource",
    "StudyComparison",
    "StudyFacts",
    "compare_studies",
    "list_priors",
    "merge_priors",
    "study_facts",
]
