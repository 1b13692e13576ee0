"""The transform protocol and its registry (composition is in :mod:`.chain`).

Every transform registers under its ``name`` when its class is defined, which
is what lets :func:`build_chain` turn a JSON spec back into objects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from overread.imaging.image import Image

if TYPE_CHECKING:
    pass

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


def registered_transforms() -> dict[str, type[Transform]]:
    """Names accepted by :func:`build_chain`."""
    return dict(_REGISTRY)


__all__ = ["Transform", "registered_transforms", "spatial_frames"]
