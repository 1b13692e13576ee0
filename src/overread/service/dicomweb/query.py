"""QIDO-RS search requests (PS3.18 §10.6): their parameters, and how a value matches.

A search names a level (study, series, instance), the matching keys (an attribute
keyword or tag, and the value to match), the attributes to return (``includefield``)
and a page (``limit``, ``offset``). :func:`parse_search` reads the query string into a
:class:`SearchQuery` and refuses what cannot be answered with a
:class:`QueryParameterError` (the HTTP 400 of the standard), so nothing downstream
sees an unknown keyword or a malformed date range.

Matching follows PS3.4 C.2.2.2 as the standard's QIDO-RS uses it: single value,
wildcard (``*`` and ``?``, on text VRs), UID list (values separated by ``,`` or
``\\``), range (``DA``/``TM``/``DT``: ``A-B``, ``-B``, ``A-``) and universal (an empty
value only asks for the attribute to be returned). Person names match without regard
to case, as most archives do; multi-valued attributes (Modalities in Study) match
when any value does.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.tag import BaseTag, Tag

from overread.errors import OverreadError

#: The most results one request may ask for (a larger ``limit`` is refused).
MAX_LIMIT = 1000
#: The page size when the request names none.
DEFAULT_LIMIT = 100

_TEXT_VRS = frozenset({"AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR", "AS"})
_RANGE_VRS = frozenset({"DA", "TM", "DT"})
_RESERVED = frozenset({"limit", "offset", "includefield", "fuzzymatching"})


class QueryParameterError(OverreadError, ValueError):
    """A search parameter the server cannot use (unknown attribute, bad range, bad page)."""


class QueryLevel(enum.StrEnum):
    """The level a search returns one result per."""

    STUDY = "study"
    SERIES = "series"
    INSTANCE = "instance"


@dataclass(frozen=True)
class MatchingKey:
    """One attribute to match: its tag, VR and the value from the query string."""

    tag: BaseTag
    vr: str
    value: str

    @property
    def keyword(self) -> str:
        """The attribute's keyword (``PatientName``)."""
        return str(keyword_for_tag(self.tag))

    @property
    def universal(self) -> bool:
        """An empty value matches everything: the attribute is only returned."""
        return self.value == "" or self.value == "*"

    def matches(self, values: Iterable[str]) -> bool:
        """Whether any of an attribute's ``values`` matches this key."""
        if self.universal:
            return True
        candidates = [v for v in values]
        if self.vr == "UI":
            wanted = set(_uid_list(self.value))
            return any(v in wanted for v in candidates)
        if self.vr in _RANGE_VRS:
            low, high = _range(self.value, self.vr)
            return any(_in_range(_normal(v, self.vr), low, high) for v in candidates if v)
        if self.vr in _TEXT_VRS:
            pattern = _wildcard(self.value, ignore_case=self.vr == "PN")
            return any(pattern.fullmatch(v.strip()) for v in candidates)
        return any(v.strip() == self.value.strip() for v in candidates)


@dataclass(frozen=True)
class SearchQuery:
    """A parsed QIDO-RS request.

    Attributes
    ----------
    level
        What one result is.
    study_instance_uid, series_instance_uid
        The resource the search is under (``/studies/{s}/series``), if any.
    keys
        The matching keys, in request order.
    include_all
        ``includefield=all``.
    include
        Tags named by ``includefield``.
    limit, offset
        The page.
    """

    level: QueryLevel
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    keys: tuple[MatchingKey, ...] = ()
    include_all: bool = False
    include: tuple[BaseTag, ...] = field(default_factory=tuple)
    limit: int = DEFAULT_LIMIT
    offset: int = 0

    def key(self, keyword: str) -> MatchingKey | None:
        """The matching key on ``keyword``, if the request has one that is not universal."""
        tag = Tag(keyword)
        for key in self.keys:
            if key.tag == tag and not key.universal:
                return key
        return None


def attribute_tag(text: str) -> BaseTag:
    """The tag a query parameter names: a keyword (``PatientID``) or 8 hex digits.

    Raises
    ------
    QueryParameterError
        For an unknown keyword, a malformed tag, or a sequence path (not supported).
    """
    name = text.strip()
    if "." in name:
        raise QueryParameterError(f"{name!r}: matching inside sequences is not supported")
    if re.fullmatch(r"[0-9A-Fa-f]{8}", name):
        tag = Tag(int(name, 16))
    else:
        number = tag_for_keyword(name)
        if number is None:
            raise QueryParameterError(f"{name!r} is not a DICOM attribute keyword or tag")
        tag = Tag(number)
    try:
        dictionary_VR(tag)
    except KeyError:
        raise QueryParameterError(f"{name!r} is not an attribute this server knows") from None
    return tag


