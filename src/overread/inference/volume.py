"""The volumetric pipeline: a CT series in, masks, nodules and boxes out.

A package with a ``volume`` section (segmentation or detection task) reads a whole
series: the slices are assembled into a volume by geometry
(:func:`overread.imaging.series.assemble_volume`), resampled to the package's
spacing, and run by sliding windows with overlap and Gaussian blending (MONAI's
``sliding_window_inference``: the windows run on the pipeline's device - ``cpu``,
``cuda``, ``cuda:N`` or ``auto``, as for the chest X-ray models - and are blended
into an output on the CPU). Memory is
bounded by the *resampled* volume: the network's output exists only at the
package's spacing, and probabilities come back to the source grid one slice at a
time (bilinear in-plane, linear across slices), straight into a ``uint8`` label
map. The ``lung-nodule`` postprocess works on the resampled grid; each nodule is
then measured on the source grid inside its own box (volume, longest diameter,
mean HU, solid fraction), so measurements do not lose the source resolution.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
import pydicom
import torch
import torch.nn.functional as F
from pydicom.dataset import Dataset
from scipy import ndimage

from overread.errors import InferenceError, ModelPackageError, OverreadError
from overread.imaging import ImageMetadata
from overread.imaging.series import Volume, assemble_volume
from overread.inference.lung_mask import (
    airway_warning,
    fill_lung_holes,
    head_last,
    large_airways,
    source_lung_plane,
)
from overread.inference.nodules import categorise, density_of, solid_diameter_mm
from overread.inference.result import ModelRef, Prediction
from overread.inference.runtimes import torch_device
from overread.models.manifest import Task, VolumeSpec
from overread.models.package import ModelPackage
from overread.results import Decision, FindingResult, Region

logger = logging.getLogger(__name__)

#: Voxel value of the lung in the label map; nodules are 2, 3, ... in index order.
LUNG_VALUE = 1
#: Most nodules one series reports (a ``uint8`` label map); the largest are kept.
MAX_NODULES = 200


def resample(
    pixels: npt.NDArray[np.float32],
    spacing: Sequence[float],
    target: Sequence[float],
    *,
    antialias: bool = True,
) -> npt.NDArray[np.float32]:
    """``pixels`` ``(slices, rows, cols)`` at ``spacing`` resampled to ``target`` mm.

    In-plane one slice at a time (bilinear, antialiased when shrinking unless
    ``antialias`` is false), then across slices (linear): no full-size float copy
    beyond the input is made. Without antialiasing this is trilinear interpolation
    (half-pixel centres), done axis by axis.
    """
    d, h, w = pixels.shape
    shape = tuple(
        max(1, round(n * s / t)) for n, s, t in zip((d, h, w), spacing, target, strict=True)
    )
    nd, nh, nw = int(shape[0]), int(shape[1]), int(shape[2])
    planes = np.empty((d, nh, nw), dtype=np.float32)
    for z in range(d):
        plane = torch.from_numpy(np.ascontiguousarray(pixels[z], dtype=np.float32))[None, None]
        if (nh, nw) != (h, w):
            plane = F.interpolate(
                plane,
                size=(nh, nw),
                mode="bilinear",
                align_corners=False,
                antialias=antialias and nh < h,
            )
        planes[z] = plane[0, 0].numpy()
    if nd == d:
        return planes
    flat = torch.from_numpy(planes.reshape(d, nh * nw).T.copy())[None]  # (1, hw, d)
    across = F.interpolate(flat, size=nd, mode="linear", align_corners=False)[0]
    return np.ascontiguousarray(across.T.numpy().reshape(nd, nh, nw))


def upsample_plane(
    low: npt.NDArray[np.float32], z: int, shape: Sequence[int]
) -> npt.NDArray[np.float32]:
    """Slice ``z`` of a ``(C, d, h, w)`` grid brought to the source grid ``(D, H, W)``."""
    channels, d, _, _ = low.shape
    depth, rows, cols = int(shape[0]), int(shape[1]), int(shape[2])
    position = min(max((z + 0.5) * d / depth - 0.5, 0.0), d - 1.0)
    z0 = int(np.floor(position))
    z1 = min(z0 + 1, d - 1)
    weight = np.float32(position - z0)
    plane = (1.0 - weight) * low[:, z0] + weight * low[:, z1]
    tensor = torch.from_numpy(np.ascontiguousarray(plane, dtype=np.float32))[None]
    up = F.interpolate(tensor, size=(rows, cols), mode="bilinear", align_corners=False)
    return np.asarray(up[0].numpy().reshape(channels, rows, cols))


def sliding_window(
    network: torch.nn.Module,
    volume: npt.NDArray[np.float32],
    spec: VolumeSpec,
    device: torch.device | None = None,
) -> npt.NDArray[np.float32]:
    """Network logits ``(C, d, h, w)`` for a resampled volume, by Gaussian-blended windows.

    Each window runs on ``device`` (where ``network`` is; default the CPU); the blended
    output is kept on the CPU, so a GPU holds only a batch of windows at a time."""
    from monai.inferers import sliding_window_inference

    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    if spec.hu_window is not None:
        low, high = spec.hu_window
        x = (x.clamp(low, high) - low) / (high - low) * 2.0 - 1.0
    roi = tuple(min(p, n) for p, n in zip(spec.patch_size, volume.shape, strict=True))
    with torch.inference_mode():
        out = sliding_window_inference(
            x,
            roi_size=roi,
            sw_batch_size=spec.sw_batch_size,
            predictor=network,
            overlap=spec.overlap,
            mode="gaussian",
            sigma_scale=spec.sigma_scale,
            padding_mode="replicate",
            sw_device=device or torch.device("cpu"),
            device="cpu",
        )
    assert isinstance(out, torch.Tensor)
    return np.asarray(out[0].numpy(), dtype=np.float32)


def nodule_score(probabilities: npt.NDArray[np.float32], rule: str) -> float:
    """A nodule's score from its component's probabilities: their ``mean`` or ``max``."""
    if probabilities.size == 0:
        return 0.0
    return float(probabilities.max() if rule == "max" else probabilities.mean())


def lung_output(
    probability: npt.NDArray[np.float32],
    threshold: float,
    lung: npt.NDArray[np.bool_],
    rule: str,
) -> tuple[npt.NDArray[np.float32], float]:
    """The lung channel brought back to the source grid, and the level that is lung there.

    ``filled-mask``: the postprocessed (filled) lung as 0/1, lung from 0.5. ``probability``:
    the network's probability inside the kept components (``lung`` where the probability
    reaches ``threshold``, i.e. without the filled holes) grown by one voxel, lung from
    ``threshold``: the boundary comes from the probability, not from a binary mask.
    """
    if rule == "probability":
        kept = ndimage.binary_dilation(lung & (probability >= threshold))
        return np.where(kept, probability, 0.0).astype(np.float32), float(threshold)
    return lung.astype(np.float32), 0.5


def _border_labels(labels: npt.NDArray[np.int32]) -> set[int]:
    """Component labels touching the in-plane sides of the volume (outside air)."""
    sides = np.concatenate(
        [
            labels[:, 0, :].ravel(),
            labels[:, -1, :].ravel(),
            labels[:, :, 0].ravel(),
            labels[:, :, -1].ravel(),
        ]
    )
    return {int(v) for v in np.unique(sides) if v}


def lung_and_nodules(
    probabilities: npt.NDArray[np.float32],
    thresholds: Sequence[float],
    lung_index: int,
    nodule_index: int,
    spacing: Sequence[float],
    spec: VolumeSpec,
    *,
    airway: npt.NDArray[np.bool_] | None = None,
    feet_first: bool = True,
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int32], int]:
    """The ``lung-nodule`` postprocess on the resampled grid.

    Lung: components of the lung mask that do not touch the in-plane sides and hold
    at least 1% of the largest such component, with their holes filled slice by
    slice (nodules and vessels lie inside). Nodules: components of the nodule mask
    inside that filled lung whose box is at most ``max_nodule_mm`` and whose
    longest box side is at least ``min_nodule_mm``.

    With ``spec.clean_components``: 26-connected lung components holding at least
    ``lung_keep_fraction`` of the largest; face-connected nodules inside the filled
    lung grown by ``nodule_lung_margin_mm`` (an ellipsoid of that radius in voxels of
    ``spacing``) and of at least ``nodule_min_volume_mm3``.

    With ``spec.lung_refine`` ``classical``: ``airway`` (the large airways,
    :func:`overread.inference.lung_mask.large_airways`) is not lung, and the holes are
    filled by :func:`overread.inference.lung_mask.fill_lung_holes` (in 3-D, and slice
    by slice where narrow) instead of slice by slice; ``feet_first`` False (the slices
    run from the head to the feet) flips the slices for it and its result back.

    Returns ``(lung, nodule labels, count)``.
    """
    clean = spec.clean_components
    classical = spec.lung_refine == "classical"
    # 26-connected lung components (3-D) when cleaning, face-connected otherwise.
    structure = np.ones((3, 3, 3), dtype=bool) if clean else None
    lung_raw = probabilities[lung_index] >= thresholds[lung_index]
    if classical and airway is not None:
        lung_raw &= ~airway
    labels, count = ndimage.label(lung_raw, structure=structure)
    border = _border_labels(labels)
    sizes = ndimage.sum_labels(lung_raw, labels, index=np.arange(1, count + 1))
    keep = [i + 1 for i, s in enumerate(sizes) if i + 1 not in border]
    if keep:
        fraction = spec.lung_keep_fraction if clean else 0.01
        largest = max(sizes[k - 1] for k in keep)
        keep = [k for k in keep if sizes[k - 1] >= fraction * largest]
    lung = np.isin(labels, keep)
    del labels
    if classical:
        # The dome rule rolls its ball from the feet: slice 0 must be the feet end.
        order = slice(None) if feet_first else slice(None, None, -1)
        filled = np.ascontiguousarray(
            fill_lung_holes(
                lung[order],
                spacing,
                max_hole_mm2=spec.lung_hole_max_mm2,
                open_mm=spec.lung_hole_open_mm,
                airway=None if airway is None else airway[order],
            )[order]
        )
    elif lung.any():
        filled = np.stack([ndimage.binary_fill_holes(plane) for plane in lung])
    else:
        filled = lung
    within = filled
    if clean and spec.nodule_lung_margin_mm > 0 and filled.any():
        radius = [max(1, round(spec.nodule_lung_margin_mm / step)) for step in spacing]
        zz, yy, xx = np.ogrid[
            -radius[0] : radius[0] + 1, -radius[1] : radius[1] + 1, -radius[2] : radius[2] + 1
        ]
        ball = (zz / radius[0]) ** 2 + (yy / radius[1]) ** 2 + (xx / radius[2]) ** 2 <= 1.0
        within = ndimage.binary_dilation(filled, structure=ball)
    candidates = (probabilities[nodule_index] >= thresholds[nodule_index]) & within
    # Nodules stay face-connected: 26-connectivity joins them to touching vessels.
    nodule_labels, _ = ndimage.label(candidates)
    voxel_mm3 = float(np.prod(spacing))
    min_voxels = spec.nodule_min_volume_mm3 / voxel_mm3 if clean else 0.0
    out = np.zeros_like(nodule_labels)
    passing: list[tuple[int, int, tuple[slice, ...]]] = []
    for index, box in enumerate(ndimage.find_objects(nodule_labels), start=1):
        if box is None:
            continue
        extent = [(s.stop - s.start) * step for s, step in zip(box, spacing, strict=True)]
        if max(extent) > spec.max_nodule_mm or max(extent) < spec.min_nodule_mm:
            continue
        voxels = int((nodule_labels[box] == index).sum())
        if voxels < min_voxels:
            continue
        passing.append((voxels, index, box))
    # The label map holds at most MAX_NODULES: the largest are kept (the caller warns).
    passing = sorted(passing, key=lambda item: -item[0])[:MAX_NODULES]
    for kept, (_, index, box) in enumerate(sorted(passing, key=lambda item: item[1]), start=1):
        out[box][nodule_labels[box] == index] = kept
    return filled, out, len(passing)


@dataclass
class VolumeOutput:
    """What one series gave: the prediction and the label map on the source grid."""

    prediction: Prediction
    volume: Volume
    label_map: npt.NDArray[np.uint8] | None
    labels: dict[int, str]
    source_paths: list[str] = field(default_factory=list)
    """The series' files in volume order (the SEG's and SR's source images)."""

    def source_datasets(self) -> list[Dataset]:
        """The source slices' datasets, in volume order."""
        return [pydicom.dcmread(path) for path in self.source_paths]


