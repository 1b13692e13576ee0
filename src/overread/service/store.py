"""A content-addressed object store on the local file system.

Each object is stored once under ``root/ab/cdef...`` where ``abcdef...`` is the
SHA-256 of its bytes. A write goes to a temporary file in the same directory, is
fsync'd, renamed into place (atomic on POSIX), and then the directory itself is
fsync'd so the new name survives a crash too. Only after :meth:`ObjectStore.put`
returns may anyone be told the object is safe. Identical bytes are stored once; a
writer that finds its object already stored fsyncs that file and its directory
before returning (the writer that renamed it there may not have yet).

The 256 two-hex-digit directories are created (and the root fsync'd) once when the
store opens, so a write costs one file fsync and one directory fsync, never a third
for a new directory.

The same interface (``put``/``path``/``open``/``exists``) is what an S3-compatible
store would implement.

Because identical bytes share one file, a writer that finds its object already there
and a clean-up that removes the object when no row references it could cross: the
writer's row, committed just after the clean-up looked, would name a file removed
just after. :meth:`ObjectStore.referencing` (a writer: store, then record the row
before leaving the block) and :meth:`ObjectStore.remove_unreferenced` (retention:
look for rows, then remove) exclude each other through a lock file per key prefix
(``ab.lock`` in ``<root>.locks`` beside the store, so the store holds objects only;
``flock``: shared for writers, exclusive for removal), across threads and processes
sharing the store.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import logging
import mmap
import os
import queue
import re
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from overread.errors import ServiceError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoredObject:
    """Where an object lives and what it is."""

    key: str
    sha256: str
    size: int
    path: Path
    created: bool


#: Objects still arriving are written under this folder of the store (same file
#: system, so they are renamed into place, never copied).
INCOMING_DIR = ".incoming"

#: The store's lock files (one per key prefix) are in a folder beside it: its name
#: and this suffix.
LOCK_DIR_SUFFIX = ".locks"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_existing(path: Path) -> bool:
    """fsync an object already stored under its final name, and its directory.

    Another writer may have renamed it into place and not yet fsync'd the directory:
    whoever finds it there must not report it safe before it is. Returns False when
    the file is gone (removed meanwhile): the caller then writes it anew.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_dir(path.parent)
    return True


#: An incoming file whose lock is free is removed as abandoned only once it has not
#: changed for this long (a second guard, beside the lock, for file systems whose
#: locks are not shared between hosts).
STALE_INCOMING_SECONDS = 3600.0

#: Where the lock cannot be trusted to show a writer at work (a network file system,
#: whose ``flock`` may be local to each host or emulated) and its writer cannot be
#: shown gone either (written on another host, or by a process id alive here, which
#: may have been reused), an incoming file is removed only once it has not changed
#: for this long: a writer at work changes its file at least every network timeout.
STALE_UNVERIFIED_INCOMING_SECONDS = 86400.0

#: File system types whose locks may not be shared between the hosts (or even the
#: processes) using them: ``flock`` is a no-op, local to one client, or emulated.
NETWORK_FILESYSTEMS = frozenset(
    {
        "nfs",
        "nfs4",
        "cifs",
        "smb3",
        "smbfs",
        "9p",
        "fuse",
        "fuseblk",
        "lustre",
        "ceph",
        "glusterfs",
        "gpfs",
    }
)


