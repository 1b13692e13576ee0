"""The heatmap image on the study page, as PNG.

Three sources, best first:

1. ``stored-overlay``: the Secondary Capture overlay the worker stored with the
   result (built when the gateway runs with ``explain``, one per positive or referred
   finding); its RGB pixels are exactly what the PACS got, research caveat included.
2. ``computed``: no stored overlay for that finding, so the study's reference image
   is run through the result's model again with ``explain=True`` and the overlay is
   built by the same :func:`overread.service.outputs.build_overlay` (the caption burns
   in the model name and version that made it).
3. ``image-only``: no model available, or it gives no heatmap: the windowed image
   alone, so the reader still sees the film.

PNGs are kept in a small in-memory cache keyed by study, finding and source; stored
objects never change (content-addressed), and a recomputed heatmap only changes
with the model, whose version is part of the key.
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from sqlalchemy import select

from overread.errors import OverreadError, ServiceError
from overread.imaging import read_dataset, read_metadata
from overread.service.db import Instance, Result
from overread.service.rollout import not_shadow
from overread.triage import get_item
from overread.web.ui.views import overlay_artifacts, study_instances

if TYPE_CHECKING:
    from overread.web.context import RunningService

logger = logging.getLogger(__name__)

#: How many rendered PNGs are kept in memory.
CACHE_SIZE = 64


@dataclass(frozen=True)
class RenderedImage:
    """A PNG and where it came from (``stored-overlay``, ``computed`` or ``image-only``)."""

    png: bytes
    source: str
    finding: str | None


def to_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of a uint8 grey ``(H, W)`` or RGB ``(H, W, 3)`` array."""
    array = np.asarray(pixels)
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def _version_of(pipeline: Any) -> str:
    """The model version a pipeline runs (``""`` when it does not say)."""
    model = getattr(pipeline, "model", None)
    return str(getattr(model, "version", "") or "")


@lru_cache(maxsize=1024)
def _overlay_label(path: str) -> str:
    """The finding a stored overlay shows (from its Derivation or Series Description)."""
    try:
        meta = read_metadata(path)
    except Exception:
        return ""
    derivation = meta.derivation_description or ""
    if " heatmap from " in derivation:
        return derivation.split(" heatmap from ", 1)[0]
    description = meta.series_description or ""
    prefix, suffix = "overread heatmap ", " (research use)"
    if description.startswith(prefix):
        return description[len(prefix) :].removesuffix(suffix)
    return ""


