"""Signers for audit checkpoints: HMAC-SHA256 always, Ed25519 when ``cryptography`` is installed.

HMAC needs one shared secret to sign *and* to verify, so whoever can verify can also
forge. Ed25519 separates the two: the checkpoint job holds the private key, and an
auditor (or a second site) verifies with only the public key, which cannot sign.

Which signer :func:`load_checkpoint_signer` picks, first match wins:

1. ``OVERREAD_AUDIT_KEY`` set: HMAC with that key.
2. ``<data_dir>/audit/checkpoint-ed25519.key`` (private, PEM): Ed25519, can sign.
3. ``OVERREAD_AUDIT_PUBLIC_KEY`` (hex) or ``<data_dir>/audit/checkpoint-ed25519.pub``:
   Ed25519, verify only.
4. ``<data_dir>/audit/checkpoint.key``: HMAC.
5. With ``create``: a new Ed25519 key pair if ``cryptography`` is installed, else a
   new HMAC key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import importlib.util
import os
import secrets
from pathlib import Path
from typing import Any, Protocol

from overread.errors import AuditError

KEY_ENV = "OVERREAD_AUDIT_KEY"
PUBLIC_KEY_ENV = "OVERREAD_AUDIT_PUBLIC_KEY"
HMAC_ALGORITHM = "HMAC-SHA256"
ED25519_ALGORITHM = "Ed25519"


class CheckpointSigner(Protocol):
    """Signs and verifies checkpoint bodies."""

    @property
    def algorithm(self) -> str:
        """The name written into checkpoints."""
        ...

    @property
    def key_id(self) -> str:
        """A public fingerprint of the key, written into checkpoints."""
        ...

    @property
    def can_sign(self) -> bool:
        """Whether this signer holds a signing key."""
        ...

    def sign(self, message: bytes) -> str:
        """The hex signature of ``message``."""
        ...

    def verify(self, message: bytes, signature: str) -> bool:
        """Whether ``signature`` is genuine for ``message``."""
        ...


class HmacSigner:
    """HMAC-SHA256 under a shared secret."""

    algorithm = HMAC_ALGORITHM
    can_sign = True

    def __init__(self, key: bytes) -> None:
        if not key:
            raise AuditError("empty checkpoint key")
        self._key = key
        self.key_id = hashlib.sha256(b"overread-audit-key:" + key).hexdigest()[:16]

    def sign(self, message: bytes) -> str:
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def verify(self, message: bytes, signature: str) -> bool:
        return hmac.compare_digest(signature, self.sign(message))


def ed25519_available() -> bool:
    """Whether the optional ``cryptography`` package (for Ed25519) is installed."""
    return importlib.util.find_spec("cryptography") is not None


class Ed25519Signer:
    """Ed25519: signs with the private key (if held), verifies with the public key.

    Parameters
    ----------
    public_key
        The raw 32-byte public key.
    private_key
        The ``cryptography`` private key object, or None for a verify-only signer.
    """

    algorithm = ED25519_ALGORITHM

    def __init__(self, public_key: bytes, private_key: Any = None) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        if len(public_key) != 32:
            raise AuditError("an Ed25519 public key is 32 bytes")
        self._public = Ed25519PublicKey.from_public_bytes(public_key)
        self._private = private_key
        self.public_key = public_key
        self.key_id = hashlib.sha256(b"overread-audit-ed25519:" + public_key).hexdigest()[:16]

    @property
    def can_sign(self) -> bool:
        return self._private is not None

    @classmethod
    def generate(cls) -> Ed25519Signer:
        """A signer with a fresh key pair."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        private = Ed25519PrivateKey.generate()
        return cls(_raw_public(private), private)

    @classmethod
    def from_private_pem(cls, pem: bytes) -> Ed25519Signer:
        """A signer from a PKCS#8 PEM private key."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        private = load_pem_private_key(pem, password=None)
        if not isinstance(private, Ed25519PrivateKey):
            raise AuditError("the checkpoint private key is not an Ed25519 key")
        return cls(_raw_public(private), private)

    def private_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (to store with mode 0600)."""
        from cryptography.hazmat.primitives import serialization

        if self._private is None:
            raise AuditError("this checkpoint signer holds no private key")
        pem: bytes = self._private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return pem

    def sign(self, message: bytes) -> str:
        if self._private is None:
            raise AuditError("cannot sign a checkpoint with only the public key")
        signature: bytes = self._private.sign(message)
        return signature.hex()

    def verify(self, message: bytes, signature: str) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self._public.verify(bytes.fromhex(signature), message)
        except (InvalidSignature, ValueError):
            return False
        return True


