"""A content-addressed object store on the local file system.

Each object is stored once under ``root/ab/cdef...`` where ``abcdef...`` is the
SHA-256 of its bytes. A write goes to a temporary file in the same directory, is
fsync'd, renamed into place (atomic on POSIX), and then the directory itself is
fsync'd so the new name survives a crash too. Only after :meth:`ObjectStore.put`
returns may anyone be told the object is safe. Identical bytes are stored once.

The 256 two-hex-digit directories are created (and the root fsync'd) once when the
store opens, so a write costs one file fsync and one directory fsync, never a third
for a new directory.

The same interface (``put``/``path``/``open``/``exists``) is what an S3-compatible
store would implement.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import threading
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
        self._names = itertools.count()
        self._prepared = False
        self._lock = threading.Lock()

    def prepare(self) -> None:
        """Create the 256 prefix directories and make their names durable, once.

        :meth:`put` does it on first use; a receiver calls it when it starts so the
        first instances do not wait for it.

        Raises
        ------
        OSError
            If the directories cannot be created (read-only or full disk).
        """
        with self._lock:
            if self._prepared:
                return
            created = False
            for prefix in range(256):
                directory = self.root / f"{prefix:02x}"
                if not directory.is_dir():
                    directory.mkdir(exist_ok=True)
                    created = True
            if created and self.fsync:
                _fsync_dir(self.root)
            self._prepared = True

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
        with contextlib.suppress(OSError):
            if os.stat(final).st_size == len(data):
                return StoredObject(key, digest, len(data), final, created=False)
        if not self._prepared:
            self.prepare()
        directory = final.parent
        tmp_name = directory / f".tmp-{os.getpid()}-{threading.get_ident()}-{next(self._names)}"
        try:
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_name, final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
            raise
        if self.fsync:
            _fsync_dir(directory)
        return StoredObject(key, digest, len(data), final, created=True)


__all__ = ["ObjectStore", "StoredObject"]
