"""Series -> volume: order slices by geometry, not by their numbers.

Instance Number is a label that scanners and PACS rewrite freely; the only
reliable slice order is the position of each slice along the normal of its
plane (``ImagePositionPatient`` projected on ``row x column`` direction
cosines, PS3.3 C.7.6.2.1.1). This module groups images by Series Instance UID,
sorts them that way, checks that they form one regular grid (same size,
spacing and orientation; no duplicate positions; even steps) and returns a
:class:`Volume` with pixels ``(slices, rows, cols)`` and a 4x4 affine mapping
voxel indices ``(col, row, slice, 1)`` to patient coordinates (LPS, mm).
Enhanced multi-frame objects are unpacked from their per-frame functional
groups the same way.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from overread.config import ImagingSettings, load_settings
from overread.errors import OverreadError, SeriesError
from overread.imaging.image import FloatArray, Image, ImageMetadata
from overread.imaging.inspection import iter_files
from overread.imaging.reader import read

logger = logging.getLogger(__name__)

ORIENTATION_TOLERANCE = 1e-3  # direction cosines
GAP_FACTOR = 1.5  # a step this many times the typical one means missing slices
SPACING_TOLERANCE = 0.01  # relative variation of steps still called "regular"


@dataclass
class Volume:
    """A 3-D image assembled from one series.

    Attributes
    ----------
    pixels
        float32 ``(slices, rows, cols)``, Modality LUT applied (HU for CT).
    affine
        4x4 float64: ``affine @ (col, row, slice, 1)`` is the voxel centre in
        patient coordinates (LPS, mm).
    spacing
        ``(slice step, row spacing, column spacing)`` in mm.
    metadata
        The first slice's metadata (frames set to the slice count).
    sop_instance_uids
        Source instance of each slice, in volume order.
    positions
        Each slice's position along the normal (mm), in volume order.
    warnings
        Irregularities found (gaps, uneven spacing) that did not stop assembly.
    """

    pixels: FloatArray
    affine: npt.NDArray[np.float64]
    spacing: tuple[float, float, float]
    metadata: ImageMetadata
    sop_instance_uids: list[str] = field(default_factory=list)
    positions: list[float] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def series_instance_uid(self) -> str | None:
        """The series this volume was built from."""
        return self.metadata.series_instance_uid

    def to_image(self) -> Image:
        """The volume as a multi-frame :class:`Image` (for transforms such as Resample)."""
        meta = dataclasses.replace(
            self.metadata,
            frames=int(self.pixels.shape[0]),
            slice_thickness=self.spacing[0],
            affine=tuple(tuple(float(v) for v in row) for row in self.affine),
        )
        return Image(
            pixels=self.pixels,
            metadata=meta,
            provenance=[f"series {self.series_instance_uid}: {self.pixels.shape[0]} slices"],
            warnings=list(self.warnings),
        )


@dataclass
class _Slice:
    pixels: FloatArray
    position: npt.NDArray[np.float64]
    orientation: npt.NDArray[np.float64]
    spacing: tuple[float, float]
    uid: str
    label: str


def _normal(orientation: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    normal = np.cross(orientation[:3], orientation[3:])
    norm = float(np.linalg.norm(normal))
    if norm < 1e-6:
        raise SeriesError("Image Orientation (Patient) row and column directions are parallel")
    result: npt.NDArray[np.float64] = normal / norm
    return result


def _slices_from_image(image: Image) -> list[_Slice]:
    """One slice per frame (enhanced multi-frame) or the single frame."""
    meta = image.metadata
    label = meta.source_path or meta.sop_instance_uid or "image"
    if image.is_color:
        raise SeriesError(f"{label}: colour images cannot form a volume")
    frames = image.pixels if image.pixels.ndim == 3 else image.pixels[None]
    ds = image.dataset
    per_frame = ds.get("PerFrameFunctionalGroupsSequence") if ds is not None else None
    if frames.shape[0] > 1 and per_frame and len(per_frame) == frames.shape[0]:
        return [
            _frame_slice(frames[i], fg, meta, f"{label} frame {i + 1}")
            for i, fg in enumerate(per_frame)
        ]
    if frames.shape[0] > 1:
        raise SeriesError(
            f"{label}: multi-frame image without per-frame positions cannot form a volume"
        )
    if meta.image_position is None or meta.image_orientation is None or not meta.pixel_spacing:
        raise SeriesError(f"{label}: Image Position/Orientation (Patient) or Pixel Spacing missing")
    return [
        _Slice(
            frames[0],
            np.asarray(meta.image_position, dtype=np.float64),
            np.asarray(meta.image_orientation, dtype=np.float64),
            meta.pixel_spacing,
            meta.sop_instance_uid or label,
            label,
        )
    ]


def _frame_slice(pixels: FloatArray, group: Any, meta: ImageMetadata, label: str) -> _Slice:
    def first(keyword: str) -> Any:
        seq = group.get(keyword)
        return seq[0] if seq else None

    plane = first("PlanePositionSequence")
    orient = first("PlaneOrientationSequence")
    measures = first("PixelMeasuresSequence")
    try:
        position = [float(v) for v in plane.ImagePositionPatient] if plane else meta.image_position
        orientation = (
            [float(v) for v in orient.ImageOrientationPatient] if orient else meta.image_orientation
        )
        spacing = [float(v) for v in measures.PixelSpacing] if measures else meta.pixel_spacing
    except (AttributeError, TypeError, ValueError) as exc:
        raise SeriesError(f"{label}: unusable plane position/orientation ({exc})") from None
    if position is None or orientation is None or not spacing:
        raise SeriesError(f"{label}: per-frame position, orientation or spacing missing")
    return _Slice(
        pixels,
        np.asarray(position, dtype=np.float64),
        np.asarray(orientation, dtype=np.float64),
        (spacing[0], spacing[1]),
        meta.sop_instance_uid or label,
        label,
    )


def assemble_volume(images: Sequence[Image], *, strict: bool = False) -> Volume:
    """Build one :class:`Volume` from the images of a single series.

    Parameters
    ----------
    images
        Single-frame images of one series in any order, or one enhanced
        multi-frame image.
    strict
        Refuse (``SeriesError``) gaps and uneven spacing instead of warning.

    Raises
    ------
    SeriesError
        Mixed series, mixed orientation, different sizes or pixel spacing,
        duplicate positions, or (strict) gaps and uneven spacing.
    """
    if not images:
        raise SeriesError("no images to assemble")
    series = {img.metadata.series_instance_uid for img in images}
    if len(series) > 1:
        raise SeriesError(f"images from {len(series)} series cannot form one volume")
    slices = [s for img in images for s in _slices_from_image(img)]
    reference = slices[0]
    shapes = {s.pixels.shape for s in slices}
    if len(shapes) > 1:
        raise SeriesError(f"slices differ in size: {sorted(shapes)}")
    for s in slices[1:]:
        if np.abs(s.orientation - reference.orientation).max() > ORIENTATION_TOLERANCE:
            raise SeriesError(
                f"mixed orientation: {s.label} has Image Orientation "
                f"{tuple(round(v, 4) for v in s.orientation)}, {reference.label} has "
                f"{tuple(round(v, 4) for v in reference.orientation)}"
            )
        if not np.allclose(s.spacing, reference.spacing, rtol=1e-3):
            raise SeriesError(f"slices differ in Pixel Spacing: {s.spacing} vs {reference.spacing}")
    normal = _normal(reference.orientation)
    distances = np.array([float(s.position @ normal) for s in slices])
    order = np.argsort(distances, kind="stable")
    slices = [slices[i] for i in order]
    distances = distances[order]
    warnings: list[str] = []
    steps = np.diff(distances)
    if len(slices) > 1:
        duplicates = int(np.sum(np.abs(steps) < 1e-4))
        if duplicates:
            raise SeriesError(
                f"{duplicates} slice(s) share a position with another: the series holds "
                "several acquisitions (echoes, phases or time points) at the same location"
            )
        step = float(np.median(steps))
        gaps = np.nonzero(steps > GAP_FACTOR * step)[0]
        for g in gaps:
            missing = round(float(steps[g]) / step) - 1
            warnings.append(
                f"gap of {steps[g]:.3g} mm between slices at {distances[g]:.3g} and "
                f"{distances[g + 1]:.3g} mm (typical step {step:.3g} mm): about {missing} "
                "missing slice(s)"
            )
        regular = np.delete(steps, gaps)
        if regular.size and (regular.max() - regular.min()) > SPACING_TOLERANCE * step:
            warnings.append(
                f"uneven slice spacing: steps from {regular.min():.4g} to {regular.max():.4g} mm"
            )
        in_plane = np.abs(
            (slices[-1].position - slices[0].position) - normal * (distances[-1] - distances[0])
        ).max()
        if in_plane > 0.01 * max(step, 1.0) * len(slices):
            warnings.append(
                "slice positions drift in-plane (gantry tilt or sheared stack): the affine "
                "uses the mean step"
            )
    else:
        step = reference_step(images[0])
        warnings.append(f"single slice: slice step taken as {step:g} mm")
    if strict and warnings and len(slices) > 1:
        raise SeriesError(warnings[0])
    row_dir, col_dir = reference.orientation[:3], reference.orientation[3:]
    row_spacing, col_spacing = reference.spacing
    if len(slices) > 1:
        step_vec = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    else:
        step_vec = normal * step
    affine = np.eye(4, dtype=np.float64)
    affine[:3, 0] = row_dir * col_spacing  # increasing column index moves along the row
    affine[:3, 1] = col_dir * row_spacing
    affine[:3, 2] = step_vec
    affine[:3, 3] = slices[0].position
    pixels = np.stack([s.pixels for s in slices]).astype(np.float32, copy=False)
    slice_step = float(np.linalg.norm(step_vec))
    meta = dataclasses.replace(
        images[0].metadata,
        frames=len(slices),
        image_position=(
            float(slices[0].position[0]),
            float(slices[0].position[1]),
            float(slices[0].position[2]),
        ),
        affine=tuple(tuple(float(v) for v in row) for row in affine),
    )
    for w in warnings:
        logger.warning("series %s: %s", meta.series_instance_uid, w)
    return Volume(
        pixels=pixels,
        affine=affine,
        spacing=(slice_step, float(row_spacing), float(col_spacing)),
        metadata=meta,
        sop_instance_uids=[s.uid for s in slices],
        positions=[float(d) for d in distances],
        warnings=warnings,
    )


def reference_step(image: Image) -> float:
    """Slice step for a lone slice: Spacing Between Slices, else Slice Thickness, else 1 mm."""
    ds = image.dataset
    for keyword in ("SpacingBetweenSlices", "SliceThickness"):
        try:
            value = float(ds.get(keyword)) if ds is not None and ds.get(keyword) else 0.0
        except (TypeError, ValueError):
            value = 0.0
        if value > 0:
            return value
    return 1.0


@dataclass
class SeriesLoad:
    """What :func:`load_series` produced: volumes, and files or series it could not use."""

    volumes: list[Volume]
    errors: list[str]


def load_series(
    paths: Iterable[str | os.PathLike[str]],
    *,
    settings: ImagingSettings | None = None,
    strict: bool = False,
) -> SeriesLoad:
    """Read files (directories are walked), group by Series Instance UID, assemble each.

    A file that cannot be read, or a series that cannot be assembled, is
    reported in :attr:`SeriesLoad.errors` (one line each) and the rest carry on.
    """
    config = settings if settings is not None else load_settings().imaging
    groups: dict[str, list[Image]] = defaultdict(list)
    errors: list[str] = []
    for path in iter_files(paths):
        try:
            image = read(path, settings=config)
        except OverreadError as exc:
            errors.append(str(exc))
            continue
        uid = image.metadata.series_instance_uid or f"(no Series Instance UID) {path}"
        groups[uid].append(image)
    volumes: list[Volume] = []
    for uid, images in sorted(groups.items()):
        try:
            volumes.append(assemble_volume(images, strict=strict))
        except SeriesError as exc:
            errors.append(f"series {uid}: {exc}")
    return SeriesLoad(volumes, errors)


__all__ = ["SeriesLoad", "Volume", "assemble_volume", "load_series"]