def _unescape_mount(field: str) -> str:
    """A field of the mounts table, its octal escapes (``\\040`` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: Path, mounts: str | None = None) -> str:
    """The type of the file system ``path`` is on, as the mounts table names it
    (``ext4``, ``nfs4``, ``fuse.sshfs``...); ``""`` if the table cannot be read.

    ``mounts`` is the text of ``/proc/self/mounts`` (read when not given): the mount
    whose point is the longest prefix of ``path`` (resolved) wins; of mounts on the
    same point the last listed, which is the one in use (an NFS share mounted by
    ``autofs`` shows as ``autofs`` then ``nfs4``).
    """
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
    target = os.path.realpath(path)
    best, kind = -1, ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = _unescape_mount(fields[1]).rstrip("/") or "/"
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= best:
            best, kind = len(point), fields[2]
    return kind


def is_network_filesystem(kind: str) -> bool:
    """Whether file locks on a file system of type ``kind`` may not be shared."""
    return kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.")


def _writer_tag() -> str:
    """Who writes an incoming file, in its name: the host and PID namespace (a
    process id is only meaningful within both)."""
    host = re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "host"
    try:
        namespace = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        namespace = 0
    return f"{host}+{namespace}"


_OWNER = re.compile(r"^\.tmp-(\d+)-\d+-\d+@(.+)$")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # not ours to signal: it exists
        return True
    return True


class IncomingObject:
    """An object written into the store's incoming folder while its bytes arrive.

    :meth:`write` hands each chunk to a thread of this object's own, which writes it
    (unbuffered) and feeds it to the SHA-256, so the copy into the page cache and the
    hash run while the network delivers the next chunks (both release the interpreter
    lock); :meth:`finish` waits for the last chunk and gives the digest and size. The
    file is only a candidate: :meth:`ObjectStore.adopt` fsyncs it and renames it into
    place under its content address. :meth:`discard` removes whatever is left, and the
    owner calls it in a ``finally`` whatever happened (a refused instance, a failed
    write, an aborted association), so nothing partial stays behind.

    Raises
    ------
    OSError
        From the constructor when the file cannot be created; from :meth:`finish`
        when a write failed (disk full): the object must then not be acknowledged.
    """

    def __init__(self, path: Path, *, sync: bool = False) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        # Held until the file is closed: the mark, seen by every process and host
        # sharing the store, that it is still being received.
        # (Blocking: a clean-up looking at it holds the lock for an instant.)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX)
        except OSError:
            os.close(self._fd)
            raise
        self._hash = hashlib.sha256()
        self._size = 0
        self._error: OSError | None = None
        self._digest: str | None = None
        self._closed = False
        # With ``sync`` the writer fsyncs the file as soon as the last chunk is
        # written, while the owner checks the header and looks for a duplicate.
        self._sync_early = sync
        self._synced = False
        self._sync_error: OSError | None = None
        self._ended = False
        self._end_lock = threading.Lock()
        self._written = threading.Event()
        self._chunks: queue.SimpleQueue[bytes | memoryview | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._drain, name="store-incoming", daemon=True)
        self._thread.start()

    def write(self, chunk: bytes | memoryview) -> None:
        """Queue ``chunk`` (not copied: the caller must not change it) for writing."""
        if chunk:
            self._chunks.put(chunk)

    def end(self) -> None:
        """No more chunks will come (the last one arrived): once it is written the
        writer starts the fsync, if asked to. Safe to call more than once."""
        with self._end_lock:
            if not self._ended:
                self._ended = True
                self._chunks.put(None)

    def _drain(self) -> None:
        try:
            while True:
                chunk = self._chunks.get()
                if chunk is None:
                    break
                if self._error is not None:
                    continue  # a failed write: the rest is dropped, finish() raises
                try:
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(self._fd, view) :]
                    self._hash.update(chunk)
                except OSError as exc:
                    self._error = exc
                    continue
                except BaseException as exc:
                    self._error = OSError(f"writing incoming object {self.path.name}: {exc!r}")
                    continue
                self._size += len(chunk)
        except BaseException as exc:
            if self._error is None:
                self._error = OSError(f"writing incoming object {self.path.name}: {exc!r}")
        finally:
            self._written.set()
        if self._sync_early and self._error is None:
            try:
                os.fsync(self._fd)
                self._synced = True
            except OSError as exc:
                self._sync_error = exc

    def _stop(self) -> None:
        self.end()
        self._thread.join()

    def finish(self) -> tuple[str, int]:
        """Wait for every chunk written so far; return ``(sha256, size)``. (No chunk
        may be written after this.)

        Raises
        ------
        OSError
            If a write failed or the object was discarded.
        """
        if self._closed:
            raise OSError(f"incoming object {self.path.name} was discarded")
        self.end()
        self._written.wait()
        if self._error is not None:
            raise self._error
        if self._digest is None:
            self._digest = self._hash.hexdigest()
        return self._digest, self._size

    @property
    def finished(self) -> bool:
        """Whether :meth:`finish` succeeded."""
        return self._digest is not None

    @contextlib.contextmanager
    def mapped(self) -> Iterator[mmap.mmap | bytes]:
        """The finished object's bytes, mapped read-only (no copy); ``b""`` if empty."""
        _, size = self.finish()
        if size == 0:
            yield b""
            return
        view = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
        try:
            yield view
        finally:
            view.close()

    def sync(self) -> None:
        """fsync the file (its data and size): wait for the writer's fsync, or do it."""
        self._stop()
        if self._sync_error is not None:
            raise self._sync_error
        if not self._synced:
            os.fsync(self._fd)

    def keep_as(self, target: Path) -> Path:
        """Move (or, across file systems, copy) what arrived to ``target``; return
        where it went.

        Raises
        ------
        OSError
            If it cannot be kept, or if writing what arrived failed (disk full): the
            truncated copy is then kept as ``target`` with ``.incomplete`` appended,
            never under the name of a whole payload, and the error names it.
        """
        self._stop()
        error = self._error
        if error is not None:
            target = target.with_name(target.name + ".incomplete")
        try:
            os.replace(self.path, target)
        except OSError:
            shutil.copyfile(self.path, target)
        if error is not None:
            raise OSError(
                f"writing the payload failed ({error}); what was written is kept as {target.name}"
            ) from error
        return target

    def discard(self) -> None:
        """Stop the writer, remove the file (an adopted one is only unlinked from the
        incoming folder: it stays under its content address) and close it.

        The file is removed while its lock is still held: an incoming file that is
        also in place under its key (:meth:`ObjectStore.adopt` links it there) with
        its lock free was left by a writer that stopped between the two, see
        :meth:`ObjectStore.remove_stale_incoming`.
        """
        self._stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError):
                os.close(self._fd)


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
        #: The file system the store is on, and whether its locks may not be shared.
        self.filesystem = filesystem_type(self.root)
        self.network_filesystem = is_network_filesystem(self.filesystem)
        self._writer = _writer_tag()
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
            (self.root / INCOMING_DIR).mkdir(exist_ok=True)
            self._prepared = True

    def remove_stale_incoming(
        self,
        *,
        older_than: float = STALE_INCOMING_SECONDS,
        unverified_older_than: float = STALE_UNVERIFIED_INCOMING_SECONDS,
        recorded: Callable[[str], bool] | None = None,
    ) -> int:
        """Remove objects left half-received by a writer that is gone; return how many.

        A file is abandoned when nobody holds its lock (every
        :class:`IncomingObject` holds it until closed, whichever process or host
        wrote it) and it has not changed for ``older_than`` seconds. Its name says
        which process on which host wrote it: a writer still running here, or, on a
        network file system (whose lock may not show a writer on another host, see
        :data:`NETWORK_FILESYSTEMS`), a writer that cannot be shown gone, has its
        file removed only once unchanged for ``unverified_older_than`` seconds. A
        receiver calls this when it starts, never a writer on each object.

        An incoming file that is also in place under its content address (two links:
        :meth:`adopt` links it there, and its owner unlinks the incoming name only
        once the row is committed) whose writer is shown gone was left between the
        two: the object is stored, its row may not be. With ``recorded`` (whether a
        row references a key; the process that owns the database passes it) such a
        file is looked at whatever its age: a row references it, or the object is
        reported as stored without a row (logged as an error with its key; the
        sender was never acknowledged and sends it again, which records it). Its
        incoming name is removed either way; the object stays. Without
        ``recorded`` these files are left alone.
        """
        self.prepare()
        removed = 0
        now = time.time()
        for entry in os.scandir(self.root / INCOMING_DIR):
            if not entry.name.startswith(".tmp-"):
                continue
            owner = _OWNER.match(entry.name)
            here = owner is not None and owner.group(2) == self._writer
            # Shown gone: written here by a process that is no more, or anywhere when
            # the lock is to be trusted (a local file system: nobody else writes).
            gone = (
                not _pid_alive(int(owner.group(1)))
                if here and owner is not None
                else not self.network_filesystem
            )
            bound = older_than if gone else max(older_than, unverified_older_than)
            try:
                # Read-write: where flock is emulated by POSIX locks (NFS), an
                # exclusive lock needs a descriptor open for writing.
                fd = os.open(entry.path, os.O_RDWR | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                status = os.fstat(fd)
                if status.st_nlink > 1:  # in place under its key: see above
                    if recorded is not None and (gone or now - status.st_mtime > bound):
                        self._check_recorded(fd, entry.path, recorded)
                        os.unlink(entry.path)
                        removed += 1
                elif now - status.st_mtime > bound:
                    os.unlink(entry.path)  # under the lock: no writer can hold it
                    removed += 1
            except OSError:
                continue  # locked: still being received
            finally:
                os.close(fd)
        return removed

    def _check_recorded(self, fd: int, path: str, recorded: Callable[[str], bool]) -> None:
        """Report the object ``fd`` (an incoming file left in place) if no row
        references it."""
        digest = hashlib.sha256()
        with open(os.dup(fd), "rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        key = self.key_for(digest.hexdigest())
        if not recorded(key):
            logger.error(
                "object %s is stored but no instance row references it: its receiver "
                "stopped before recording it (the sender was not acknowledged and "
                "sends it again, which records it); the file is kept in the store",
                key,
            )

    def receive(self) -> IncomingObject:
        """A new :class:`IncomingObject` to write an arriving object into.

        Raises
        ------
        OSError
            If the store is not writable.
        """
        if not self._prepared:
            self.prepare()
        name = f".tmp-{os.getpid()}-{threading.get_ident()}-{next(self._names)}@{self._writer}"
        return IncomingObject(self.root / INCOMING_DIR / name, sync=self.fsync)

    def adopt(self, incoming: IncomingObject) -> StoredObject:
        """Store a finished :class:`IncomingObject` durably under its content address.

        As :meth:`put`: the file is fsync'd, renamed into place and its directory
        fsync'd before this returns; identical bytes already stored are kept and the
        incoming copy is left for :meth:`IncomingObject.discard`.

        Raises
        ------
        OSError
            If a write failed, or the disk is full or unwritable.
        """
        digest, size = incoming.finish()
        key = self.key_for(digest)
        final = self.root / key
        with contextlib.suppress(OSError):
            if os.stat(final).st_size == size and (not self.fsync or _sync_existing(final)):
                return StoredObject(key, digest, size, final, created=False)
        if not self._prepared:
            self.prepare()
        if self.fsync:
            incoming.sync()
        # Linked, not renamed: until its owner discards it (after the row is
        # committed) the incoming name stays too, the mark of an object in place
        # whose row may not exist yet (see remove_stale_incoming).
        try:
            os.link(incoming.path, final)
        except FileExistsError:  # identical bytes placed meanwhile by another writer
            if not self.fsync or _sync_existing(final):
                return StoredObject(key, digest, size, final, created=False)
            os.replace(incoming.path, final)
        except OSError:  # no hard links here (some network file systems)
            os.replace(incoming.path, final)
        if self.fsync:
            _fsync_dir(final.parent)
        return StoredObject(key, digest, size, final, created=True)

    @contextlib.contextmanager
    def referencing_incoming(self, incoming: IncomingObject) -> Iterator[StoredObject]:
        """:meth:`referencing` for an object that arrived as an :class:`IncomingObject`."""
        digest, _ = incoming.finish()
        with self._prefix_lock(digest[:2], exclusive=False):
            yield self.adopt(incoming)

    @contextlib.contextmanager
    def _prefix_lock(self, prefix: str, *, exclusive: bool) -> Iterator[None]:
        """Hold the lock of the objects whose keys start with ``prefix`` (two hex
        digits): shared (writers) or exclusive (removal). Each holder opens the lock
        file itself, so threads of one process exclude each other as processes do."""
        locks = self.root.with_name(self.root.name + LOCK_DIR_SUFFIX)
        locks.mkdir(exist_ok=True)
        fd = os.open(locks / f"{prefix}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # releases the lock

    @contextlib.contextmanager
    def referencing(self, data: bytes) -> Iterator[StoredObject]:
        """Store ``data`` (as :meth:`put`) and keep it from being removed until the
        block ends: the caller commits the row that references it inside the block,
        so :meth:`remove_unreferenced` either sees that row or ran entirely before the
        object was stored (and the object is then written anew)."""
        digest = hashlib.sha256(data).hexdigest()
        with self._prefix_lock(digest[:2], exclusive=False):
            yield self.put(data)

    def remove_unreferenced(self, key: str, referenced: Callable[[], bool]) -> int | None:
        """Remove object ``key`` unless ``referenced()`` (asked under the lock, so
        it sees every row a writer in :meth:`referencing` committed) says a row still
        needs it. Returns the bytes freed, or None when it was kept or already gone.

        Raises
        ------
        OSError
            If the file exists but cannot be removed.
        """
        path = self.path(key)
        with self._prefix_lock(key[:2], exclusive=True):
            if referenced():
                return None
            try:
                size = path.stat().st_size
                path.unlink()
            except FileNotFoundError:
                return None
        return size

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
            if os.stat(final).st_size == len(data) and (not self.fsync or _sync_existing(final)):
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


__all__ = [
    "INCOMING_DIR",
    "IncomingObject",
    "ObjectStore",
    "StoredObject",
    "filesystem_type",
    "is_network_filesystem",
]
