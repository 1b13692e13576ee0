"""PACS-held priors: the second source of the study page's prior list, asked by C-FIND
of a real Orthanc holding the patient's studies."""

from __future__ import annotations

from datetime import date

import pytest

from overread.service.config import QueryPeer
from overread.service.priors import (
    AISummary,
    PacsPriors,
    PatientKey,
    PriorSource,
    PriorStudy,
    StudyFacts,
    merge_priors,
)

from .conftest import free_port, needs_dcmtk
from .test_retrieve_orthanc import CURRENT, OLDER, PRIOR, Site, site  # noqa: F401

pytestmark = [pytest.mark.service, needs_dcmtk]


def _current(issuer: str | None = "") -> StudyFacts:
    return StudyFacts(CURRENT, PatientKey("SVC001", issuer), date(2026, 1, 1), None)


def test_pacs_priors_are_the_patients_earlier_studies_not_held_here(site: Site) -> None:  # noqa: F811
    found = PacsPriors(peers=[site.peer]).priors_of(_current())
    assert sorted(p.study_instance_uid for p in found) == sorted([PRIOR, OLDER])
    for prior in found:
        assert prior.source is PriorSource.PACS
        assert prior.held is False and prior.summary is None
        assert prior.modality == "DX"
    assert {p.study_instance_uid: p.study_date for p in found}[PRIOR] == date(2025, 3, 1)
    # Dated before the current study only.
    earlier = StudyFacts(CURRENT, PatientKey("SVC001", ""), date(2025, 3, 1), None)
    assert [p.study_instance_uid for p in PacsPriors(peers=[site.peer]).priors_of(earlier)] == [
        OLDER
    ]


def test_the_gateways_row_wins_and_the_list_is_newest_first(site: Site) -> None:  # noqa: F811
    held = PriorStudy(
        PRIOR, date(2025, 3, 1), PriorSource.GATEWAY, True, summary=AISummary(positive=("Edema",))
    )
    merged = merge_priors([[held], PacsPriors(peers=[site.peer]).priors_of(_current())])
    assert [(p.study_instance_uid, p.source) for p in merged] == [
        (PRIOR, PriorSource.GATEWAY),
        (OLDER, PriorSource.PACS),
    ]


def test_no_pacs_prior_when_the_match_cannot_be_confirmed(site: Site) -> None:  # noqa: F811
    # C-FIND answers carry no issuer: a study with one gets no PACS priors, nor one
    # whose header could not be read, nor one without Patient ID.
    source = PacsPriors(peers=[site.peer])
    assert source.priors_of(_current("HOSP-A")) == []
    assert source.priors_of(_current(None)) == []
    assert source.priors_of(StudyFacts(CURRENT, PatientKey("", ""), None, None)) == []


def test_an_unreachable_peer_gives_no_priors_rather_than_an_error() -> None:
    down = QueryPeer(name="down", ae_title="DOWN", host="127.0.0.1", port=free_port())
    assert PacsPriors(peers=[down], timeout=5).priors_of(_current()) == []
