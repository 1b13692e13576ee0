"""Roles, permissions, and which role holds which permission.

Least privilege, as a radiology department runs: radiologists and technologists see
patient identity because their work needs it; administrators run the system
(users, models, configuration) without seeing who the patients are; auditors read
the audit trail and a de-identified worklist; service accounts (PACS, RIS, other
gateways) push studies in and pull results out.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping


class Role(enum.StrEnum):
    """A user's role."""

    RADIOLOGIST = "radiologist"
    TECHNOLOGIST = "technologist"
    ADMIN = "admin"
    AUDITOR = "auditor"
    SERVICE = "service"


class Permission(enum.StrEnum):
    """Something the web/REST layer checks before acting."""

    VIEW_WORKLIST = "view_worklist"
    VIEW_RESULTS = "view_results"
    VIEW_PHI = "view_phi"
    GIVE_FEEDBACK = "give_feedback"
    #: Accept, edit or reject AI results (the review gate), and correct ones already sent.
    VERIFY_RESULTS = "verify_results"
    INGEST = "ingest"
    EXPORT_RESULTS = "export_results"
    MANAGE_MODELS = "manage_models"
    MANAGE_USERS = "manage_users"
    MANAGE_CONFIG = "manage_config"
    READ_AUDIT = "read_audit"
    EXPORT_AUDIT = "export_audit"


ROLE_PERMISSIONS: Mapping[Role, frozenset[Permission]] = {
    Role.RADIOLOGIST: frozenset(
        {
            Permission.VIEW_WORKLIST,
            Permission.VIEW_RESULTS,
            Permission.VIEW_PHI,
            Permission.GIVE_FEEDBACK,
            Permission.VERIFY_RESULTS,
        }
    ),
    Role.TECHNOLOGIST: frozenset(
        {
            Permission.VIEW_WORKLIST,
            Permission.VIEW_RESULTS,
            Permission.VIEW_PHI,
            Permission.INGEST,
        }
    ),
    Role.ADMIN: frozenset(
        {
            Permission.VIEW_WORKLIST,
            Permission.VIEW_RESULTS,
            Permission.MANAGE_MODELS,
            Permission.MANAGE_USERS,
            Permission.MANAGE_CONFIG,
            Permission.READ_AUDIT,
        }
    ),
    Role.AUDITOR: frozenset(
        {Permission.VIEW_WORKLIST, Permission.READ_AUDIT, Permission.EXPORT_AUDIT}
    ),
    Role.SERVICE: frozenset(
        {Permission.INGEST, Permission.VIEW_RESULTS, Permission.EXPORT_RESULTS}
    ),
}


def parse_role(value: str) -> Role:
    """A :class:`Role` from its name.

    Raises
    ------
    ValueError
        Naming the valid roles.
    """
    try:
        return Role(value.strip().lower())
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise ValueError(f"unknown role {value!r} (known: {known})") from None


def has_permission(role: Role | str, permission: Permission) -> bool:
    """Whether ``role`` holds ``permission`` (unknown roles hold nothing)."""
    try:
        return permission in ROLE_PERMISSIONS[Role(role)]
    except ValueError:
        return False


__all__ = ["ROLE_PERMISSIONS", "Permission", "Role", "has_permission", "parse_role"]
