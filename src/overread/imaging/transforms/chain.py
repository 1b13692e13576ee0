"""Chains of transforms: composition, the spec round trip, and reading a file through one.

:class:`Compose` is what a model package records (:meth:`Compose.to_spec`) and
what :func:`build_chain` rebuilds; :meth:`Compose.read_and_apply` is the one
way training and serving read a file through it, so both run the same code
(and both take the reduced read of :mod:`overread.imaging.transforms.reduced`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from overread.errors import ConfigError
from overread.imaging.image import Image, ImageMetadata
from overread.imaging.transforms.base import Transform, registered_transforms
from overread.imaging.transforms.reduced import ReducedPlan

if TYPE_CHECKING:
    from overread.config import ImagingSettings


@dataclass(frozen=True)
class ChainRun:
    """A file read and run through a chain.

    ``source`` is the file's header as read (before any step), ``source_shape``
    its stored rows and columns and ``frames`` its frame count, which is what
    letterbox geometry and header checks need; ``processed`` is the chain's
    output, warnings included. ``reduced_first`` says the film was area-reduced
    before the window (see :mod:`overread.imaging.transforms.reduced`).
    """

    source: ImageMetadata
    source_shape: tuple[int, int]
    frames: int
    processed: Image
    reduced_first: bool


class Compose(Transform):
    """Apply transforms in order; serialises as the list of its steps' specs."""

    name = "compose"

    def __init__(self, transforms: Iterable[Transform]) -> None:
        self.transforms = list(transforms)

    def params(self) -> dict[str, Any]:
        return {"transforms": [t.to_spec() for t in self.transforms]}

    def to_spec(self) -> list[dict[str, Any]]:  # type: ignore[override]
        """The chain as a JSON-able list of ``{"name": ..., **params}``."""
        return [t.to_spec() for t in self.transforms]

    def __call__(self, image: Image | str | Path) -> Image:
        if not isinstance(image, Image):
            return self.read_and_apply(image).processed
        return self.apply(image, inplace=False)

    def read_and_apply(
        self, path: str | Path, *, settings: ImagingSettings | None = None
    ) -> ChainRun:
        """Read a file and run the chain on it: what training and serving both call.

        A native grey film whose chain is a window, inversion and area resize is
        reduced before the window (:mod:`overread.imaging.transforms.reduced`:
        within 1e-3 of the full-resolution order, a fraction of the time);
        anything else, or ``imaging.reduce_first = false``, is read in full and
        the chain applied step by step.
        """
        from overread.imaging.reader import default_imaging_settings, read, read_stored_values

        config = settings if settings is not None else default_imaging_settings()
        plan = ReducedPlan.of(self.transforms) if config.reduce_first else None
        if plan is not None:
            stored = read_stored_values(path, settings=config)
            processed = plan.run(stored) if stored is not None else None
            if stored is not None and processed is not None:
                rows, cols = stored.values.shape
                return ChainRun(stored.metadata, (int(rows), int(cols)), 1, processed, True)
        image = read(path, settings=config)
        frames = image.frame_count
        pixels = image.pixels
        shape = pixels.shape[-3:-1] if image.is_color else pixels.shape[-2:]
        processed = self.apply(image, inplace=False)
        return ChainRun(image.metadata, (int(shape[0]), int(shape[1])), frames, processed, False)

    def apply(self, image: Image, inplace: bool = False) -> Image:
        original = image.pixels
        for transform in self.transforms:
            owned = inplace or (
                image.pixels is not original and not np.may_share_memory(image.pixels, original)
            )
            image = transform.apply(image, inplace=owned)
        return image

    def __len__(self) -> int:
        return len(self.transforms)

    def __iter__(self) -> Any:
        return iter(self.transforms)


def build_chain(spec: Sequence[dict[str, Any]] | dict[str, Any]) -> Compose:
    """Rebuild a chain from :meth:`Compose.to_spec` output.

    Raises
    ------
    ConfigError
        If a step's name is unknown or its parameters are invalid.
    """
    items: Sequence[Any]
    if isinstance(spec, dict):
        items = spec.get("transforms") or spec.get("chain") or [spec]
    else:
        items = spec
    known = registered_transforms()
    steps: list[Transform] = []
    for item in items:
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"transform spec {item!r} has no 'name'")
        params = {k: v for k, v in item.items() if k != "name"}
        name = str(item["name"])
        if name == "compose":
            steps.append(build_chain(params.get("transforms", [])))
            continue
        cls = known.get(name)
        if cls is None:
            raise ConfigError(f"unknown transform {name!r}; known: {', '.join(sorted(known))}")
        try:
            steps.append(cls(**params))
        except TypeError as exc:
            raise ConfigError(f"transform {name!r}: {exc}") from None
    return Compose(steps)


__all__ = ["ChainRun", "Compose", "build_chain"]
