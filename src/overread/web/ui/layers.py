"""The viewer's AI layers of one finding: its heatmap, and its top region's contour and box.

The study page's viewer draws these over the stored image itself (not over a
burned-in capture), so each layer can be toggled and faded. A layer is computed as
the stored overlays are: the study's reference image is run through the result's
model with ``explain=True``, the heatmap is placed on the image (letterbox padding
cropped, as :func:`overread.service.outputs.build_overlay` does) and normalised to
its maximum. The top region and the box of its peak part follow the one rule of
:mod:`overread.explain.regions`.

What the browser gets:

* ``heatmap_png``: the map in cividis with an alpha channel equal to the map's
  value (weak evidence stays transparent), at most :data:`LAYER_SIDE` pixels on its
  long side (the map is smooth; the viewer stretches it over the image);
* :meth:`FindingLayers.as_json`: where the layer lies (the instance, its size), the
  top region's contour lines and the peak part's box, in the image's pixel
  coordinates (x to the right, y down, the image's top-left corner at 0, 0).
"""

from __future__ import annotations

import io
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import contourpy
import numpy as np
from PIL import Image

from overread.explain.overlay import colourise
from overread.explain.regions import TOP_FRACTION, peak_region, region_box
from overread.imaging import read_dataset

if TYPE_CHECKING:
    from overread.service.db import Instance
    from overread.web.ui.images import HeatmapImages

logger = logging.getLogger(__name__)

#: Longest side of the heatmap layer's PNG, in pixels.
LAYER_SIDE = 512
#: How many computed layers are kept in memory.
CACHE_SIZE = 32
#: Longest side of the grid a SEG mask is outlined on.
MASK_SIDE = 512
#: Segmentation Storage.
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: How many SEG instances of a study the viewer outlines.
SEG_LIMIT = 8


@dataclass(frozen=True)
class FindingLayers:
    """The AI layers of one finding over one stored image."""

    finding: str
    model: str
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    rows: int
    columns: int
    heatmap_png: bytes
    contours: list[list[tuple[float, float]]] = field(default_factory=list)
    box: tuple[float, float, float, float] | None = None

    def as_json(self, heatmap_url: str) -> dict[str, Any]:
        """The JSON the viewer reads (``heatmap_url`` is where the PNG is served)."""
        return {
            "finding": self.finding,
            "model": self.model,
            "study_instance_uid": self.study_instance_uid,
            "series_instance_uid": self.series_instance_uid,
            "sop_instance_uid": self.sop_instance_uid,
            "rows": self.rows,
            "columns": self.columns,
            "heatmap_url": heatmap_url,
            "colour_map": "cividis",
            "region": {
                "fraction": TOP_FRACTION,
                "contours": [[[x, y] for x, y in line] for line in self.contours],
                "box": list(self.box) if self.box is not None else None,
            },
        }


def heatmap_rgba(heat: np.ndarray) -> bytes:
    """PNG of a ``(H, W)`` map in [0, 1]: cividis colours, alpha equal to the value."""
    values = np.clip(np.nan_to_num(np.asarray(heat, dtype=np.float32)), 0.0, 1.0)
    rgba = np.empty((*values.shape, 4), dtype=np.uint8)
    rgba[..., :3] = colourise(values)
    rgba[..., 3] = np.round(values * 255.0).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()


def region_geometry(
    heat: np.ndarray, rows: int, columns: int, fraction: float = TOP_FRACTION
) -> tuple[list[list[tuple[float, float]]], tuple[float, float, float, float] | None]:
    """Contour lines of the top region and the box of its peak part, in image pixels.

    ``heat`` is a map normalised to its maximum, covering an image of ``rows`` by
    ``columns`` pixels (its own grid may be coarser). Coordinates are ``(x, y)``
    with pixel ``(0, 0)``'s top-left corner at the origin.
    """
    values = np.asarray(heat, dtype=np.float64)
    if values.size == 0 or float(values.max()) <= 0.0:
        return [], None
    sy, sx = rows / values.shape[0], columns / values.shape[1]
    # Pad with zeros so regions touching the border close into rings.
    padded = np.pad(values, 1, constant_values=0.0)
    lines = contourpy.contour_generator(z=padded).lines(fraction * float(values.max()))
    contours: list[list[tuple[float, float]]] = []
    for line in lines:
        points = np.asarray(line, dtype=np.float64)
        if points.ndim != 2 or len(points) < 2:
            continue
        xs = np.clip((points[:, 0] - 1 + 0.5) * sx, 0, columns)
        ys = np.clip((points[:, 1] - 1 + 0.5) * sy, 0, rows)
        contours.append(
            [(round(float(x), 2), round(float(y), 2)) for x, y in zip(xs, ys, strict=True)]
        )
    found = region_box(peak_region(values, fraction))
    box = None
    if found is not None:
        top, left, bottom, right = found
        box = (left * sx, top * sy, (right + 1) * sx, (bottom + 1) * sy)
    return contours, box


