"""QIDO-RS request parsing and PS3.4 C.2.2.2 matching."""

from __future__ import annotations

import pytest

from overread.service.dicomweb.query import (
    MatchingKey,
    QueryLevel,
    QueryParameterError,
    attribute_tag,
    parse_search,
)


def _key(name: str, value: str) -> MatchingKey:
    [key] = parse_search(QueryLevel.STUDY, [(name, value)]).keys
    return key


@pytest.mark.parametrize(
    ("name", "value", "candidate", "expected"),
    [
        ("PatientName", "doe*", "Doe^Jane", True),  # PN: case does not matter
        ("PatientName", "D?e^J*", "Doe^Jane", True),
        ("PatientName", "Doe", "Doe^Jane", False),  # single value: the whole name
        ("PatientID", "pid-1", "PID-1", False),  # other text: case matters
        ("PatientID", "PID-*", "PID-1", True),
        ("PatientID", "PID.1", "PID-1", False),  # regex characters are literal
        ("StudyDate", "20240101-20240131", "20240115", True),
        ("StudyDate", "20240101-20240131", "20240201", False),
        ("StudyDate", "-20231231", "20231231", True),
        ("StudyDate", "20240101-", "20231231", False),
        ("StudyDate", "20240105", "20240105", True),
        ("StudyTime", "0800-1200", "101500.123", True),
        ("StudyTime", "0800-1000", "101500", False),
        ("StudyInstanceUID", "1.2.3,1.2.4", "1.2.4", True),
        ("StudyInstanceUID", "1.2.3\\1.2.4", "1.2.5", False),
        ("NumberOfFrames", "3", "3", True),
        ("PatientID", "", "anything", True),  # universal: returned, not matched
    ],
)
def test_matching(name: str, value: str, candidate: str, expected: bool) -> None:
    assert _key(name, value).matches([candidate]) is expected


def test_a_multi_valued_attribute_matches_when_any_value_does() -> None:
    key = _key("ModalitiesInStudy", "SR")
    assert key.matches(["CT", "SR"]) and not key.matches(["CT", "DX"])


def test_a_missing_attribute_does_not_match_a_value() -> None:
    assert not _key("AccessionNumber", "ACC-1").matches([""])


def test_the_page_and_included_fields_are_read() -> None:
    query = parse_search(
        QueryLevel.SERIES,
        [("limit", "5"), ("offset", "10"), ("includefield", "00081030,SeriesNumber")],
        study_instance_uid="1.2.3",
    )
    assert (query.limit, query.offset, query.study_instance_uid) == (5, 10, "1.2.3")
    assert query.include == (attribute_tag("StudyDescription"), attribute_tag("SeriesNumber"))
    assert parse_search(QueryLevel.STUDY, [("includefield", "all")]).include_all


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NoSuchKeyword", "x"),
        ("0011XXXX", "x"),
        ("StudyDate", "2024"),
        ("StudyDate", "-"),
        ("StudyTime", "25:00-"),
        ("SOPInstanceUID", "1.2.?"),
        ("limit", "1001"),
        ("offset", "x"),
        ("fuzzymatching", "yes"),
        ("ReferencedStudySequence", ""),
        ("PatientName.Alphabetic", "x"),
    ],
)
def test_unusable_parameters_are_refused(name: str, value: str) -> None:
    with pytest.raises(QueryParameterError):
        parse_search(QueryLevel.STUDY, [(name, value)])