_T = TypeVar("_T")


def _or(value: _T | None, default: _T) -> _T:
    """``value``, or ``default`` where the manifest leaves it unset."""
    return default if value is None else value


def _longest_diameter(points_mm: npt.NDArray[np.float64]) -> float:
    """Largest distance between two of the points (subsampled to 1500 points)."""
    if len(points_mm) < 2:
        return 0.0
    if len(points_mm) > 1500:
        step = int(np.ceil(len(points_mm) / 1500))
        points_mm = points_mm[::step]
    diff = points_mm[:, None, :] - points_mm[None, :, :]
    return float(np.sqrt((diff**2).sum(-1)).max())


def failed_output(path: str, error: str, model: ModelRef, task: str) -> VolumeOutput:
    """The output of an input that could not be read or run: a failed prediction
    (no regions) on an empty volume."""
    prediction = Prediction(path=path, ok=False, model=model, error=error, task=task)
    prediction.regions = []
    empty = Volume(
        pixels=np.zeros((0, 0, 0), np.float32),
        affine=np.eye(4),
        spacing=(1.0, 1.0, 1.0),
        metadata=ImageMetadata(),
    )
    return VolumeOutput(prediction, empty, None, {})


class VolumePipeline:
    """Series -> volume -> sliding windows -> masks, regions (see the module)."""

    volumetric = True

    def __init__(
        self, package: ModelPackage, *, threads: int | None = None, device: str = "cpu"
    ) -> None:
        manifest = package.manifest
        if manifest.volume is None:
            raise ModelPackageError(f"{package.path}: package has no 'volume' section")
        if manifest.is_ensemble:
            raise ModelPackageError(f"{package.path}: volumetric ensembles are not supported")
        if manifest.volume.planar:
            raise ModelPackageError(
                f"{package.path}: a planar package (overread.inference.planar reads it)"
            )
        self.package = package
        self.spec: VolumeSpec = manifest.volume
        self.task = manifest.task
        self.labels = package.labels
        # An unknown or unavailable device is an InferenceError naming it (one line).
        self.device = torch_device(device)
        self.network = package.build_network().to(self.device)
        self.threads = threads
        self._lock = threading.Lock()
        self.model = ModelRef(
            name=package.name,
            version=package.version,
            sha256=package.sha256,
            runtime="torch",
            precision="fp32",
            trained=manifest.trained,
            calibrated=manifest.calibrated,
        )

    def warmup(self) -> None:
        """Nothing to warm: the network is built on load."""

    def run_volume(
        self, volume: Volume, *, path: str | None = None, operating_point: str | None = None
    ) -> VolumeOutput:
        """Analyse one assembled volume (pixels in stored units, HU for CT), at the
        package's default operating point or at ``operating_point``."""
        manifest = self.package.manifest
        point = operating_point or manifest.default_operating_point
        prediction = Prediction(path=path, ok=False, model=self.model, task=manifest.task.value)
        prediction.metadata = volume.metadata
        prediction.warnings.extend(volume.warnings)
        started = time.perf_counter()
        spec = self.spec
        classical = spec.lung_refine == "classical" and spec.postprocess in (
            "lung-nodule",
            "blob-cad",
        )
        feet_first = head_last(volume.affine)
        if classical and feet_first is None:
            # The airway and dome rules need the body's long axis along the slices.
            prediction.warnings.append(
                "the series is not axial (its slices do not run along the body's long "
                "axis): the classical lung mask's airway and dome rules were not applied"
            )
            classical = False
            spec = spec.model_copy(update={"lung_refine": "none"})
        order = slice(None) if feet_first is not False else slice(None, None, -1)
        low = resample(
            volume.pixels,
            volume.spacing,
            spec.spacing_mm,
            antialias=spec.resample == "antialias",
        )
        resampled = time.perf_counter()
        with self._lock:
            logits = sliding_window(self.network, low, spec, self.device)
        inferred = time.perf_counter()
        # The airway rule finds the trachea entering at the head (last) slice: a
        # series running from the head to the feet is flipped for it and back.
        airway = (
            np.ascontiguousarray(
                large_airways(
                    low[order],
                    spec.spacing_mm,
                    airway_hu=spec.airway_hu,
                    min_radius_mm=spec.airway_min_radius_mm,
                )[order]
            )
            if classical
            else None
        )
        del low
        probabilities = np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float32)
        del logits
        # float64: the manifest's numbers exactly, as the float64 candidate scores and the
        # FROC the points were read off compare them.
        thresholds = [float(t) for t in self.package.thresholds(operating_point, dtype=np.float64)]
        shape = volume.pixels.shape
        label_values: dict[int, str] = {}
        best = 0.0  # the best score below the operating point (blob-cad)
        lost = 0.0  # the best score at or above it of a candidate that could not be measured
        if spec.postprocess in ("lung-nodule", "blob-cad"):
            lung_i = self.labels.index(spec.lung_label)
            nodule_i = self.labels.index(spec.nodule_label)
            lung_low, nodules_low, count = lung_and_nodules(
                probabilities,
                thresholds,
                lung_i,
                nodule_i,
                spec.spacing_mm,
                spec,
                airway=airway,
                feet_first=feet_first is not False,
            )
            _warn_airway(airway, lung_low, prediction.warnings)
            lung_channel, lung_threshold = lung_output(
                probabilities[lung_i], thresholds[lung_i], lung_low, spec.lung_output
            )
        if spec.postprocess == "lung-nodule":
            if count == MAX_NODULES:
                prediction.warnings.append(
                    f"{MAX_NODULES} or more nodule candidates: only the {MAX_NODULES} "
                    "largest are reported (is the series a chest CT in HU?)"
                )
            label_map, regions = self._to_source(
                volume,
                probabilities[nodule_i],
                thresholds[nodule_i],
                (lung_channel, lung_threshold),
                nodules_low,
                count,
                airway,
                refine=spec.lung_refine == "classical",
            )
            label_values = {LUNG_VALUE: spec.lung_label}
            for region in regions:
                if region.segment_number is not None:
                    label_values[region.segment_number] = f"{spec.nodule_label} {region.index}"
        elif spec.postprocess == "centre-heatmap":
            label_map = None
            regions = self._detections(volume, probabilities, thresholds)
        elif spec.postprocess == "blob-cad":
            del probabilities
            label_map, regions, best, lost = self._cad(
                volume,
                lung_channel,
                lung_threshold,
                thresholds[nodule_i],
                prediction.warnings,
                airway,
                refine=spec.lung_refine == "classical",
            )
            label_values = {LUNG_VALUE: spec.lung_label}
            for region in regions:
                if region.segment_number is not None:
                    label_values[region.segment_number] = f"{spec.nodule_label} {region.index}"
        else:
            label_map = np.zeros(shape, dtype=np.uint8)
            for z in range(shape[0]):
                plane = upsample_plane(probabilities, z, shape)
                for i, t in enumerate(thresholds):
                    label_map[z][plane[i] >= t] = i + 1
            label_values = {i + 1: label for i, label in enumerate(self.labels)}
            regions = []
        prediction.regions = regions
        prediction.findings = self._findings(regions, thresholds, spec, point, best, lost)
        prediction.timings.update(
            {
                "resample": resampled - started,
                "inference": inferred - resampled,
                "postprocess": time.perf_counter() - inferred,
            }
        )
        prediction.ok = True
        keep_map = self.task is Task.SEGMENTATION and label_map is not None
        return VolumeOutput(prediction, volume, label_map if keep_map else None, label_values)

    def _detections(
        self,
        volume: Volume,
        probabilities: npt.NDArray[np.float32],
        thresholds: Sequence[float],
    ) -> list[Region]:
        """``centre-heatmap``: peaks and sizes on the network's grid, measured on the source grid."""
        from overread.models.centre_heatmap import decode_peaks

        spec = self.spec
        assert spec.centre_label is not None and spec.size_labels is not None
        centre_i = self.labels.index(spec.centre_label)
        size_i = [self.labels.index(name) for name in spec.size_labels]
        peaks = decode_peaks(
            probabilities[centre_i],
            probabilities[size_i],
            spec.spacing_mm,
            floor=thresholds[centre_i],
            max_detections=spec.max_detections,
            max_size_mm=spec.max_nodule_mm,
            min_size_mm=spec.min_nodule_mm,
        )
        low = np.asarray(probabilities.shape[1:], dtype=np.float64)
        shape = np.asarray(volume.pixels.shape, dtype=np.float64)
        regions: list[Region] = []
        for index, peak in enumerate(peaks, start=1):
            centre = (np.asarray(peak.centre) + 0.5) * shape / low - 0.5
            half = np.asarray(peak.size_mm) / 2 / np.asarray(volume.spacing, dtype=np.float64)
            regions.append(measure_detection(volume, centre, half, peak.score, index, spec))
        return regions

    def _findings(
        self,
        regions: Sequence[Region],
        thresholds: Sequence[float],
        spec: VolumeSpec,
        point: str,
        best: float = 0.0,
        lost: float = 0.0,
    ) -> list[FindingResult]:
        """One study-level finding (``nodule``): positive when a nodule was found; its
        probability is the best score, that of a candidate below the operating point
        (``best``, not reported as a nodule) included. A candidate at or above the point
        that could not be measured (``lost``, its score; 0 when none) and no nodule
        reported: INDETERMINATE, never NEGATIVE (a reader must look)."""
        if spec.postprocess == "centre-heatmap" and spec.centre_label is not None:
            source = spec.centre_label  # its threshold is the peak floor, its codes the finding's
        elif spec.postprocess in ("lung-nodule", "blob-cad"):
            source = spec.nodule_label
        else:
            return []
        label = spec.nodule_label
        threshold = thresholds[self.labels.index(source)]
        score = max((r.score for r in regions), default=best)
        codes = next(
            (
                tuple((c.scheme, c.value, c.meaning) for c in spec_label.codes)
                for spec_label in self.package.manifest.labels
                if spec_label.name == source
            ),
            (),
        )
        positive = bool(regions)
        decision = Decision.POSITIVE if positive else Decision.NEGATIVE
        if not regions and lost > 0:
            score, positive, decision = lost, True, Decision.INDETERMINATE
        return [
            FindingResult(
                label=label,
                probability=score,
                positive=positive,
                threshold=threshold,
                decision=decision,
                operating_point=point,
                codes=codes,
            )
        ]

    def _cad(
        self,
        volume: Volume,
        lung_low: npt.NDArray[np.float32],
        lung_threshold: float,
        threshold: float,
        warnings: list[str],
        airway: npt.NDArray[np.bool_] | None = None,
        *,
        refine: bool,
    ) -> tuple[npt.NDArray[np.uint8], list[Region], float, float]:
        """``blob-cad``: the lung brought back to the source grid, then candidates, scores
        and FWHM masks there (:mod:`overread.models.blob_cad`); with them the best score
        below ``threshold`` (0 when none), which the study's finding carries, and the best
        score at or above it of a candidate that could not be measured (its mask empty,
        or its size outside what is measured; 0 when none), which a warning names.

        The ``max_detections`` best candidates scoring at least ``threshold`` are the
        nodules, strongest first; a nodule's voxels are not taken by a weaker one. The
        centre reported is the candidate's (the blob filter's peak), the rest is
        measured on the nodule's mask. A warning goes to ``warnings`` when more blob
        peaks were found than the candidates scored. ``refine``: the lung is refined
        on the source grid (:meth:`_lung_plane`).
        """
        from dataclasses import replace

        from overread.models import blob_cad

        spec = self.spec
        shape = volume.pixels.shape
        label_map = np.zeros(shape, dtype=np.uint8)
        lung_channels = _lung_channels(lung_low, airway)
        for z in range(shape[0]):
            plane = upsample_plane(lung_channels, z, shape)
            airway_plane = plane[1] if len(plane) > 1 else None
            label_map[z][
                self._lung_plane(volume, plane[0], airway_plane, lung_threshold, z, refine=refine)
            ] = LUNG_VALUE
        del lung_channels
        hu = np.asarray(volume.pixels, dtype=np.float32)
        spacing = tuple(float(s) for s in volume.spacing)
        lung = label_map == LUNG_VALUE
        max_candidates = _or(spec.cad_max_candidates, blob_cad.MAX_CANDIDATES)
        found = blob_cad.search_candidates(
            hu,
            spacing,
            lung,
            scales_mm=spec.cad_scales_mm,
            floor=spec.cad_floor,
            min_blobness=_or(spec.cad_min_blobness, blob_cad.MIN_BLOBNESS),
            max_candidates=max_candidates,
            closing_mm=_or(spec.cad_candidate_closing_mm, 0.0),
        )
        if found.truncated:
            warnings.append(blob_cad.truncation_warning(found, max_candidates))
        if spec.cad_trees:
            features = np.array(
                [blob_cad.candidate_features_v3(hu, spacing, c) for c in found.candidates]
            ).reshape(len(found.candidates), len(blob_cad.FEATURES_V3))
            try:
                values = [float(v) for v in blob_cad.tree_scores(spec.cad_trees, features)]
            except ValueError as err:
                raise ModelPackageError(f"{self.package.path}: {err}") from None
        else:
            values = [blob_cad.score(c, spec.cad_weights) for c in found.candidates]
        if not all(np.isfinite(values)):
            # NaN < threshold is False: such a candidate would be reported as a nodule.
            raise ModelPackageError(
                f"{self.package.path}: the CAD gave a score that is not a number "
                "(its trees or weights are not finite)"
            )
        scored = sorted(zip(values, found.candidates, strict=True), key=lambda item: -item[0])
        below = max((v for v in values if v < threshold), default=0.0)
        regions: list[Region] = []
        unmeasured: list[float] = []
        for value_score, candidate in scored:
            if value_score < threshold or len(regions) >= spec.max_detections:
                break
            box, mask = blob_cad.fwhm_mask(
                hu,
                spacing,
                candidate,
                lung=lung,
                max_radius_mm=spec.max_nodule_mm / 2,
                rim_hu=_or(spec.cad_rim_hu, blob_cad.RIM_HU),
                rim_ratio=_or(spec.cad_rim_ratio, blob_cad.RIM_RATIO),
                far_background=spec.cad_revision == 3,
            )
            if not mask.any():
                unmeasured.append(value_score)
                continue
            # Not a voxel a stronger nodule took (all taken: that nodule, reported).
            mask &= label_map[box] <= LUNG_VALUE
            if not mask.any():
                continue
            index = len(regions) + 1
            value = LUNG_VALUE + index
            previous = label_map[box][mask]
            label_map[box][mask] = value
            found = ndimage.find_objects(mask.astype(np.uint8))[0]
            assert found is not None
            tight = tuple(
                slice(outer.start + inner.start, outer.start + inner.stop)
                for outer, inner in zip(box, found, strict=True)
            )
            region = self._measure(volume, label_map, value, tight, index, score=value_score)
            if region is None:
                label_map[box][mask] = previous
                unmeasured.append(value_score)
                continue
            z, y, x = candidate.centre
            point = volume.affine @ np.array([x, y, z, 1.0])
            regions.append(
                replace(region, centre_mm=(float(point[0]), float(point[1]), float(point[2])))
            )
        if unmeasured:
            warnings.append(unmeasured_warning(len(unmeasured), max(unmeasured)))
        return label_map, regions, below, max(unmeasured, default=0.0)

    def _to_source(
        self,
        volume: Volume,
        nodule_probability: npt.NDArray[np.float32],
        threshold: float,
        lung: tuple[npt.NDArray[np.float32], float],
        nodules_low: npt.NDArray[np.int32],
        count: int,
        airway: npt.NDArray[np.bool_] | None = None,
        *,
        refine: bool,
    ) -> tuple[npt.NDArray[np.uint8], list[Region]]:
        """The label map on the source grid and each nodule measured there.

        ``lung`` is the lung channel on the network's grid and the value at or above
        which a source voxel is lung once brought back (refined on the source grid by
        :meth:`_lung_plane`) when ``refine`` (``lung_refine`` ``classical`` on an
        axial series).
        """
        shape = volume.pixels.shape
        lung_low, lung_threshold = lung
        # The lung, the nodule probability and (refining the lung) the large airways,
        # brought back together: one interpolation per source slice.
        layers = [lung_low, nodule_probability.astype(np.float32)]
        if refine and airway is not None:
            layers.append(airway.astype(np.float32))
        channels = np.stack(layers)
        del layers
        # Each nodule's own low-resolution component, one voxel wider, decides which
        # nodule a source voxel belongs to (nearest); the probability decides whether.
        grown = ndimage.grey_dilation(nodules_low, size=(3, 3, 3)) if count else nodules_low
        label_map = np.zeros(shape, dtype=np.uint8)
        d, h, w = nodules_low.shape
        rows = np.minimum((np.arange(shape[1]) + 0.5) * h / shape[1], h - 1).astype(int)
        cols = np.minimum((np.arange(shape[2]) + 0.5) * w / shape[2], w - 1).astype(int)
        for z in range(shape[0]):
            plane = upsample_plane(channels, z, shape)
            zi = min(int((z + 0.5) * d / shape[0]), d - 1)
            owner = grown[zi][np.ix_(rows, cols)]
            values = np.zeros(shape[1:], dtype=np.uint8)
            if refine:
                airway_plane = plane[2] if len(plane) > 2 else None
                values[
                    self._lung_plane(volume, plane[0], airway_plane, lung_threshold, z, refine=True)
                ] = LUNG_VALUE
            else:
                values[plane[0] >= lung_threshold] = LUNG_VALUE
            nodule = (plane[1] >= threshold) & (owner > 0)
            values[nodule] = (owner[nodule] + LUNG_VALUE).astype(np.uint8)
            label_map[z] = values
        regions: list[Region] = []
        boxes = ndimage.find_objects(label_map)
        probability_low = nodule_probability
        for k in range(1, count + 1):
            value = k + LUNG_VALUE
            box = boxes[value - 1] if value - 1 < len(boxes) else None
            if box is None:
                continue
            region = self._measure(volume, label_map, value, box, k, probability_low, nodules_low)
            if region is not None:
                regions.append(region)
        # Renumber so that label values follow the kept regions (1 + index).
        if len(regions) != count:
            remap = np.zeros(256, dtype=np.uint8)
            remap[LUNG_VALUE] = LUNG_VALUE
            renumbered: list[Region] = []
            for new, region in enumerate(regions, start=1):
                assert region.segment_number is not None
                remap[region.segment_number] = new + LUNG_VALUE
                renumbered.append(_with_index(region, new, new + LUNG_VALUE))
            label_map = remap[label_map]
            regions = renumbered
        return label_map, regions

    def _lung_plane(
        self,
        volume: Volume,
        lung: npt.NDArray[np.float32],
        airway: npt.NDArray[np.float32] | None,
        level: float,
        z: int,
        *,
        refine: bool,
    ) -> npt.NDArray[np.bool_]:
        """Source slice ``z`` of the lung from the lung channel brought back to it (lung
        from ``level``) and the large airways brought back (or None), refined on the
        slice's HU when ``refine`` (``lung_refine`` ``classical`` on an axial series;
        :func:`overread.inference.lung_mask.source_lung_plane`)."""
        if not refine:
            return np.asarray(lung >= level)
        return source_lung_plane(
            lung,
            level,
            airway,
            np.asarray(volume.pixels[z], dtype=np.float32),
            self.spec.lung_source_hu,
        )

    def _measure(
        self,
        volume: Volume,
        label_map: npt.NDArray[np.uint8],
        value: int,
        box: tuple[slice, ...],
        index: int,
        probability_low: npt.NDArray[np.float32] | None = None,
        nodules_low: npt.NDArray[np.int32] | None = None,
        *,
        score: float | None = None,
    ) -> Region | None:
        spec = self.spec
        mask = label_map[box] == value
        voxels = int(mask.sum())
        if voxels == 0:
            return None
        spacing = volume.spacing
        voxel_mm3 = float(spacing[0] * spacing[1] * spacing[2])
        hu = volume.pixels[box][mask]
        # Density from the interior: the boundary layer is partial volume.
        interior = ndimage.binary_erosion(mask)
        core = volume.pixels[box][interior] if interior.any() else hu
        solid_fraction = float(np.mean(core >= spec.solid_hu))
        # Voxel indices (slice, row, col) -> patient LPS via (col, row, slice, 1).
        index_zyx = np.argwhere(mask).astype(np.float64) + [s.start for s in box]
        homogeneous = np.c_[
            index_zyx[:, 2], index_zyx[:, 1], index_zyx[:, 0], np.ones(len(index_zyx))
        ]
        points = (volume.affine @ homogeneous.T).T[:, :3]
        edge = mask & ~ndimage.binary_erosion(mask)
        edge_zyx = np.argwhere(edge).astype(np.float64) + [s.start for s in box]
        edge_h = np.c_[edge_zyx[:, 2], edge_zyx[:, 1], edge_zyx[:, 0], np.ones(len(edge_zyx))]
        diameter = _longest_diameter((volume.affine @ edge_h.T).T[:, :3])
        # A voxel is a cube: a one-voxel nodule is one voxel across, not zero.
        diameter = max(diameter, float(min(spacing)))
        if diameter < spec.min_nodule_mm or diameter > spec.max_nodule_mm:
            return None
        lo = np.array([s.start for s in box], dtype=np.float64) - 0.5
        hi = np.array([s.stop for s in box], dtype=np.float64) - 0.5
        corners = np.array(
            [[c[2], c[1], c[0], 1.0] for c in ((lo[0], lo[1], lo[2]), (hi[0], hi[1], hi[2]))]
        )
        ends = (volume.affine @ corners.T).T[:, :3]
        box_mm = np.concatenate([ends.min(axis=0), ends.max(axis=0)])
        density = density_of(solid_fraction)
        volume_mm3 = voxels * voxel_mm3
        if score is None:
            assert probability_low is not None and nodules_low is not None
            score = nodule_score(probability_low[nodules_low == index], spec.nodule_score)
        return Region(
            label=spec.nodule_label,
            index=index,
            score=score,
            volume_mm3=volume_mm3,
            longest_diameter_mm=diameter,
            mean_hu=float(hu.mean()),
            solid_fraction=solid_fraction,
            density=density,
            category=categorise(density, diameter, solid_diameter_mm(volume_mm3, solid_fraction)),
            centre_mm=(
                float(points[:, 0].mean()),
                float(points[:, 1].mean()),
                float(points[:, 2].mean()),
            ),
            box_mm=(
                float(box_mm[0]),
                float(box_mm[1]),
                float(box_mm[2]),
                float(box_mm[3]),
                float(box_mm[4]),
                float(box_mm[5]),
            ),
            box_voxels=(
                box[0].start,
                box[1].start,
                box[2].start,
                box[0].stop,
                box[1].stop,
                box[2].stop,
            ),
            segment_number=value,
        )

    # -- series in --------------------------------------------------------------
    def predict_series(
        self, paths: Sequence[str | Path], *, operating_point: str | None = None
    ) -> list[VolumeOutput]:
        """Read DICOM files, group them by series and analyse each series (at the
        package's default operating point or at ``operating_point``).

        A series that cannot be read or assembled gives a prediction with ``ok``
        false and the reason; the others carry on. An unknown ``operating_point`` is
        refused before any file is read.
        """
        from collections import defaultdict

        from overread.imaging.reader import read

        if operating_point is not None:
            self.package.thresholds(operating_point)  # unknown operating point: refuse up front

        groups: dict[str, list[tuple[str, object]]] = defaultdict(list)
        outputs: list[VolumeOutput] = []
        failed: list[VolumeOutput] = []
        for path in paths:
            try:
                image = read(path)
            except OverreadError as exc:
                failed.append(self._failed(str(path), str(exc)))
                continue
            uid = image.metadata.series_instance_uid or f"(no Series Instance UID) {path}"
            groups[uid].append((str(path), image))
        for uid, items in sorted(groups.items()):
            label = str(Path(items[0][0]).parent)
            try:
                volume = assemble_volume([image for _, image in items])  # type: ignore[misc]
                accepts = self.package.manifest.accepts.modalities
                modality = (volume.metadata.modality or "").upper()
                if accepts and modality and modality not in {m.upper() for m in accepts}:
                    raise InferenceError(
                        f"modality {modality} is outside the model's intended use "
                        f"({', '.join(accepts)})"
                    )
                if volume.pixels.shape[0] < 2:
                    raise InferenceError("a single slice is not a volume")
                output = self.run_volume(volume, path=label, operating_point=operating_point)
                by_uid = {
                    image.metadata.sop_instance_uid: path  # type: ignore[attr-defined]
                    for path, image in items
                }
                output.source_paths = [by_uid[uid] for uid in volume.sop_instance_uids]
                outputs.append(output)
            except OverreadError as exc:
                failed.append(self._failed(f"series {uid}", str(exc)))
        return outputs + failed

    def _failed(self, path: str, error: str) -> VolumeOutput:
        return failed_output(path, error, self.model, self.task.value)

    def predict(
        self,
        inputs: Sequence[str | Path],
        *,
        explain: bool = False,
        trust: bool = False,
        override_gate: bool = False,
        operating_point: str | None = None,
        **_: object,
    ) -> list[Prediction]:
        """One prediction per series among ``inputs`` (the service's interface), at the
        package's default operating point or at ``operating_point``."""
        return [
            output.prediction
            for output in self.predict_series(inputs, operating_point=operating_point)
        ]


