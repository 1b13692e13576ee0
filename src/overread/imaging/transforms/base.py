"""The transform protocol, its registry, and composition.

Every transform registers under its ``name`` when its class is defined, which
is what lets :func:`build_chain` turn a JSON spec back into objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from overread.errors import ConfigError
from overread.imaging.image import Image

_REGISTRY: dict[str, type[Transform]] = {}


class Transform:
    """Base class: a named, serialisable ``Image -> Image`` step."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.name:
            _REGISTRY[cls.name] = cls

    def __call__(self, image: Image) -> Image:
        return self.apply(image, inplace=False)

    def apply(self, image: Image, inplace: bool = False) -> Image:
        """Transform ``image``; with ``inplace`` the step may overwrite its pixel buffer.

        :class:`Compose` passes ``inplace=True`` only for intermediate images it
        created itself (never the caller's), which saves a full-size copy per
        point-wise step on large films.
        """
        raise NotImplementedError

    def params(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this transform (JSON-able)."""
        return {}

    def to_spec(self) -> dict[str, Any]:
        """``{"name": ..., **params}``: what :func:`build_chain` consumes."""
        return {"name": self.name, **self.params()}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Transform) and self.to_spec() == other.to_spec()

    def __hash__(self) -> int:
        return hash(repr(self))


def spatial_frames(image: Image) -> int:
    """Number of leading frame axes' length, 0 when the image is a single frame."""
    spatial = image.pixels.ndim - (1 if image.is_color else 0)
    return int(image.pixels.shape[0]) if spatial == 3 else 0


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
            from overread.imaging.reader import read

            image = read(image)
        return self.apply(image, inplace=False)

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
    steps: list[Transform] = []
    for item in items:
        if not isinstance(item, dict) or "name" not in item:
            raise ConfigError(f"transform spec {item!r} has no 'name'")
        params = {k: v for k, v in item.items() if k != "name"}
        name = str(item["name"])
        if name == "compose":
            steps.append(build_chain(params.get("transforms", [])))
            continue
        cls = _REGISTRY.get(name)
        if cls is None:
            raise ConfigError(f"unknown transform {name!r}; known: {', '.join(sorted(_REGISTRY))}")
        try:
            steps.append(cls(**params))
        except TypeError as exc:
            raise ConfigError(f"transform {name!r}: {exc}") from None
    return Compose(steps)


def registered_transforms() -> dict[str, type[Transform]]:
    """Names accepted by :func:`build_chain`."""
    return dict(_REGISTRY)


__all__ = ["Compose", "Transform", "build_chain", "registered_transforms", "spatial_frames"]
