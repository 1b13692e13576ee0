"""Password hashing with Argon2id (argon2-cffi's defaults, RFC 9106 low-memory profile).

A hash records its own parameters, so raising them later only needs
:func:`needs_rehash` at the next successful login.
"""

from __future__ import annotations

from functools import lru_cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

MIN_PASSWORD_LENGTH = 8


@lru_cache(maxsize=1)
def _hasher() -> PasswordHasher:
    return PasswordHasher()


def hash_password(password: str) -> str:
    """The Argon2id hash of ``password`` (salted; encodes its parameters).

    Raises
    ------
    ValueError
        If the password is shorter than :data:`MIN_PASSWORD_LENGTH`.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"password too short: at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher().hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether ``password`` matches ``password_hash`` (False for an empty or bad hash)."""
    if not password_hash:
        return False
    try:
        return _hasher().verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether the hash was made with weaker parameters than the current ones."""
    return _hasher().check_needs_rehash(password_hash)


# A real hash to verify against when the user does not exist, so that an unknown
# name costs as much time as a wrong password and names cannot be probed by timing.
@lru_cache(maxsize=1)
def dummy_hash() -> str:
    """An Argon2 hash of a random password nobody knows."""
    import secrets

    return _hasher().hash(secrets.token_urlsafe(16))


__all__ = [
    "MIN_PASSWORD_LENGTH",
    "dummy_hash",
    "hash_password",
    "needs_rehash",
    "verify_password",
]