#: HU a voxel must reach to belong to a detected nodule's measured mask (aerated lung is
#: about -850 HU, ground-glass nodules about -600 HU).
DETECTION_MASK_HU = -720.0


def measure_detection(
    volume: Volume,
    centre: npt.NDArray[np.float64],
    half: npt.NDArray[np.float64],
    score: float,
    index: int,
    spec: VolumeSpec,
) -> Region:
    """A detected nodule measured on the source grid.

    ``centre`` (slice, row, column voxels) and ``half`` (half the box size in voxels)
    come from the detector. The nodule's mask is, inside the ellipsoid inscribed in
    the box, the voxels reaching :data:`DETECTION_MASK_HU` connected to the one
    nearest the centre (else the largest such component; else the whole ellipsoid):
    its volume, longest diameter, mean HU and solid fraction are the measurements.
    The centre and the box reported are the detector's.
    """
    shape = np.asarray(volume.pixels.shape)
    half = np.maximum(half, 0.5)
    lo = np.clip(np.floor(centre - half + 0.5), 0, shape - 1).astype(int)
    hi = np.clip(np.ceil(centre + half + 0.5), lo + 1, shape).astype(int)
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    pixels = volume.pixels[box]
    grid = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi, strict=True)], indexing="ij")
    inside = sum(((g - c) / h) ** 2 for g, c, h in zip(grid, centre, half, strict=True)) <= 1.0
    if not inside.any():
        inside = np.ones(pixels.shape, dtype=bool)
    dense = inside & (pixels >= DETECTION_MASK_HU)
    mask = inside
    if dense.any():
        labels, count = ndimage.label(dense)
        nearest = tuple(
            int(np.clip(round(c) - a, 0, n - 1))
            for c, a, n in zip(centre, lo, pixels.shape, strict=True)
        )
        pick = int(labels[nearest])
        if pick == 0:
            sizes = ndimage.sum_labels(dense, labels, index=np.arange(1, count + 1))
            pick = int(np.argmax(sizes)) + 1
        mask = labels == pick
    spacing = volume.spacing
    voxel_mm3 = float(spacing[0] * spacing[1] * spacing[2])
    hu = pixels[mask]
    interior = ndimage.binary_erosion(mask)
    core = pixels[interior] if interior.any() else hu
    solid_fraction = float(np.mean(core >= spec.solid_hu))
    edge = mask & ~ndimage.binary_erosion(mask)
    edge_zyx = np.argwhere(edge).astype(np.float64) + lo
    edge_h = np.c_[edge_zyx[:, 2], edge_zyx[:, 1], edge_zyx[:, 0], np.ones(len(edge_zyx))]
    diameter = max(_longest_diameter((volume.affine @ edge_h.T).T[:, :3]), float(min(spacing)))
    volume_mm3 = float(mask.sum()) * voxel_mm3
    density = density_of(solid_fraction)
    point = volume.affine @ np.array([centre[2], centre[1], centre[0], 1.0])
    a, b = centre - half, centre + half
    ends = (volume.affine @ np.array([[a[2], a[1], a[0], 1.0], [b[2], b[1], b[0], 1.0]]).T).T[:, :3]
    box_mm = np.concatenate([ends.min(axis=0), ends.max(axis=0)])
    return Region(
        label=spec.nodule_label,
        index=index,
        score=float(score),
        volume_mm3=volume_mm3,
        longest_diameter_mm=diameter,
        mean_hu=float(hu.mean()),
        solid_fraction=solid_fraction,
        density=density,
        category=categorise(density, diameter, solid_diameter_mm(volume_mm3, solid_fraction)),
        centre_mm=(float(point[0]), float(point[1]), float(point[2])),
        box_mm=(
            float(box_mm[0]),
            float(box_mm[1]),
            float(box_mm[2]),
            float(box_mm[3]),
            float(box_mm[4]),
            float(box_mm[5]),
        ),
        box_voxels=(int(lo[0]), int(lo[1]), int(lo[2]), int(hi[0]), int(hi[1]), int(hi[2])),
    )