class HeatmapImages:
    """Renders (and caches) the study page's image for a running gateway."""

    def __init__(self, service: RunningService) -> None:
        self.service = service
        self._cache: OrderedDict[tuple[str, ...], RenderedImage] = OrderedDict()
        self._lock = threading.Lock()

    # -- cache ------------------------------------------------------------------------
    def _cached(self, key: tuple[str, ...]) -> RenderedImage | None:
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
            return found

    def _keep(self, key: tuple[str, ...], image: RenderedImage) -> RenderedImage:
        with self._lock:
            self._cache[key] = image
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return image

    # -- sources ----------------------------------------------------------------------
    def stored_overlays(self, study_instance_uid: str) -> dict[str, str]:
        """Finding -> object key of each stored overlay of the study (newest result wins)."""
        with self.service.database.session() as session:
            artifacts = overlay_artifacts(session, study_instance_uid)
        found: dict[str, str] = {}
        for _result, artifact in artifacts:
            key = str(artifact.get("key", ""))
            try:
                path = self.service.store.path(key)
            except OverreadError:
                continue
            label = _overlay_label(str(path)) if path.is_file() else ""
            if label and label not in found:
                found[label] = key
        return found

    def render(self, study_instance_uid: str, finding: str | None) -> RenderedImage:
        """The best image for ``finding`` (or the study's most probable finding).

        Raises
        ------
        KeyError
            If the study is not on the worklist or has no stored image at all.
        """
        overlays = self.stored_overlays(study_instance_uid)
        label = (
            finding
            if finding
            else (next(iter(overlays), None) or self._top_finding(study_instance_uid))
        )
        if label and label in overlays:
            key: tuple[str, ...] = ("stored", overlays[label])
            cached = self._cached(key)
            if cached is not None:
                return cached
            dataset = read_dataset(self.service.store.path(overlays[label]))
            return self._keep(
                key, RenderedImage(to_png(dataset.pixel_array), "stored-overlay", label)
            )
        source, alias, version = self._reference(study_instance_uid)
        if source is None:
            raise KeyError(f"study {study_instance_uid} has no stored image")
        if label and alias:
            key = ("computed", source.object_key, label, alias, version)
            cached = self._cached(key)
            if cached is not None:
                return cached
            computed = self._compute(source, alias, version, label)
            if computed is not None:
                return self._keep(key, RenderedImage(computed, "computed", label))
        key = ("image", source.object_key)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return self._keep(key, RenderedImage(self._plain(source), "image-only", None))

    def plain(self, study_instance_uid: str) -> RenderedImage:
        """The study's reference image alone (windowed), without any heatmap.

        Raises
        ------
        KeyError
            If the study is not on the worklist or has no stored image.
        """
        source, _alias, _version = self._reference(study_instance_uid)
        if source is None:
            raise KeyError(f"study {study_instance_uid} has no stored image")
        key = ("image", source.object_key)
        cached = self._cached(key)
        if cached is not None:
            return cached
        return self._keep(key, RenderedImage(self._plain(source), "image-only", None))

    def _top_finding(self, study_instance_uid: str) -> str | None:
        with self.service.database.session() as session:
            item = get_item(session, study_instance_uid)
            ranked = sorted(
                (d for d in item.findings if d.get("label") != "No Finding"),
                key=lambda d: -float(d.get("probability") or 0.0),
            )
        return str(ranked[0]["label"]) if ranked else None

    def reference(self, study_instance_uid: str) -> tuple[Instance | None, str, str]:
        """The study's reference instance and the alias and version of its newest result."""
        return self._reference(study_instance_uid)

    def model_name(self, study_instance_uid: str) -> str:
        """The model name recorded with the study's newest result (``""`` without one)."""
        with self.service.database.session() as session:
            name = session.scalar(
                select(Result.model_name)
                .where(Result.study_instance_uid == study_instance_uid, not_shadow())
                .order_by(Result.id.desc())
                .limit(1)
            )
        return str(name or "")

    def pipeline(self, alias: str, name: str, version: str) -> Any:
        """The pipeline of the model version that made a result, never another one.

        The alias's pipeline when the alias still points at ``version``; otherwise
        ``name@version`` from the registry (the alias may have moved on to a newer
        version since the study was read).

        Raises
        ------
        ServiceError
            If that version cannot be loaded here any more.
        """
        models = self.service.models
        pipeline = models.get(alias)
        if not version or _version_of(pipeline) == version:
            return pipeline
        if name:
            try:
                pinned = models.get(f"{name}@{version}")
            except Exception as exc:
                raise ServiceError(
                    f"model {name} {version}, which read this study, is not available here ({exc})"
                ) from None
            if _version_of(pinned) == version:
                return pinned
        raise ServiceError(
            f"model {name or alias} {version}, which read this study, is not available here "
            f"(the alias {alias} now runs version {_version_of(pipeline)})"
        )

    def _reference(self, study_instance_uid: str) -> tuple[Instance | None, str, str]:
        """The study's reference instance and the alias and version of its newest result."""
        with self.service.database.session() as session:
            item = get_item(session, study_instance_uid)
            source: Instance | None = None
            if item.sop_instance_uid:
                source = session.scalar(
                    select(Instance).where(Instance.sop_instance_uid == item.sop_instance_uid)
                )
            if source is None:
                instances = study_instances(session, study_instance_uid)
                source = instances[0] if instances else None
            result = session.scalar(
                select(Result)
                .where(Result.study_instance_uid == study_instance_uid, not_shadow())
                .order_by(Result.id.desc())
                .limit(1)
            )
            alias = str((result.summary or {}).get("alias") or result.model_name) if result else ""
            version = result.model_version if result else ""
            if source is not None:
                session.expunge(source)
        return source, alias, version

    def _compute(self, source: Instance, alias: str, version: str, label: str) -> bytes | None:
        """Run the model with ``explain`` on the reference image; the overlay's PNG or None."""
        try:
            from overread.service.outputs import build_overlay

            path = self.service.store.path(source.object_key)
            pipeline = self.pipeline(alias, self.model_name(source.study_instance_uid), version)
            [prediction] = pipeline.predict([path], explain=True)
            if not getattr(prediction, "ok", False) or label not in (
                getattr(prediction, "heatmaps", None) or {}
            ):
                return None
            overlay: Any = build_overlay(prediction, read_dataset(path), label)
            return to_png(overlay.pixel_array)
        except Exception as exc:  # no model, no heatmap: fall back to the plain image
            logger.warning(
                "study image %s: no heatmap for %s (%s)", source.sop_instance_uid, label, exc
            )
            return None

    def _plain(self, source: Instance) -> bytes:
        from overread.service.outputs.overlay import windowed_grey

        dataset = read_dataset(self.service.store.path(source.object_key))
        return to_png(windowed_grey(dataset))


__all__ = ["CACHE_SIZE", "HeatmapImages", "RenderedImage", "to_png"]
