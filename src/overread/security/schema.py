"""Tables of users, API tokens and login throttling.

On their own declarative base (like the audit tables) so the web layer and the CLI
can import :mod:`overread.security` without pulling in the gateway;
:func:`create_tables` creates them, and the audit tables they log to, on the
gateway's engine.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Engine, ForeignKey, Integer, String
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from overread.audit import create_tables as create_audit_tables


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class _UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored in UTC and read back timezone-aware (SQLite has no tz type)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


class SecurityBase(DeclarativeBase):
    """Declarative base of the access-control tables."""


class User(SecurityBase):
    """A person or service account; ``password_hash`` is empty for token-only accounts."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    password_hash: Mapped[str] = mapped_column(String(255), default="")
    active: Mapped[bool] = mapped_column(default=True)
    # Bumped on password change or deactivation: web sessions signed under an
    # older epoch stop working at once.
    session_epoch: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(_UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(_UTCDateTime, default=None)


class ApiToken(SecurityBase):
    """An API token: only its SHA-256 is stored, never the token itself."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(_UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(_UTCDateTime, default=None)
    revoked: Mapped[bool] = mapped_column(default=False)
    last_used_at: Mapped[datetime | None] = mapped_column(_UTCDateTime, default=None)


class LoginThrottle(SecurityBase):
    """Failed-login count and lockout for one key (``user:NAME`` or ``source:ADDR``)."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime | None] = mapped_column(_UTCDateTime, default=None)
    locked_until: Mapped[datetime | None] = mapped_column(_UTCDateTime, default=None)


def create_tables(engine: Engine) -> None:
    """Create the access-control and audit tables if missing (idempotent)."""
    create_audit_tables(engine)
    SecurityBase.metadata.create_all(engine)


__all__ = ["ApiToken", "LoginThrottle", "SecurityBase", "User", "create_tables", "utcnow"]
