"""Tables of users, API tokens and login throttling.

On the one declarative base of :mod:`overread.db`, so the web layer and the CLI can
import :mod:`overread.security` without pulling in the gateway; the schema
migrations create them with every other table, and :func:`create_tables` makes sure
they, and the audit tables they log to, exist.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine, ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from overread.audit import create_tables as create_audit_tables
from overread.db import Base, UTCDateTime, utcnow


class User(Base):
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
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ApiToken(Base):
    """An API token: only its SHA-256 is stored, never the token itself."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(32))
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    revoked: Mapped[bool] = mapped_column(default=False)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class LoginThrottle(Base):
    """Failed-login count and lockout for one key (``user:NAME`` or ``source:ADDR``)."""

    __tablename__ = "login_throttle"

    key: Mapped[str] = mapped_column(String(300), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    last_failure_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


def create_tables(engine: Engine) -> None:
    """Make sure the access-control and audit tables exist (idempotent).

    They are created with every other table when the database is new; see
    :func:`overread.audit.create_tables`.
    """
    create_audit_tables(engine)


__all__ = ["ApiToken", "LoginThrottle", "User", "create_tables", "utcnow"]
