"""User accounts and API tokens.

Every change is audited (``user-change``, ``token-issued``) in the caller's
transaction. API tokens are random 256-bit strings shown once; the database keeps
only their SHA-256, so a stolen database copy yields no usable token (a fast hash
suffices: the token has 256 bits of entropy, unlike a password).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from overread.audit import AuditAction, record_event
from overread.errors import OverreadError
from overread.security.passwords import hash_password
from overread.security.roles import Permission, Role, has_permission, parse_role
from overread.security.schema import ApiToken, User, utcnow

TOKEN_PREFIX = "ovr_"
_USERNAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


class AccountError(OverreadError, ValueError):
    """A user or token operation is invalid (unknown user, bad name, duplicate)."""


@dataclass(frozen=True)
class Principal:
    """Who is making a request, and with which role.

    ``via`` says how they proved it: ``"password"``, ``"token"`` or ``"session"``.
    """

    username: str
    role: Role
    via: str
    token_id: int | None = None

    def can(self, permission: Permission) -> bool:
        """Whether this principal holds ``permission``."""
        return has_permission(self.role, permission)


def token_sha256(token: str) -> str:
    """What is stored for a token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _check_username(username: str) -> str:
    if not _USERNAME.match(username):
        raise AccountError(
            f"invalid user name {username!r}: 1-64 letters, digits, '.', '_', '@' or '-'"
        )
    return username


def get_user(session: Session, username: str) -> User | None:
    """The user called ``username``, or None."""
    return session.scalar(select(User).where(User.username == username))


def list_users(session: Session) -> list[User]:
    """All users, by name."""
    return list(session.scalars(select(User).order_by(User.username)))


def add_user(
    session: Session,
    username: str,
    role: Role | str,
    *,
    password: str | None = None,
    actor: str,
    actor_role: str = "",
) -> User:
    """Create a user; without a password the account can only use API tokens.

    Raises
    ------
    AccountError
        If the name is invalid or taken, or the role unknown.
    ValueError
        If the password is too short.
    """
    _check_username(username)
    try:
        parsed = parse_role(str(role))
    except ValueError as exc:
        raise AccountError(str(exc)) from None
    if get_user(session, username) is not None:
        raise AccountError(f"user {username!r} already exists")
    user = User(
        username=username,
        role=parsed.value,
        password_hash=hash_password(password) if password is not None else "",
        active=True,
        session_epoch=0,
    )
    session.add(user)
    session.flush()
    record_event(
        session,
        actor=actor,
        role=actor_role,
        action=AuditAction.USER_CHANGE,
        details={"change": "add", "user": username, "role": parsed.value,
                 "password": password is not None},
    )  # fmt: skip
    return user


def _require_user(session: Session, username: str) -> User:
    user = get_user(session, username)
    if user is None:
        raise AccountError(f"no user called {username!r}")
    return user


def set_password(
    session: Session, username: str, password: str, *, actor: str, actor_role: str = ""
) -> None:
    """Set a new password; the user's existing web sessions end."""
    user = _require_user(session, username)
    user.password_hash = hash_password(password)
    user.session_epoch += 1
    record_event(
        session,
        actor=actor,
        role=actor_role,
        action=AuditAction.USER_CHANGE,
        details={"change": "password", "user": username},
    )


def set_active(
    session: Session, username: str, active: bool, *, actor: str, actor_role: str = ""
) -> None:
    """Enable or disable an account; disabling ends its sessions and tokens' use."""
    user = _require_user(session, username)
    user.active = active
    user.session_epoch += 1
    record_event(
        session,
        actor=actor,
        role=actor_role,
        action=AuditAction.USER_CHANGE,
        details={"change": "enable" if active else "disable", "user": username},
    )


def issue_token(
    session: Session,
    username: str,
    *,
    expires_in: timedelta | None = timedelta(days=90),
    role: Role | str | None = None,
    label: str = "",
    actor: str,
    actor_role: str = "",
) -> tuple[str, ApiToken]:
    """Create an API token for ``username``; return the token (shown once) and its row.

    ``role`` defaults to the user's; a token cannot carry more rights than its user
    (any other role than the user's is refused).
    """
    user = _require_user(session, username)
    token_role = parse_role(str(role)).value if role is not None else user.role
    if token_role != user.role:
        raise AccountError(f"a token for {username!r} can only carry the role {user.role!r}")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = utcnow() + expires_in if expires_in is not None else None
    row = ApiToken(
        user_id=user.id,
        token_sha256=token_sha256(token),
        role=token_role,
        label=label,
        expires_at=expires_at,
        revoked=False,
    )
    session.add(row)
    session.flush()
    record_event(
        session,
        actor=actor,
        role=actor_role,
        action=AuditAction.TOKEN_ISSUED,
        details={
            "user": username,
            "token_id": row.id,
            "role": token_role,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "label": label,
        },
    )
    return token, row


def revoke_token(session: Session, token_id: int, *, actor: str, actor_role: str = "") -> None:
    """Revoke one token."""
    session.execute(update(ApiToken).where(ApiToken.id == token_id).values(revoked=True))
    record_event(
        session,
        actor=actor,
        role=actor_role,
        action=AuditAction.USER_CHANGE,
        details={"change": "revoke-token", "token_id": token_id},
    )


def resolve_token(session: Session, token: str, *, now: datetime | None = None) -> Principal | None:
    """The principal an API token stands for, or None if unknown, expired or revoked."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    now = now or utcnow()
    found = session.execute(
        select(ApiToken, User)
        .join(User, User.id == ApiToken.user_id)
        .where(ApiToken.token_sha256 == token_sha256(token))
    ).first()
    if found is None:
        return None
    row, user = found
    if row.revoked or not user.active:
        return None
    if row.expires_at is not None and row.expires_at <= now:
        return None
    return Principal(username=user.username, role=Role(row.role), via="token", token_id=row.id)


__all__ = [
    "TOKEN_PREFIX",
    "AccountError",
    "Principal",
    "add_user",
    "get_user",
    "issue_token",
    "list_users",
    "resolve_token",
    "revoke_token",
    "set_active",
    "set_password",
    "token_sha256",
]