def _raw_public(private: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    raw: bytes = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return raw


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def _need_cryptography(path: Path) -> None:
    if not ed25519_available():
        raise AuditError(f"{path}: Ed25519 checkpoint key, but 'cryptography' is not installed")


def load_checkpoint_signer(data_dir: Path, *, create: bool = False) -> CheckpointSigner:
    """The checkpoint signer configured for ``data_dir`` (see the module docstring).

    Raises
    ------
    AuditError
        If no key is configured and ``create`` is false, or a key file is unusable.
    """
    audit_dir = data_dir / "audit"
    private_path = audit_dir / "checkpoint-ed25519.key"
    public_path = audit_dir / "checkpoint-ed25519.pub"
    if os.environ.get(KEY_ENV):
        return HmacSigner(load_checkpoint_key(data_dir))
    if private_path.is_file():
        _need_cryptography(private_path)
        return Ed25519Signer.from_private_pem(private_path.read_bytes())
    public_hex = os.environ.get(PUBLIC_KEY_ENV) or (
        public_path.read_text(encoding="ascii").strip() if public_path.is_file() else ""
    )
    if public_hex:
        _need_cryptography(public_path)
        try:
            return Ed25519Signer(bytes.fromhex(public_hex))
        except ValueError:
            raise AuditError(f"{public_path}: not a hex Ed25519 public key") from None
    if (audit_dir / "checkpoint.key").is_file() or not create:
        return HmacSigner(load_checkpoint_key(data_dir))
    if not ed25519_available():
        return HmacSigner(load_checkpoint_key(data_dir, create=True))
    signer = Ed25519Signer.generate()
    _write_private(private_path, signer.private_pem())
    public_path.write_text(signer.public_key.hex() + "\n", encoding="ascii")
    return signer


def retired_keys_dir(data_dir: Path) -> Path:
    """Where keys taken out of service are kept, for verifying their old checkpoints."""
    return data_dir / "audit" / "retired-keys"


def load_verification_ring(data_dir: Path) -> list[CheckpointSigner]:
    """The configured signer (if any) plus every retired key: what verification accepts.

    Retired keys are ``<key_id>.pub`` (Ed25519 public key, hex: verifies only) and
    ``<key_id>.hmac`` (HMAC secret, hex) files in :func:`retired_keys_dir`.
    """
    ring: list[CheckpointSigner] = []
    with contextlib.suppress(AuditError):  # no current key: retired ones may still verify
        ring.append(load_checkpoint_signer(data_dir))
    directory = retired_keys_dir(data_dir)
    if directory.is_dir():
        for path in sorted(directory.iterdir()):
            text = path.read_text(encoding="ascii").strip()
            try:
                if path.suffix == ".pub":
                    _need_cryptography(path)
                    ring.append(Ed25519Signer(bytes.fromhex(text)))
                elif path.suffix == ".hmac":
                    ring.append(HmacSigner(bytes.fromhex(text)))
            except ValueError:
                raise AuditError(f"{path}: not a hex key") from None
    return ring


def rotate_checkpoint_key(data_dir: Path) -> tuple[CheckpointSigner, CheckpointSigner]:
    """Retire the current checkpoint key and create a new one; return (old, new).

    An Ed25519 private key is destroyed and only its public key kept; an HMAC secret
    is kept (it is needed to verify). Write a checkpoint with the new key at once, so
    the chain is anchored under it.

    Raises
    ------
    AuditError
        If the key comes from ``OVERREAD_AUDIT_KEY`` (rotate that by hand), or only
        a public key is configured here.
    """
    if os.environ.get(KEY_ENV):
        raise AuditError(f"the checkpoint key comes from {KEY_ENV}: rotate it there")
    old = load_checkpoint_signer(data_dir)
    if not old.can_sign:
        raise AuditError(
            "only a public checkpoint key is configured here: rotate on the signing host"
        )
    audit_dir = data_dir / "audit"
    retired = retired_keys_dir(data_dir)
    retired.mkdir(parents=True, exist_ok=True)
    if isinstance(old, Ed25519Signer):
        (retired / f"{old.key_id}.pub").write_text(old.public_key.hex() + "\n", encoding="ascii")
        (audit_dir / "checkpoint-ed25519.key").unlink()
        (audit_dir / "checkpoint-ed25519.pub").unlink(missing_ok=True)
    else:
        key_file = audit_dir / "checkpoint.key"
        key_file.replace(retired / f"{old.key_id}.hmac")
    new = load_checkpoint_signer(data_dir, create=True)
    return old, new


def load_checkpoint_key(data_dir: Path, *, create: bool = False) -> bytes:
    """The checkpoint signing key: ``OVERREAD_AUDIT_KEY``, else the key file.

    Parameters
    ----------
    data_dir
        The data directory whose ``audit/checkpoint.key`` holds the key.
    create
        Create a random 256-bit key file if there is none (used when writing the
        first checkpoint; verification never creates a key).

    Raises
    ------
    AuditError
        If there is no key and ``create`` is false.
    """
    env = os.environ.get(KEY_ENV)
    if env:
        return _key_bytes(env)
    path = data_dir / "audit" / "checkpoint.key"
    if path.is_file():
        return _key_bytes(path.read_text(encoding="ascii").strip())
    if not create:
        raise AuditError(f"{path}: no checkpoint key (and {KEY_ENV} is not set)")
    path.parent.mkdir(parents=True, exist_ok=True)
    key_hex = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as handle:
        handle.write(key_hex + "\n")
    return bytes.fromhex(key_hex)


def _key_bytes(text: str) -> bytes:
    try:
        if len(text) >= 32 and len(text) % 2 == 0:
            return bytes.fromhex(text)
    except ValueError:
        pass
    return text.encode("utf-8")


__all__ = [
    "ED25519_ALGORITHM",
    "HMAC_ALGORITHM",
    "KEY_ENV",
    "PUBLIC_KEY_ENV",
    "CheckpointSigner",
    "Ed25519Signer",
    "HmacSigner",
    "ed25519_available",
    "load_checkpoint_key",
    "load_checkpoint_signer",
    "load_verification_ring",
    "retired_keys_dir",
    "rotate_checkpoint_key",
]
