"""Turning a label table into training tensors, once.

Reading a DICOM and running the imaging chain costs far more than a forward
pass of a small network, and training visits every image once per epoch. So a
run reads each image exactly once through the same chain that serving uses
(``overread.imaging.transforms``, recorded in the model package), stores the
result as float16 in ``<cache>/<key>.npy`` and trains from that. The key hashes
the file list, the files' sizes and modification times and the chain spec, so a
changed cohort or chain never reuses a stale cache. Images that fail to read are
left out with a one-line reason (the batch carries on).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from overread.errors import OverreadError

log = logging.getLogger(__name__)


class _ChainReader(Dataset[tuple[int, np.ndarray, str]]):
    """Reads ``paths[i]`` through the chain; returns ``(i, pixels, error)``."""

    def __init__(self, paths: list[Path], chain_spec: list[dict[str, Any]], size: int) -> None:
        self.paths = paths
        self.chain_spec = chain_spec
        self.size = size
        self._chain: Any = None

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, str]:
        from overread.imaging.transforms import build_chain

        if self._chain is None:
            self._chain = build_chain(self.chain_spec)
        try:
            # chain(path) reads as serving does (the reduced read included).
            pixels = np.asarray(self._chain(self.paths[i]).pixels, dtype=np.float32)
            if pixels.shape != (self.size, self.size):
                raise OverreadError(f"chain gave shape {pixels.shape}, expected square {self.size}")
            return i, pixels.astype(np.float16), ""
        except (OverreadError, OSError, ValueError) as exc:
            return i, np.zeros((self.size, self.size), np.float16), f"{self.paths[i]}: {exc}"


def _collate(batch: list[tuple[int, np.ndarray, str]]) -> list[tuple[int, np.ndarray, str]]:
    return batch


def cache_key(paths: list[Path], chain_spec: list[dict[str, Any]]) -> str:
    """Hash of the files (path, size, mtime) and the chain spec."""
    h = hashlib.sha256(json.dumps(chain_spec, sort_keys=True).encode())
    for p in paths:
        try:
            st = p.stat()
            h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{p}|missing\n".encode())
    return h.hexdigest()[:20]


def preprocess_images(
    paths: list[Path],
    chain_spec: list[dict[str, Any]],
    size: int,
    *,
    cache_dir: Path | None = None,
    num_workers: int = 0,
) -> tuple[np.ndarray, list[str]]:
    """``(N, 1, size, size)`` float16 pixels and one error string per image ('' if fine)."""
    key = cache_key(paths, chain_spec)
    if cache_dir is not None:
        arr_path, err_path = cache_dir / f"{key}.npy", cache_dir / f"{key}.errors.json"
        if arr_path.is_file() and err_path.is_file():
            log.info("reusing preprocessed images %s", arr_path)
            errors: list[str] = json.loads(err_path.read_text(encoding="utf-8"))
            return np.load(arr_path, mmap_mode="r"), errors
    out = np.zeros((len(paths), 1, size, size), np.float16)
    errors = [""] * len(paths)
    loader = DataLoader(
        _ChainReader(paths, chain_spec, size),
        batch_size=16,
        num_workers=num_workers,
        collate_fn=_collate,
    )
    for batch in loader:
        for i, pixels, error in batch:
            out[i, 0] = pixels
            errors[i] = error
            if error:
                log.warning("left out: %s", error)
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = cache_dir / f"{key}.tmp.npy"
        np.save(tmp, out)
        tmp.replace(cache_dir / f"{key}.npy")
        (cache_dir / f"{key}.errors.json").write_text(json.dumps(errors), encoding="utf-8")
    return out, errors


@dataclass
class TensorDataset(Dataset[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]):
    """Preprocessed images with targets and masks: what :class:`Trainer` consumes.

    ``targets`` and ``mask`` are exposed so the trainer can compute ``pos_weight``
    and sampling weights without touching the images.
    """

    images: np.ndarray
    targets: np.ndarray
    mask: np.ndarray
    patient_ids: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.asarray(self.images[i], dtype=np.float32))
        return x, torch.from_numpy(self.targets[i]), torch.from_numpy(self.mask[i])

    def subset(self, keep: np.ndarray) -> TensorDataset:
        """Rows where ``keep`` is true."""
        idx = np.flatnonzero(keep)
        return TensorDataset(
            images=np.asarray(self.images)[idx],
            targets=self.targets[idx],
            mask=self.mask[idx],
            patient_ids=[self.patient_ids[i] for i in idx] if self.patient_ids else [],
            paths=[self.paths[i] for i in idx] if self.paths else [],
        )


def file_sha256(path: Path) -> str:
    """sha256 of a file (for the run record's data hashes)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def array_sha256(array: np.ndarray) -> str:
    """sha256 of an array's bytes."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


__all__ = [
    "TensorDataset",
    "array_sha256",
    "cache_key",
    "file_sha256",
    "preprocess_images",
]
