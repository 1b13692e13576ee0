"""Signed session cookies for the web UI.

A session token is ``base64url(claims).base64url(HMAC-SHA256(claims))`` with claims
``{"u": user, "e": session epoch, "x": expiry, "n": nonce}``. Nothing secret is in
it and the server keeps no session table: the signature proves the server issued
it, the expiry bounds it, and the user's ``session_epoch`` (bumped on password
change or deactivation) revokes every older session at once. The role is never
taken from the cookie: it is read from the user row on each request.

The key comes from ``OVERREAD_SESSION_KEY`` or ``<data_dir>/security/session.key``
(created, mode 0600, on first use).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from overread.security.accounts import Principal, get_user
from overread.security.roles import Role
from overread.security.schema import utcnow

SESSION_KEY_ENV = "OVERREAD_SESSION_KEY"
SESSION_COOKIE = "overread_session"


def load_session_key(data_dir: Path) -> bytes:
    """The session signing key: ``OVERREAD_SESSION_KEY``, else the key file (created)."""
    env = os.environ.get(SESSION_KEY_ENV)
    if env:
        return env.encode("utf-8")
    path = data_dir / "security" / "session.key"
    if path.is_file():
        return bytes.fromhex(path.read_text(encoding="ascii").strip())
    path.parent.mkdir(parents=True, exist_ok=True)
    key_hex = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key_hex + "\n")
    return bytes.fromhex(key_hex)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class SessionClaims:
    """What a valid session token says."""

    username: str
    epoch: int
    expires_at: float


class SessionSigner:
    """Issues and checks session tokens under one key.

    Parameters
    ----------
    key
        At least 16 bytes of secret.
    lifetime
        How long a session lasts (default 8 hours: one shift).
    """

    def __init__(self, key: bytes, *, lifetime: timedelta = timedelta(hours=8)) -> None:
        if len(key) < 16:
            raise ValueError("session key too short: at least 16 bytes")
        self._key = key
        self.lifetime = lifetime

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._key, b"overread-session:" + payload, hashlib.sha256).digest()

    def issue(self, username: str, epoch: int, *, now: datetime | None = None) -> str:
        """A new session token for ``username`` under their current ``epoch``."""
        now = now or utcnow()
        claims = {
            "u": username,
            "e": epoch,
            "x": (now + self.lifetime).timestamp(),
            "n": secrets.token_urlsafe(8),
        }
        payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode("utf-8")
        return f"{_b64(payload)}.{_b64(self._mac(payload))}"

    def read(self, token: str, *, now: datetime | None = None) -> SessionClaims | None:
        """The claims of a genuine, unexpired token; None for anything else."""
        try:
            payload_text, mac_text = token.split(".", 1)
            payload = _unb64(payload_text)
            mac = _unb64(mac_text)
        except (ValueError, binascii.Error):
            return None
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            claims = json.loads(payload)
            result = SessionClaims(
                username=str(claims["u"]), epoch=int(claims["e"]), expires_at=float(claims["x"])
            )
        except (ValueError, KeyError, TypeError):
            return None
        if result.expires_at <= (now or utcnow()).timestamp():
            return None
        return result

    def resolve(
        self, session: Session, token: str, *, now: datetime | None = None
    ) -> Principal | None:
        """The principal behind a session token, checked against the user row."""
        claims = self.read(token, now=now)
        if claims is None:
            return None
        user = get_user(session, claims.username)
        if user is None or not user.active or user.session_epoch != claims.epoch:
            return None
        return Principal(username=user.username, role=Role(user.role), via="session")


__all__ = [
    "SESSION_COOKIE",
    "SESSION_KEY_ENV",
    "SessionClaims",
    "SessionSigner",
    "load_session_key",
]