def _integer(name: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise QueryParameterError(f"{name}={text!r} is not an integer") from None
    if not low <= value <= high:
        raise QueryParameterError(f"{name}={value} is outside {low}..{high}")
    return value


def parse_search(
    level: QueryLevel,
    parameters: Iterable[tuple[str, str]],
    *,
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> SearchQuery:
    """Read a QIDO-RS query string (its ``(name, value)`` pairs, repeats kept).

    Raises
    ------
    QueryParameterError
        For anything the search cannot use: an unknown attribute, a wildcard in a UID,
        a malformed range, a bad ``limit``/``offset``/``fuzzymatching``.
    """
    keys: list[MatchingKey] = []
    include: list[BaseTag] = []
    include_all = False
    limit, offset = DEFAULT_LIMIT, 0
    for name, value in parameters:
        lowered = name.strip().lower()
        if lowered == "limit":
            limit = _integer("limit", value, 1, MAX_LIMIT)
        elif lowered == "offset":
            offset = _integer("offset", value, 0, 10**9)
        elif lowered == "fuzzymatching":
            if value.strip().lower() not in ("true", "false"):
                raise QueryParameterError(f"fuzzymatching={value!r}: expected true or false")
        elif lowered == "includefield":
            for item in (v.strip() for v in value.split(",")):
                if item.lower() == "all":
                    include_all = True
                elif item:
                    include.append(attribute_tag(item))
        else:
            tag = attribute_tag(name)
            vr = str(dictionary_VR(tag))
            if vr == "SQ":
                raise QueryParameterError(f"{name!r} is a sequence: it cannot be matched")
            if vr == "UI" and any(c in value for c in "*?"):
                raise QueryParameterError(f"{name}={value!r}: wildcards do not apply to UIDs")
            if vr in _RANGE_VRS and value not in ("", "*"):
                _range(value, vr)  # refuse a malformed range now, not while matching
            keys.append(MatchingKey(tag, vr, value.strip()))
    return SearchQuery(
        level=level,
        study_instance_uid=study_instance_uid,
        series_instance_uid=series_instance_uid,
        keys=tuple(keys),
        include_all=include_all,
        include=tuple(include),
        limit=limit,
        offset=offset,
    )


def uid_values(key: MatchingKey | None) -> list[str] | None:
    """The UIDs a UID-list key names, or None when the key does not restrict."""
    if key is None or key.universal:
        return None
    return _uid_list(key.value)


def _uid_list(value: str) -> list[str]:
    return [v.strip() for v in re.split(r"[,\\]", value) if v.strip()]


def _wildcard(value: str, *, ignore_case: bool) -> re.Pattern[str]:
    pattern = "".join(
        ".*" if c == "*" else "." if c == "?" else re.escape(c) for c in value.strip()
    )
    return re.compile(pattern, re.IGNORECASE | re.DOTALL if ignore_case else re.DOTALL)


_FORMATS = {
    "DA": re.compile(r"\d{8}"),
    "TM": re.compile(r"\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?"),
    "DT": re.compile(r"\d{4}(\d{2}(\d{2}(\d{2}(\d{2}(\d{2}(\.\d{1,6})?)?)?)?)?)?([+-]\d{4})?"),
}


def _normal(value: str, vr: str) -> str:
    """A date/time as a string that sorts chronologically (``:`` and ``-`` removed)."""
    text = value.strip()
    if vr == "DA":
        return text.replace("-", "").replace(".", "")
    if vr == "TM":
        return text.replace(":", "")
    return text


def _range(value: str, vr: str) -> tuple[str | None, str | None]:
    """The inclusive bounds of a single value or range (``None`` = open)."""
    text = value.strip()
    if vr == "DT" and text.count("-") > 1:
        raise QueryParameterError(f"{value!r}: a DT range has one '-'")
    low_text, dash, high_text = text.partition("-") if vr != "DT" else _dt_split(text)
    bounds: list[str | None] = []
    for part in (low_text, high_text) if dash else (low_text,):
        part = _normal(part, vr)
        if part and not (_FORMATS[vr].fullmatch(part) and _plausible(part, vr)):
            raise QueryParameterError(f"{value!r} is not a {vr} value or range")
        bounds.append(part or None)
    if not dash:
        if bounds[0] is None:
            raise QueryParameterError(f"{value!r} is not a {vr} value or range")
        return bounds[0], bounds[0]
    if bounds[0] is None and bounds[1] is None:
        raise QueryParameterError(f"{value!r}: a range needs at least one bound")
    return bounds[0], bounds[1]


def _plausible(value: str, vr: str) -> bool:
    """Whether a well-formed date or time names a real month, day, hour, minute, second."""
    date, time = (
        (value, "") if vr == "DA" else ("", value) if vr == "TM" else (value[:8], value[8:])
    )
    if date:
        month, day = int(date[4:6] or 1), int(date[6:8] or 1)
        if not (1 <= month <= 12 and 1 <= day <= 31):
            return False
    clock = time.split(".", 1)[0].split("+", 1)[0].split("-", 1)[0]
    limits = (23, 59, 60)
    return all(int(clock[i : i + 2]) <= limits[i // 2] for i in range(0, len(clock) - 1, 2))


def _dt_split(text: str) -> tuple[str, str, str]:
    """Split a DT range on its '-' (a timezone offset follows a full value, never starts one)."""
    match = re.fullmatch(r"([^-]*(?:[+]\d{4})?)(-)(.*)", text)
    if match is None:
        return text, "", ""
    return match.group(1), match.group(2), match.group(3)


def _in_range(value: str, low: str | None, high: str | None) -> bool:
    """Whether ``value`` lies within the bounds, comparing at each bound's precision."""
    if low is not None and value[: len(low)] < low:
        return False
    return not (high is not None and value[: len(high)] > high)


__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MatchingKey",
    "QueryLevel",
    "QueryParameterError",
    "SearchQuery",
    "attribute_tag",
    "parse_search",
    "uid_values",
]
