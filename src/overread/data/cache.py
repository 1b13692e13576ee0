"""A memory-mapped cache of preprocessed images, keyed by file and chain.

Decoding a 16-bit DICOM and running the chest X-ray chain costs tens of
milliseconds per image; reading 224x224 values back from a memory-mapped file
costs microseconds. One cache folder holds one transform chain (its spec's
SHA-256 names the folder) and one output shape, in two flat files:

- ``pixels.bin``: (capacity, *shape) float16 or uint8 (uint8 stores [0, 1] as
  0..255, half the size, for chains that end in [0, 1]),
- ``status.bin``: one byte per slot: 0 empty, 1 stored, 2 failed to decode,

plus ``index.json`` mapping each file's key (resolved path, size and
modification time, so an edited file is decoded again) to its slot, and
``errors.jsonl`` with the reason a slot failed. Slots are assigned only in the
process that builds the dataset (under a file lock); DataLoader workers then
write pixels and status bytes into their own slots of the shared mapping, which
needs no further locking.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from overread.errors import DatasetError

CacheDtype = Literal["float16", "uint8"]

EMPTY, STORED, FAILED = 0, 1, 2
_GROWTH = 1024


def chain_hash(spec: Any) -> str:
    """SHA-256 of a chain spec's canonical JSON."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_key(path: Path) -> str:
    """The cache key of an image file: resolved path, size and mtime (ns)."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError:
        return f"{resolved}|missing"
    return f"{resolved}|{stat.st_size}|{stat.st_mtime_ns}"


class ImageCache:
    """Preprocessed images of one chain, stored in a memory-mapped file.

    Parameters
    ----------
    folder
        Parent folder; the cache lives in a sub-folder named after the chain
        hash, dtype and shape.
    chain_spec
        The transform chain's spec (``Compose.to_spec()``).
    shape
        Shape of one preprocessed image, e.g. (224, 224).
    dtype
        ``"float16"`` (default) or ``"uint8"``.
    """

    def __init__(
        self,
        folder: Path,
        chain_spec: Any,
        shape: Sequence[int],
        dtype: CacheDtype = "float16",
    ) -> None:
        if dtype not in ("float16", "uint8"):
            raise DatasetError(f"cache dtype must be 'float16' or 'uint8', not {dtype!r}")
        self.shape = tuple(int(s) for s in shape)
        self.dtype: CacheDtype = dtype
        self.spec_hash = chain_hash(chain_spec)
        size = "x".join(map(str, self.shape))
        self.folder = Path(folder) / f"{self.spec_hash[:16]}-{dtype}-{size}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._pixels: np.memmap[Any, np.dtype[Any]] | None = None
        self._status: np.memmap[Any, np.dtype[np.uint8]] | None = None
        self._mapped_capacity = 0
        self._errors: dict[int, str] | None = None
        spec_file = self.folder / "chain.json"
        if not spec_file.exists():
            spec_file.write_text(json.dumps(chain_spec, indent=1, default=str))

    # -- layout -----------------------------------------------------------
    @property
    def _index_file(self) -> Path:
        return self.folder / "index.json"

    def _item_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(self.dtype).itemsize

    def _capacity_on_disk(self) -> int:
        status = self.folder / "status.bin"
        return status.stat().st_size if status.exists() else 0

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.folder / "lock", "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read_index(self) -> dict[str, int]:
        if not self._index_file.exists():
            return {}
        data = json.loads(self._index_file.read_text())
        return {str(k): int(v) for k, v in data.get("slots", {}).items()}

    def slots_for(self, paths: Sequence[Path]) -> npt.NDArray[np.int64]:
        """Slot numbers for these files, registering new ones (main process only)."""
        keys = [file_key(p) for p in paths]
        with self._locked():
            index = self._read_index()
            for key in keys:
                if key not in index:
                    index[key] = len(index)
            needed = len(index)
            capacity = self._capacity_on_disk()
            if needed > capacity:
                capacity = max(needed, capacity + _GROWTH)
                for name, item in (("pixels.bin", self._item_bytes()), ("status.bin", 1)):
                    with open(self.folder / name, "ab") as handle:
                        handle.truncate(capacity * item)
            if needed:
                tmp = self._index_file.with_suffix(".tmp")
                tmp.write_text(json.dumps({"slots": index}))
                os.replace(tmp, self._index_file)
        self._pixels = self._status = None
        return np.array([index[k] for k in keys], dtype=np.int64)

    def _map(self) -> tuple[np.memmap[Any, np.dtype[Any]], np.memmap[Any, np.dtype[np.uint8]]]:
        capacity = self._capacity_on_disk()
        if self._pixels is None or self._status is None or capacity != self._mapped_capacity:
            if capacity == 0:
                raise DatasetError(f"{self.folder}: cache has no slots yet")
            self._pixels = np.memmap(
                self.folder / "pixels.bin",
                dtype=self.dtype,
                mode="r+",
                shape=(capacity, *self.shape),
            )
            self._status = np.memmap(
                self.folder / "status.bin", dtype=np.uint8, mode="r+", shape=(capacity,)
            )
            self._mapped_capacity = capacity
        return self._pixels, self._status

    # -- access -----------------------------------------------------------
    def status(self, slot: int) -> int:
        """EMPTY, STORED or FAILED."""
        return int(self._map()[1][slot])

    def get(self, slot: int) -> npt.NDArray[np.float32] | None:
        """The stored image as float32, or None if the slot is empty or failed."""
        pixels, status = self._map()
        if status[slot] != STORED:
            return None
        stored = np.asarray(pixels[slot])
        if self.dtype == "uint8":
            return stored.astype(np.float32) / np.float32(255.0)
        return stored.astype(np.float32)

    def put(self, slot: int, image: npt.NDArray[np.floating[Any]]) -> None:
        """Store an image (its shape must be the cache's)."""
        if tuple(image.shape) != self.shape:
            raise DatasetError(
                f"image of shape {tuple(image.shape)} does not fit a cache of shape {self.shape}"
            )
        pixels, status = self._map()
        if self.dtype == "uint8":
            pixels[slot] = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
        else:
            pixels[slot] = image.astype(np.float16)
        status[slot] = STORED

    def put_error(self, slot: int, message: str) -> None:
        """Mark a slot as failed, with the reason (so later epochs skip decoding it)."""
        _, status = self._map()
        line = json.dumps({"slot": slot, "error": message}) + "\n"
        fd = os.open(self.folder / "errors.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        status[slot] = FAILED
        self._errors = None

    def error(self, slot: int) -> str:
        """Why a failed slot failed."""
        if self._errors is None:
            self._errors = {}
            path = self.folder / "errors.jsonl"
            if path.exists():
                for line in path.read_text().splitlines():
                    with contextlib.suppress(ValueError, KeyError):
                        item = json.loads(line)
                        self._errors[int(item["slot"])] = str(item["error"])
        return self._errors.get(slot, "failed to decode (reason not recorded)")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_pixels"] = state["_status"] = None
        state["_mapped_capacity"] = 0
        return state


__all__ = ["EMPTY", "FAILED", "STORED", "CacheDtype", "ImageCache", "chain_hash", "file_key"]