def unmeasured_warning(count: int, best: float) -> str:
    """The warning of ``count`` candidates at or above the operating point (the best
    scoring ``best``) that could not be measured: fixed words and numbers only (a
    de-identified export keeps it)."""
    return (
        f"{count} candidate(s) scoring at or above the operating point "
        f"(best {best:.3f}) could not be measured (no mask, or a diameter "
        "outside the measured range): not reported as nodules; a reader must look"
    )


def _warn_airway(
    airway: npt.NDArray[np.bool_] | None, lung: npt.NDArray[np.bool_], warnings: list[str]
) -> None:
    """Log and report an implausible airway volume
    (:func:`overread.inference.lung_mask.airway_warning`)."""
    message = airway_warning(airway, lung)
    if message is not None:
        logger.warning("%s", message)
        warnings.append(message)


def _lung_channels(
    lung: npt.NDArray[np.float32], airway: npt.NDArray[np.bool_] | None
) -> npt.NDArray[np.float32]:
    """The lung channel, and the large airways (0/1) when given, as ``(C, d, h, w)``."""
    if airway is None:
        return np.asarray(lung[None], dtype=np.float32)
    return np.stack([lung.astype(np.float32), airway.astype(np.float32)])


def _with_index(region: Region, index: int, segment_number: int) -> Region:
    from dataclasses import replace

    return replace(region, index=index, segment_number=segment_number)


__all__ = [
    "LUNG_VALUE",
    "VolumeOutput",
    "VolumePipeline",
    "failed_output",
    "lung_and_nodules",
    "lung_output",
    "measure_detection",
    "nodule_score",
    "resample",
    "sliding_window",
    "unmeasured_warning",
    "upsample_plane",
]