@dataclass(frozen=True)
class SegSegment:
    """One segment of a stored DICOM SEG, outlined on the image it was made from."""

    label: str
    number: int
    sop_instance_uid: str
    rows: int
    columns: int
    contours: list[list[tuple[float, float]]]
    description: str
    seg_sop_instance_uid: str

    def as_json(self) -> dict[str, Any]:
        """The JSON the viewer reads: the outline in the image's pixel coordinates."""
        return {
            "label": self.label,
            "number": self.number,
            "sop_instance_uid": self.sop_instance_uid,
            "rows": self.rows,
            "columns": self.columns,
            "contours": [[[x, y] for x, y in line] for line in self.contours],
            "description": self.description,
            "seg_sop_instance_uid": self.seg_sop_instance_uid,
        }


def mask_contours(
    mask: np.ndarray, rows: int, columns: int, side: int = MASK_SIDE
) -> list[list[tuple[float, float]]]:
    """The outline of a binary ``mask`` as lines in the image's pixel coordinates.

    A mask longer than ``side`` pixels is first reduced by keeping every pixel a
    block holds any of (so thin parts are not lost); the outline then follows the
    block edges, at most ``max(rows, columns) / side`` pixels off the mask's own.
    """
    values = np.asarray(mask) > 0
    if not values.any():
        return []
    step = max(1, int(np.ceil(max(values.shape) / side)))
    if step > 1:
        h, w = values.shape
        padded = np.zeros((-(-h // step) * step, -(-w // step) * step), dtype=bool)
        padded[:h, :w] = values
        values = np.asarray(
            padded.reshape(padded.shape[0] // step, step, -1, step).any(axis=(1, 3)), dtype=bool
        )
    sy, sx = step * rows / mask.shape[0], step * columns / mask.shape[1]
    grid = np.pad(values.astype(np.float64), 1, constant_values=0.0)
    contours: list[list[tuple[float, float]]] = []
    for line in contourpy.contour_generator(z=grid).lines(0.5):
        points = np.asarray(line, dtype=np.float64)
        if points.ndim != 2 or len(points) < 2:
            continue
        xs = np.clip((points[:, 0] - 1 + 0.5) * sx, 0, columns)
        ys = np.clip((points[:, 1] - 1 + 0.5) * sy, 0, rows)
        contours.append(
            [(round(float(x), 1), round(float(y), 1)) for x, y in zip(xs, ys, strict=True)]
        )
    return contours


def _source_of(frame: Any, dataset: Any) -> str:
    """The SOP Instance UID of the image a SEG frame was derived from."""
    for derivation in frame.get("DerivationImageSequence", []):
        for source in derivation.get("SourceImageSequence", []):
            return str(source.ReferencedSOPInstanceUID)
    for series in dataset.get("ReferencedSeriesSequence", []):
        for instance in series.get("ReferencedInstanceSequence", []):
            return str(instance.ReferencedSOPInstanceUID)
    return ""


def seg_segments(path: Any) -> list[SegSegment]:
    """Each segment of the SEG stored at ``path``, per source image, as outlines."""
    dataset = read_dataset(path)
    labels = {
        int(item.SegmentNumber): str(
            item.get("SegmentLabel", "") or f"segment {item.SegmentNumber}"
        )
        for item in dataset.get("SegmentSequence", [])
    }
    frames = np.asarray(dataset.pixel_array)
    if frames.ndim == 2:
        frames = frames[None]
    rows, columns = int(dataset.Rows), int(dataset.Columns)
    per_frame = list(dataset.get("PerFrameFunctionalGroupsSequence", []))
    masks: dict[tuple[int, str], np.ndarray] = {}
    for index, frame in enumerate(frames):
        groups = per_frame[index] if index < len(per_frame) else None
        number = 1
        source = ""
        if groups is not None:
            for ident in groups.get("SegmentIdentificationSequence", []):
                number = int(ident.ReferencedSegmentNumber)
            source = _source_of(groups, dataset)
        else:
            source = _source_of(dataset, dataset)
        key = (number, source)
        masks[key] = masks[key] | (frame > 0) if key in masks else frame > 0
    return [
        SegSegment(
            label=labels.get(number, f"segment {number}"),
            number=number,
            sop_instance_uid=source,
            rows=rows,
            columns=columns,
            contours=mask_contours(mask, rows, columns),
            description=str(dataset.get("SeriesDescription", "") or ""),
            seg_sop_instance_uid=str(dataset.SOPInstanceUID),
        )
        for (number, source), mask in sorted(masks.items())
        if mask.any()
    ]


class LayerRenderer:
    """Computes (and caches) the AI layers of a study's findings for one gateway."""

    def __init__(self, images: HeatmapImages) -> None:
        self.images = images
        self._cache: OrderedDict[tuple[str, ...], FindingLayers | None] = OrderedDict()
        self._segments: OrderedDict[str, list[SegSegment]] = OrderedDict()
        self._why: dict[str, str] = {}
        self._lock = threading.Lock()

    def layers(self, study_instance_uid: str, finding: str) -> FindingLayers | None:
        """The layers of ``finding`` on the study's reference image; None without a heatmap.

        Raises
        ------
        KeyError
            If the study is not on the worklist or has no stored image.
        """
        source, alias, version = self.images.reference(study_instance_uid)
        if source is None:
            raise KeyError(f"study {study_instance_uid} has no stored image")
        if not alias:
            return None
        key = (source.object_key, finding, alias, version)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        computed = self._compute(source, alias, version, finding)
        with self._lock:
            self._cache[key] = computed
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return computed

    def segments(self, study_instance_uid: str) -> list[SegSegment]:
        """The outlined segments of the newest stored SEG of the study's results."""
        from sqlalchemy import select

        from overread.service.db import Result
        from overread.service.rollout import not_shadow

        with self.images.service.database.session() as session:
            results = session.scalars(
                select(Result)
                .where(Result.study_instance_uid == study_instance_uid, not_shadow())
                .order_by(Result.id.desc())
            ).all()
            keys = [
                str(artifact.get("key", ""))
                for result in results
                for artifact in result.artifacts or []
                if str(artifact.get("sop_class_uid", "")) == SEG_STORAGE
            ]
        found: list[SegSegment] = []
        for key in keys[:SEG_LIMIT]:
            with self._lock:
                cached = self._segments.get(key)
            if cached is None:
                try:
                    cached = seg_segments(self.images.service.store.path(key))
                except Exception as exc:  # an unreadable SEG is left out, with a log line
                    logger.warning("viewer SEG %s: not readable (%s)", key, exc)
                    cached = []
                with self._lock:
                    self._segments[key] = cached
                    while len(self._segments) > CACHE_SIZE:
                        self._segments.popitem(last=False)
            found.extend(cached)
        return found

    def unavailable(self, study_instance_uid: str) -> str:
        """Why the study has no layers, when its model cannot run here (else ``""``)."""
        return self._why.get(study_instance_uid, "")

    def _compute(
        self, source: Instance, alias: str, version: str, finding: str
    ) -> FindingLayers | None:
        from overread.service.outputs.overlay import heatmap_on_image
        from overread.service.outputs.prediction import model_identity

        path = self.images.service.store.path(source.object_key)
        uid = source.study_instance_uid
        try:
            # The version that read the study, not whatever the alias runs today.
            name = self.images.model_name(uid)
            pipeline = self.images.pipeline(alias, name, version)
            [prediction] = pipeline.predict([path], explain=True)
        except Exception as exc:  # no model here: the viewer shows the image without layers
            logger.warning(
                "viewer layers %s: no model %s (%s)", source.sop_instance_uid, alias, exc
            )
            self._why[uid] = str(exc)
            return None
        self._why.pop(uid, None)
        heatmaps = getattr(prediction, "heatmaps", None) or {}
        if not getattr(prediction, "ok", False) or finding not in heatmaps:
            return None
        dataset = read_dataset(path)
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        scale = min(1.0, LAYER_SIDE / max(rows, columns))
        shape = (max(1, round(rows * scale)), max(1, round(columns * scale)))
        heat = heatmap_on_image(
            heatmaps[finding], (rows, columns), shape, "auto", prediction.letterbox
        )
        contours, box = region_geometry(heat, rows, columns)
        model = model_identity(prediction)
        return FindingLayers(
            finding=finding,
            model=f"{model.name} {model.version}",
            study_instance_uid=str(dataset.StudyInstanceUID),
            series_instance_uid=str(dataset.SeriesInstanceUID),
            sop_instance_uid=str(dataset.SOPInstanceUID),
            rows=rows,
            columns=columns,
            heatmap_png=heatmap_rgba(heat),
            contours=contours,
            box=box,
        )


__all__ = [
    "CACHE_SIZE",
    "LAYER_SIDE",
    "MASK_SIDE",
    "SEG_STORAGE",
    "FindingLayers",
    "LayerRenderer",
    "SegSegment",
    "heatmap_rgba",
    "mask_contours",
    "region_geometry",
    "seg_segments",
]
