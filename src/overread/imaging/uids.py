"""The UI value representation: what a well-formed DICOM UID looks like (PS3.5 §9.1).

A UID is at most 64 characters of components separated by dots; each component is
one or more digits, and a component of more than one digit does not start with a
zero. The gateway keys rows, object keys, API routes and the SRs it sends on the
Study, Series and SOP Instance UIDs and the SOP Class UID of what it receives, so
:func:`uid_problem` is checked for each of them when an instance is received, and
an instance with a malformed one is refused instead of carried to the PACS.
"""

from __future__ import annotations

import re

UID_MAX_LENGTH = 64

_DIGITS_AND_DOTS = re.compile(r"[0-9.]+")
_COMPONENT = re.compile(r"0|[1-9][0-9]*")


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a well-formed UID, or ``None`` if it is one.

    The reason is short (it fits a DICOM Error Comment with the attribute's name) and
    never repeats the value, which may be anything a peer sent.
    """
    if not value:
        return "empty"
    if len(value) > UID_MAX_LENGTH:
        return f"longer than {UID_MAX_LENGTH} characters"
    if not _DIGITS_AND_DOTS.fullmatch(value):
        return "not only digits and dots"
    components = value.split(".")
    if any(not component for component in components):
        return "empty component"
    if not all(_COMPONENT.fullmatch(component) for component in components):
        return "leading zero in a component"
    return None


def is_valid_uid(value: str) -> bool:
    """Whether ``value`` is a well-formed UID (see :func:`uid_problem`)."""
    return uid_problem(value) is None


__all__ = ["UID_MAX_LENGTH", "is_valid_uid", "uid_problem"]
