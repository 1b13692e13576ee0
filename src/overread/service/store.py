"""A content-addressed object store on the local file system.

Each object is stored once under ``root/ab/cdef...`` where ``abcdef...`` is the
SHA-256 of its bytes. A write goes to a temporary file in the same directory, is
fsync'd, renamed into place (atomic on POSIX), and then the directory itself is
fsync'd so the new name survives a crash too. Only after :meth:`ObjectStore.put`
returns may anyone be told the object is safe. Identical bytes are stored once.

The same interface (``put``/``path``/``open``/``exists``) is what an S3-compatible
store would implement.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from overread.errors import ServiceError


@dataclass(frozen=True)
class StoredObject:
    """Where an object lives and what it is."""

    key: str
    sha256: str
    size: int
    path: Path
    created: bool


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ObjectStore:
    """Content-addressed files under ``root``.

    Parameters
    ----------
    root
        The store's directory (created if missing).
    fsync
        Flush file and directory to stable storage before :meth:`put` returns. Switch
        off only for throwaway data (tests of unrelated code, benchmarks of the rest).
    """

    def __init__(self, root: Path, *, fsync: bool = True) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key_for(sha256: str) -> str:
        """The relative key (``ab/cdef...``) of an object with this digest."""
        return f"{sha256[:2]}/{sha256[2:]}"

    def path(self, key: str) -> Path:
        """The file holding the object ``key``."""
        if len(key) != 65 or key[2] != "/" or not all(c in "0123456789abcdef/" for c in key):
            raise ServiceError(f"invalid object key {key!r}")
        return self.root / key

    def exists(self, key: str) -> bool:
        """Whether the object ``key`` is stored."""
        return self.path(key).is_file()

    def read(self, key: str) -> bytes:
        """The bytes of object ``key``."""
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError:
            raise ServiceError(f"object {key} is missing from the store at {self.root}") from None

    def put(self, data: bytes) -> StoredObject:
        """Store ``data`` durably and return where it is.

        Raises
        ------
        OSError
            If the disk is full or unwritable; nothing partial is left under its final
            name (a stray temporary file may remain and is harmless).
        """
        digest = hashlib.sha256(data).hexdigest()
        key = self.key_for(digest)
        final = self.root / key
        if final.is_file() and final.stat().st_size == len(data):
            return StoredObject(key, digest, len(data), final, created=False)
        directory = final.parent
        created_dir = not directory.exists()
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                if self.fsync:
                    os.fsync(handle.fileno())
            os.replace(tmp_name, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        if self.fsync:
            _fsync_dir(directory)
            if created_dir:
                _fsync_dir(self.root)
        return StoredObject(key, digest, len(data), final, created=True)


__all__ = ["ObjectStore", "StoredObject"]
