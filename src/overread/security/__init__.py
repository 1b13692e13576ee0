"""Access control: users, roles and permissions, passwords, API tokens, web sessions.

Users hold one :class:`Role`; each role holds a fixed set of :class:`Permission`.
Passwords are Argon2id hashes, API tokens are stored as SHA-256, web sessions are
HMAC-signed cookies revocable per user. :func:`authenticate` throttles failed logins
per user and per source with exponential lockout, and every login, denial and
account change is written to the audit trail. :class:`AccessControl` turns all of
it into FastAPI dependencies (``require(permission)``), and :func:`redact_phi`
removes patient identifiers from responses for roles without ``view_phi``.
"""

from overread.security.access import AccessControl
from overread.security.accounts import (
    AccountError,
    Principal,
    add_user,
    get_user,
    issue_token,
    list_users,
    resolve_token,
    revoke_token,
    set_active,
    set_password,
)
from overread.security.login import LockoutPolicy, LoginOutcome, authenticate
from overread.security.passwords import hash_password, verify_password
from overread.security.phi import PHI_FIELD_NAMES, phi_fields, redact_phi
from overread.security.roles import ROLE_PERMISSIONS, Permission, Role, has_permission, parse_role
from overread.security.schema import ApiToken, LoginThrottle, User, create_tables
from overread.security.web_sessions import (
    SESSION_COOKIE,
    SessionSigner,
    load_session_key,
)

__all__ = [
    "PHI_FIELD_NAMES",
    "ROLE_PERMISSIONS",
    "SESSION_COOKIE",
    "AccessControl",
    "AccountError",
    "ApiToken",
    "LockoutPolicy",
    "LoginOutcome",
    "LoginThrottle",
    "Permission",
    "Principal",
    "Role",
    "SessionSigner",
    "User",
    "add_user",
    "authenticate",
    "create_tables",
    "get_user",
    "has_permission",
    "hash_password",
    "issue_token",
    "list_users",
    "load_session_key",
    "parse_role",
    "phi_fields",
    "redact_phi",
    "resolve_token",
    "revoke_token",
    "set_active",
    "set_password",
    "verify_password",
]
