"""The PyTorch dataset: a LabelTable's images through the imaging core's chain.

Each item is ``(x, target, mask)``: ``x`` float32 (C, H, W) as the chain made
it (for :func:`~overread.imaging.transforms.cxr_chain`, [0, 1], bone bright),
``target`` and ``mask`` float32 (L,) from the label policy; with
``return_metadata=True`` a fourth element, a dict with the row, path, patient
and study. Training and serving use the same chain object (its spec goes into
the model package), so a model sees at training exactly the pixels it will see
in service.

Decoded, preprocessed images can be cached: ``cache="memory"`` (a dict, for
tests and small sets) or a folder (an :class:`~overread.data.cache.ImageCache`
memory-mapped file shared by DataLoader workers and later runs), so an epoch is
not bound by DICOM decoding.

A file that cannot be read or decoded does not stop an epoch: it is logged,
recorded in :attr:`CxrDataset.skipped`, and the next readable row is returned
in its place. :meth:`CxrDataset.prepare` decodes everything up front (filling
the cache) and drops unreadable rows, so that afterwards every index is a real
image; call it before training.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from overread.data.cache import FAILED, CacheDtype, ImageCache
from overread.data.policy import LabelPolicy, apply_policy
from overread.data.table import LabelTable, SkippedRow
from overread.errors import DatasetError, OverreadError
from overread.imaging import Image, read
from overread.imaging.transforms import Compose, Resize, cxr_chain

log = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float32]
ImageReader = Callable[[Path], Image]


def _output_shape(chain: Compose) -> tuple[int, int] | None:
    """The (rows, cols) a chain ends with, if its last resize fixes it."""
    size: tuple[int, int] | None = None
    for step in chain:
        if isinstance(step, Resize):
            size = step.size
        elif isinstance(step, Compose):
            size = _output_shape(step) or size
    return size


class CxrDataset(Dataset[tuple[Any, ...]]):
    """A map-style dataset of (x, target, mask[, metadata]) for a LabelTable.

    Parameters
    ----------
    table
        The images and raw labels; paths resolve against ``table.root``.
    chain
        The preprocessing chain; default ``cxr_chain(size)``.
    policy
        Label policy (object or text) turning raw labels into targets and masks.
    targets, mask
        Precomputed (N, L) arrays instead of ``policy`` (e.g. exact truth labels).
    size
        Output size when ``chain`` is not given.
    channels
        Number of channels of ``x``; a grey image is repeated (3 for ImageNet
        weights).
    cache
        None, ``"memory"`` (a dict in each process: with DataLoader workers,
        each worker decodes its own share again), or a folder for a
        memory-mapped :class:`ImageCache` shared by all processes.
    cache_dtype
        ``"float16"`` or ``"uint8"`` (folder caches).
    images
        In-memory images (N, H, W) aligned with the table's rows: no file is
        read (tests, or images already preprocessed elsewhere).
    augment
        Called on each ``x`` tensor after loading (never cached).
    return_metadata
        Also return a dict with ``row``, ``path``, ``patient_id``, ``study_id``.
    reader
        Image reader; default :func:`overread.imaging.read`.
    """

    def __init__(
        self,
        table: LabelTable,
        chain: Compose | None = None,
        policy: LabelPolicy | str = "u-ignore",
        *,
        targets: npt.ArrayLike | None = None,
        mask: npt.ArrayLike | None = None,
        size: int = 224,
        channels: int = 1,
        cache: Literal["memory"] | str | Path | None = None,
        cache_dtype: CacheDtype = "float16",
        images: npt.ArrayLike | None = None,
        augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
        return_metadata: bool = False,
        reader: ImageReader | None = None,
    ) -> None:
        self.table = table
        self.chain = chain if chain is not None else cxr_chain(size)
        if channels < 1:
            raise DatasetError(f"channels must be at least 1, got {channels}")
        self.channels = channels
        self.augment = augment
        self.return_metadata = return_metadata
        self.reader: ImageReader = reader if reader is not None else read
        self.skipped: list[SkippedRow] = []
        n = len(table)
        if targets is not None or mask is not None:
            t = np.asarray(targets if targets is not None else np.zeros((n, len(table.labels))))
            m = np.asarray(mask if mask is not None else np.ones_like(t))
            self.targets = t.astype(np.float32)
            self.mask = m.astype(np.float32)
        else:
            self.targets, self.mask = apply_policy(table, policy, table.labels)
        if self.targets.shape != (n, len(table.labels)) or self.mask.shape != self.targets.shape:
            raise DatasetError(
                f"targets {self.targets.shape} and mask {self.mask.shape} do not match "
                f"{n} rows x {len(table.labels)} labels"
            )
        self._rows = np.arange(n, dtype=np.int64)
        self._bad: dict[int, str] = {}
        self._images: FloatArray | None = None
        if images is not None:
            arr = np.asarray(images, dtype=np.float32)
            if arr.shape[0] != n or arr.ndim not in (3, 4):
                raise DatasetError(f"images of shape {arr.shape} do not match {n} table rows")
            self._images = arr
        self._memory: dict[int, FloatArray] | None = None
        self._cache: ImageCache | None = None
        self._slots: npt.NDArray[np.int64] | None = None
        if cache == "memory":
            self._memory = {}
        elif cache is not None and self._images is None:
            shape = _output_shape(self.chain) or self._probe_shape()
            self._cache = ImageCache(Path(cache), self.chain.to_spec(), shape, cache_dtype)
            self._slots = self._cache.slots_for([table.image_path(i) for i in range(n)])

    # -- sizes and labels -------------------------------------------------
    def __len__(self) -> int:
        return len(self._rows)

    @property
    def labels(self) -> list[str]:
        return list(self.table.labels)

    @property
    def rows(self) -> npt.NDArray[np.int64]:
        """Table rows this dataset serves (readable ones, after :meth:`prepare`)."""
        return self._rows.copy()

    # -- loading ----------------------------------------------------------
    def _probe_shape(self) -> tuple[int, int]:
        for row in range(len(self.table)):
            try:
                rows, cols = self._decode(row).shape[-2:]
                return int(rows), int(cols)
            except Exception:
                continue
        raise DatasetError("no image of the table could be read to learn the chain's output shape")

    def _decode(self, row: int) -> FloatArray:
        """Read and preprocess one image; raise on any failure."""
        path = self.table.image_path(row)
        image = self.chain(self.reader(path))
        pixels = np.asarray(image.pixels, dtype=np.float32)
        if pixels.ndim == 3 and pixels.shape[-1] == 3:
            pixels = np.moveaxis(pixels, -1, 0)
        if pixels.ndim not in (2, 3):
            raise DatasetError(f"{path}: chain output has shape {pixels.shape}, expected (H, W)")
        if not np.isfinite(pixels).all():
            raise DatasetError(f"{path}: chain output has non-finite values")
        return np.ascontiguousarray(pixels)

    def load_image(self, row: int) -> FloatArray:
        """Preprocessed pixels of table row ``row`` (H, W), via the cache.

        Raises
        ------
        DatasetError
            If the image cannot be read or decoded (also when a cache recorded
            that it failed before).
        """
        if self._images is not None:
            given: FloatArray = self._images[row]
            return given
        if row in self._bad:
            raise DatasetError(self._bad[row])
        if self._memory is not None and row in self._memory:
            return self._memory[row]
        if self._cache is not None and self._slots is not None:
            slot = int(self._slots[row])
            cached = self._cache.get(slot)
            if cached is not None:
                return cached
            if self._cache.status(slot) == FAILED:
                raise DatasetError(self._cache.error(slot))
        try:
            pixels = self._decode(row)
            if self._cache is not None and self._slots is not None:
                self._cache.put(int(self._slots[row]), pixels)
        except Exception as exc:
            # Any failure on one file (a decoder's own exception types included)
            # is that file's problem, not the epoch's.
            message = _failure_message(self.table.image_path(row), exc)
            self._record_failure(row, message)
            raise DatasetError(message) from exc
        if self._memory is not None:
            self._memory[row] = pixels
        return pixels

    def _record_failure(self, row: int, message: str) -> None:
        self._bad[row] = message
        self.skipped.append(
            SkippedRow(self._line(row), str(self.table.frame["path"].iat[row]), message)
        )
        log.warning("skipping unreadable image: %s", message)
        if self._cache is not None and self._slots is not None:
            self._cache.put_error(int(self._slots[row]), message)

    def _line(self, row: int) -> int:
        """The label file line of a table row (0 if the table does not know it)."""
        if "source_line" not in self.table.frame.columns:
            return 0
        lines = pd.to_numeric(self.table.frame["source_line"], errors="coerce").to_numpy(
            dtype=np.float64, na_value=0.0
        )
        return int(lines[row])

    def _to_tensor(self, pixels: FloatArray) -> torch.Tensor:
        x = torch.from_numpy(np.array(pixels, dtype=np.float32, copy=True))
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if x.shape[0] != self.channels:
            if x.shape[0] == 1:
                x = x.expand(self.channels, -1, -1).contiguous()
            else:
                raise DatasetError(
                    f"image has {x.shape[0]} channels, dataset wants {self.channels}"
                )
        return x

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        n = len(self._rows)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images")
        index %= n
        for step in range(n):
            row = int(self._rows[(index + step) % n])
            try:
                pixels = self.load_image(row)
            except DatasetError:
                continue
            x = self._to_tensor(pixels)
            if self.augment is not None:
                x = self.augment(x)
            target = torch.from_numpy(self.targets[row].copy())
            mask = torch.from_numpy(self.mask[row].copy())
            if not self.return_metadata:
                return x, target, mask
            frame = self.table.frame
            meta = {
                "row": row,
                "path": str(frame["path"].iat[row]),
                "patient_id": str(frame["patient_id"].iat[row]),
                "study_id": str(frame["study_id"].iat[row]),
            }
            return x, target, mask, meta
        raise DatasetError(f"none of the {n} images of this dataset could be read")

    # -- preparation ------------------------------------------------------
    def prepare(self, num_workers: int = 0) -> list[SkippedRow]:
        """Decode every image now (filling the cache) and drop unreadable rows.

        Parameters
        ----------
        num_workers
            DataLoader workers that decode in parallel; the main process stores
            the results.

        Returns
        -------
        list of SkippedRow
            The rows dropped by this call, each naming the file and the error.
        """
        if self._images is not None:
            return []
        before = len(self.skipped)
        todo = [int(r) for r in self._rows if not self._is_ready(int(r))]
        if num_workers > 0 and todo:
            loader = DataLoader(
                _Decoder(self, todo),
                batch_size=None,
                num_workers=num_workers,
                collate_fn=_as_is,
            )
            for row, pixels, message in loader:
                if message is not None:
                    self._record_failure(row, message)
                elif self._cache is not None and self._slots is not None:
                    self._cache.put(int(self._slots[row]), pixels)
                elif self._memory is not None:
                    self._memory[row] = pixels
        else:
            for row in todo:
                # Without a cache this only checks that each image decodes.
                with contextlib.suppress(DatasetError):
                    self.load_image(row)
        good = [
            int(r)
            for r in self._rows
            if int(r) not in self._bad and not self._failed_in_cache(int(r))
        ]
        for row in self._rows:
            if self._failed_in_cache(int(row)) and int(row) not in self._bad:
                assert self._cache is not None and self._slots is not None
                self._bad[int(row)] = self._cache.error(int(self._slots[int(row)]))
                self.skipped.append(
                    SkippedRow(
                        self._line(int(row)),
                        str(self.table.frame["path"].iat[int(row)]),
                        self._bad[int(row)],
                    )
                )
        self._rows = np.array(good, dtype=np.int64)
        return self.skipped[before:]

    def _failed_in_cache(self, row: int) -> bool:
        if self._cache is None or self._slots is None:
            return False
        return self._cache.status(int(self._slots[row])) == FAILED

    def _is_ready(self, row: int) -> bool:
        if row in self._bad:
            return True
        if self._memory is not None:
            return row in self._memory
        if self._cache is not None and self._slots is not None:
            return self._cache.status(int(self._slots[row])) != 0
        return False


def _failure_message(path: Path, exc: Exception) -> str:
    """One line naming the file and the error (with its type unless it is ours)."""
    text = str(exc) if str(path) in str(exc) else f"{path}: {exc}"
    return text if isinstance(exc, OverreadError) else f"{path}: {type(exc).__name__}: {exc}"


def _as_is(item: Any) -> Any:
    """Collate function that leaves decoded arrays as they are."""
    return item


class _Decoder(Dataset[tuple[int, FloatArray | None, str | None]]):
    """Decode-only view used by :meth:`CxrDataset.prepare` with workers."""

    def __init__(self, dataset: CxrDataset, rows: Sequence[int]) -> None:
        self.dataset = dataset
        self.rows = list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> tuple[int, FloatArray | None, str | None]:
        row = self.rows[index]
        try:
            return row, self.dataset._decode(row), None
        except Exception as exc:
            return row, None, _failure_message(self.dataset.table.image_path(row), exc)


def make_loader(
    dataset: CxrDataset,
    batch_size: int = 32,
    *,
    shuffle: bool = False,
    num_workers: int = 0,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader[tuple[Any, ...]]:
    """A DataLoader with a seeded shuffle, for a dataset's (x, target, mask) items."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=num_workers > 0,
    )


__all__ = ["CxrDataset", "make_loader"]
