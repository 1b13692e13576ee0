"""A heatmap overlay as a DICOM Secondary Capture image, for any PACS viewer.

Every PACS can display a Secondary Capture, whereas few render SR or parametric
maps, so the explanation a radiologist actually sees is this: the source image,
windowed as the modality intended, with the model's heatmap for one finding
blended on top in cividis (a colour-blind-safe map, blue to yellow), the outline
of the map's top region (at or above half its maximum) and the bounding box of
that region's part holding the peak drawn in white, and the caveat "FOR RESEARCH USE - NOT FOR DIAGNOSIS" burned into
the pixels (so it survives screenshots, exports and viewers that hide overlays).
The instance is in the source's study, in a new series, with Burned In Annotation
YES and a Source Image Sequence pointing at the image it was derived from.

Heatmaps come at the model-input resolution. When the prediction records where
the image sat in the padded model input (``prediction.letterbox``, as
:class:`overread.inference.Prediction` does), the padding is cut away first; the
rest is resampled bilinearly onto the image.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.pixels.processing import apply_modality_lut, apply_voi_lut
from pydicom.uid import generate_uid

from overread.errors import ServiceError
from overread.explain.overlay import colourise, draw_region
from overread.findings import Finding
from overread.results import Decision, HeatmapPlacement, Prediction
from overread.service.outputs.prediction import checked_findings, model_identity
from overread.service.outputs.sr import MANUFACTURER
from overread.service.verification import Verification

logger = logging.getLogger(__name__)

#: How an overlay's caption states each decision (a close call is for a reader).
_CAPTION = {
    Decision.POSITIVE: "POSITIVE",
    Decision.INDETERMINATE: "REFER",
    Decision.NEGATIVE: "negative",
}

#: The caveat burned into every overlay.
RESEARCH_BANNER = "FOR RESEARCH USE - NOT FOR DIAGNOSIS"

HeatmapSpace = Literal["auto", "image", "letterbox"]


def windowed_grey(source: Dataset) -> np.ndarray:
    """Return the source image as uint8 grey, displayed as its modality intended.

    Applies the modality LUT/rescale, then the file's VOI LUT or window (the first
    one if several), else a 1st-99th percentile window; MONOCHROME1 is inverted so
    that bone is bright, as on a reading screen.

    Raises
    ------
    ServiceError
        If the dataset has no decodable single-frame greyscale pixel data.
    """
    try:
        pixels = source.pixel_array
    except Exception as exc:
        raise ServiceError(
            f"source image {getattr(source, 'SOPInstanceUID', '?')}: pixel data cannot be "
            f"decoded ({exc})"
        ) from exc
    if int(getattr(source, "SamplesPerPixel", 1)) != 1:
        raise ServiceError("overlay needs a greyscale source image (Samples per Pixel 1)")
    if pixels.ndim == 3:
        pixels = pixels[0]
    if pixels.ndim != 2:
        raise ServiceError(f"overlay needs a 2D source image; pixel array is {pixels.shape}")
    values = apply_modality_lut(pixels, source).astype(np.float64)
    if "VOILUTSequence" in source:
        # A VOI LUT is indexed by integer values (the modality LUT's output).
        indices = np.rint(values).astype(np.int64)
        windowed = apply_voi_lut(indices, source, index=0).astype(np.float64)
        low, high = float(windowed.min()), float(windowed.max())
    elif "WindowCenter" in source and "WindowWidth" in source:
        windowed = values
        center = float(np.ravel([source.WindowCenter])[0])
        width = float(np.ravel([source.WindowWidth])[0])
        low, high = center - width / 2.0, center + width / 2.0
    else:
        windowed = values
        low, high = (float(v) for v in np.percentile(values, [1.0, 99.0]))
    if high <= low:
        high = low + 1.0
    grey = np.clip((windowed - low) / (high - low), 0.0, 1.0)
    if str(getattr(source, "PhotometricInterpretation", "")) == "MONOCHROME1":
        grey = 1.0 - grey
    return np.asarray(np.round(grey * 255.0), dtype=np.uint8)


def _crop_box(
    heat_shape: tuple[int, int], rows: int, cols: int, geometry: HeatmapPlacement | None
) -> tuple[int, int, int, int]:
    """Return (top, left, height, width) of the image inside a letterboxed heatmap."""
    if geometry is not None:
        return (
            int(geometry.top),
            int(geometry.left),
            int(geometry.new_rows),
            int(geometry.new_cols),
        )
    # No recorded geometry: the image was scaled to fit and centre-padded.
    side_r, side_c = heat_shape
    scale = min(side_r / rows, side_c / cols)
    used_r, used_c = max(1, round(rows * scale)), max(1, round(cols * scale))
    return (side_r - used_r) // 2, (side_c - used_c) // 2, used_r, used_c


def _heatmap_on_image(
    heatmap: np.ndarray,
    source_shape: tuple[int, int],
    out_shape: tuple[int, int],
    space: HeatmapSpace,
    geometry: HeatmapPlacement | None = None,
) -> np.ndarray:
    """Resample a heatmap onto the output image, normalised to [0, 1].

    ``source_shape`` is the stored image's (rows, cols), which a letterboxed
    heatmap's padding is computed from; ``out_shape`` is the overlay's size.
    """
    heat = np.squeeze(np.asarray(heatmap, dtype=np.float32))
    if heat.ndim != 2 or min(heat.shape) < 1:
        raise ServiceError(f"heatmap must be 2D; got shape {np.shape(heatmap)}")
    if not np.all(np.isfinite(heat)):
        raise ServiceError("heatmap contains NaN or infinite values")
    if space == "letterbox" or (space == "auto" and geometry is not None):
        top, left, height, width = _crop_box(
            (heat.shape[0], heat.shape[1]), source_shape[0], source_shape[1], geometry
        )
        heat = heat[top : top + max(height, 1), left : left + max(width, 1)]
        if heat.size == 0:
            raise ServiceError("letterbox geometry lies outside the heatmap")
    heat = np.clip(heat, 0.0, None)
    peak = float(heat.max())
    if peak > 0:
        heat = heat / peak
    rows, cols = out_shape
    resized = Image.fromarray(heat, mode="F").resize((cols, rows), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


#: The heatmap placed on an image as the overlays place it (the study viewer's layers).
heatmap_on_image = _heatmap_on_image


def _colour(values: np.ndarray) -> np.ndarray:
    """Map [0, 1] to RGB in [0, 1] with cividis (colour-blind safe; blue low, yellow high)."""
    return colourise(values).astype(np.float32) / 255.0


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    for name in ("DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "LiberationSans-Bold.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default(size=size)


def burn_in_text(rgb: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """Return ``rgb`` with ``lines`` drawn top-left in white on a dark band.

    The text is scaled to the image (about 1/28 of its smaller side, never below
    10 pixels) and drawn on an opaque band, so it stays readable on any image.
    """
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    rows, cols = rgb.shape[:2]
    size = max(10, min(rows, cols) // 28)
    font = _font(size)
    margin = max(2, size // 3)
    y = margin
    for line in lines:
        box = draw.textbbox((margin, y), line, font=font)
        draw.rectangle(
            (
                box[0] - margin // 2,
                box[1] - margin // 2,
                box[2] + margin // 2,
                box[3] + margin // 2,
            ),
            fill=(0, 0, 0),
        )
        draw.text((margin, y), line, font=font, fill=(255, 255, 255))
        y = box[3] + margin
    return np.asarray(image, dtype=np.uint8)


def draw_legend(rgb: np.ndarray) -> np.ndarray:
    """Return ``rgb`` with the colour scale ("low" to "high" attention) bottom right.

    A heatmap without its scale invites over-reading faint colour; the legend says
    that colour is relative model attention, not a measurement.
    """
    image = Image.fromarray(rgb, mode="RGB")
    draw = ImageDraw.Draw(image)
    rows, cols = rgb.shape[:2]
    size = max(10, min(rows, cols) // 40)
    font = _font(size)
    margin = max(2, size // 3)
    bar_width, bar_height = max(20, cols // 6), max(4, size // 2)
    low_box = draw.textbbox((0, 0), "low", font=font)
    high_box = draw.textbbox((0, 0), "high", font=font)
    text_height = max(low_box[3], high_box[3])
    right = cols - margin
    left = right - (high_box[2] + margin + bar_width + margin + low_box[2])
    bottom = rows - margin
    top = bottom - max(text_height, bar_height)
    if left < 0 or top < 0:
        return rgb
    draw.rectangle((left - margin, top - margin, right + margin // 2, bottom), fill=(0, 0, 0))
    draw.text((left, top), "low", font=font, fill=(255, 255, 255))
    bar_left = left + low_box[2] + margin
    ramp = colourise(np.linspace(0.0, 1.0, bar_width, dtype=np.float32))
    bar_top = top + (max(text_height, bar_height) - bar_height) // 2
    out = np.asarray(image, dtype=np.uint8).copy()
    out[bar_top : bar_top + bar_height, bar_left : bar_left + bar_width] = ramp[None, :, :]
    image = Image.fromarray(out, mode="RGB")
    ImageDraw.Draw(image).text(
        (bar_left + bar_width + margin, top), "high", font=font, fill=(255, 255, 255)
    )
    return np.asarray(image, dtype=np.uint8)


def _patient_orientation(source: Dataset) -> tuple[str, str] | None:
    value = getattr(source, "PatientOrientation", None)
    if value is None or len(value) != 2:
        return None
    row, col = str(value[0]), str(value[1])
    try:
        hd.PatientOrientationValuesBiped(row)
        hd.PatientOrientationValuesBiped(col)
    except ValueError:
        return None
    return (row, col)


@dataclass(frozen=True)
class RenderedOverlay:
    """An overlay's pixels before they become a DICOM object.

    Attributes
    ----------
    rgb
        (rows, columns, 3) uint8: the windowed image, the heatmap, the region, the
        burned-in caveat and caption, and the colour scale.
    scale
        How much the image was shrunk (1.0: not at all).
    caption
        The finding's line burned in ("Pneumothorax: p=0.93 (threshold 0.50) POSITIVE").
    """

    rgb: np.ndarray
    scale: float
    caption: str


def render_overlay(
    prediction: Prediction,
    source: Dataset,
    label: str,
    *,
    max_dimension: int | None = 1024,
    alpha: float = 0.45,
    heatmap_space: HeatmapSpace = "auto",
) -> RenderedOverlay:
    """The pixels :func:`build_overlay` wraps (same parameters), for reports that show
    the overlay without a DICOM object around it.

    Raises
    ------
    ServiceError
        If there is no heatmap for ``label``, the finding is unknown, or the source
        has no usable pixel data.
    """
    model = model_identity(prediction)
    findings = {f.label: f for f in checked_findings(prediction)}
    if label not in findings:
        raise ServiceError(f"prediction has no finding {label!r}; known: {', '.join(findings)}")
    heatmaps = prediction.heatmaps or {}
    if label not in heatmaps:
        raise ServiceError(
            f"prediction has no heatmap for {label!r} (was it run with explain=True?)"
        )
    if not 0.0 < alpha <= 1.0:
        raise ServiceError(f"alpha must be in (0, 1]; got {alpha}")

    grey = windowed_grey(source)
    rows, cols = grey.shape
    source_shape = (rows, cols)
    scale = 1.0
    if max_dimension is not None and max(rows, cols) > max_dimension:
        scale = max_dimension / max(rows, cols)
        rows, cols = max(1, round(rows * scale)), max(1, round(cols * scale))
        grey = np.asarray(
            Image.fromarray(grey).resize((cols, rows), Image.Resampling.LANCZOS), dtype=np.uint8
        )
    heat = _heatmap_on_image(
        heatmaps[label],
        source_shape,
        (grey.shape[0], grey.shape[1]),
        heatmap_space,
        prediction.letterbox,
    )

    base = np.repeat(grey[..., None].astype(np.float32) / 255.0, 3, axis=-1)
    weight = (alpha * heat)[..., None]
    blended = base * (1.0 - weight) + _colour(heat) * weight
    rgb = np.asarray(np.round(np.clip(blended, 0.0, 1.0) * 255.0), dtype=np.uint8)
    # Where to look: the top region's outline and the box of its part with the peak.
    rgb = draw_region(rgb, heat, width=max(1, min(rows, cols) // 256))

    finding = findings[label]
    decision = _CAPTION[finding.decision]
    caption = (
        f"{label}: p={float(finding.probability):.2f} "
        f"(threshold {float(finding.threshold):.2f}) {decision}"
    )
    rgb = burn_in_text(
        rgb, [RESEARCH_BANNER, caption, f"AI heatmap - {model.name} {model.version}"]
    )
    rgb = draw_legend(rgb)

    return RenderedOverlay(rgb=rgb, scale=scale, caption=caption)


def build_overlay(
    prediction: Prediction,
    source_dataset: Dataset,
    label: str,
    *,
    series_number: int = 9902,
    instance_number: int = 1,
    series_instance_uid: str | None = None,
    sop_instance_uid: str | None = None,
    max_dimension: int | None = 1024,
    alpha: float = 0.45,
    heatmap_space: HeatmapSpace = "auto",
) -> hd.sc.SCImage:
    """Build a Secondary Capture of ``label``'s heatmap blended on the source image.

    Parameters
    ----------
    prediction
        A prediction whose ``heatmaps`` holds a 2D map for ``label``.
    source_dataset
        The image (with pixel data) the prediction was made on.
    label
        Which finding's heatmap to show; also written in the burned-in caption with
        its probability, threshold and decision.
    series_number, instance_number, series_instance_uid, sop_instance_uid
        Identity of the new instance (same study, new series).
    max_dimension
        Longest side of the overlay in pixels (the image is shrunk, never enlarged,
        keeping its aspect ratio); ``None`` keeps the source's size. A capture is
        for looking, not measuring: 1024 keeps it sharp at a tenth of the bytes.
    alpha
        Opacity of the heatmap where it is strongest; weak areas stay grey.
    heatmap_space
        ``"auto"`` (default): crop the padding recorded in the prediction's
        ``letterbox`` geometry when it has one, else treat the heatmap as spanning
        the image; ``"image"``: the heatmap spans the source image;
        ``"letterbox"``: it spans the padded model input (the recorded geometry,
        else a centred fit).

    Raises
    ------
    ServiceError
        If there is no heatmap for ``label``, the finding is unknown, or the source
        has no usable pixel data.
    """
    model = model_identity(prediction)
    rendered = render_overlay(
        prediction,
        source_dataset,
        label,
        max_dimension=max_dimension,
        alpha=alpha,
        heatmap_space=heatmap_space,
    )
    rgb, scale, caption = rendered.rgb, rendered.scale, rendered.caption

    spacing = getattr(source_dataset, "PixelSpacing", None)
    pixel_spacing = (
        (float(spacing[0]) / scale, float(spacing[1]) / scale)
        if spacing is not None and len(spacing) == 2
        else None
    )
    orientation = _patient_orientation(source_dataset)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source_dataset,
        pixel_array=rgb,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=series_instance_uid or generate_uid(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or generate_uid(),
        instance_number=instance_number,
        manufacturer=MANUFACTURER,
        # highdicom annotates this as ints; DICOM pixel spacing is decimal (DS).
        pixel_spacing=cast(Any, pixel_spacing),
        patient_orientation=orientation or ("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    if orientation is None:
        # Unknown orientation: Patient Orientation is Type 2, so leave it empty
        # rather than state a direction we do not know.
        sc.PatientOrientation = []
    # Laterality is Type 2C in General Series: the source's R/L if it states one,
    # else present and empty (a chest, or "both").
    side = str(getattr(source_dataset, "Laterality", "") or "")
    if side not in ("R", "L"):
        side = str(getattr(source_dataset, "ImageLaterality", "") or "")
    sc.Laterality = side if side in ("R", "L") else ""
    sc.BurnedInAnnotation = "YES"
    sc.SeriesDescription = f"overread heatmap {label} (research use)"[:64]
    sc.DerivationDescription = (
        f"{label} heatmap from {model.name} {model.version} blended on the source image"
    )[:1024]
    sc.ImageComments = f"{RESEARCH_BANNER}. {caption}"[:10240]
    sc.ManufacturerModelName = model.name[:64]
    sc.SoftwareVersions = model.version[:64]
    reference = Dataset()
    reference.ReferencedSOPClassUID = source_dataset.SOPClassUID
    reference.ReferencedSOPInstanceUID = source_dataset.SOPInstanceUID
    sc.SourceImageSequence = [reference]
    logger.info(
        "built overlay",
        extra={"sop_instance_uid": str(sc.SOPInstanceUID), "label": label, "rows": rgb.shape[0]},
    )
    return sc


#: How an overlay's Derivation Description names its finding: "{label} heatmap from ...".
_DERIVATION_SEPARATOR = " heatmap from "


def overlay_finding(overlay: Dataset) -> str | None:
    """The finding an overlay :func:`build_overlay` made shows (``None``: not one)."""
    label, separator, _ = str(overlay.get("DerivationDescription", "")).partition(
        _DERIVATION_SEPARATOR
    )
    return label if separator and label else None


def verified_overlay(
    overlay: Dataset,
    label: str,
    decision: Decision,
    verification: Verification,
    *,
    series_instance_uid: str,
    instance_number: int = 1,
) -> Dataset:
    """A new instance of a stored overlay as the reader verified it: the same pixels
    with a band below them stating who verified it, when, and the reader's decision
    for ``label`` (burned in, as the research caveat is); new SOP Instance UID, in
    ``series_instance_uid``. The stored overlay is left as it was."""
    rgb = np.asarray(overlay.pixel_array, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ServiceError(f"overlay {overlay.SOPInstanceUID} is not an RGB image")
    rows, cols = rgb.shape[:2]
    reader = verification.observer_name.replace("^", " ").strip()
    moment = verification.verified_at.strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"VERIFIED by {reader} on {moment}",
        f"{label}: {_CAPTION[decision]} (reader's decision)",
    ]
    size = max(10, min(rows, cols) // 28)
    height = len(lines) * (size * 3 // 2 + max(2, size // 3)) + 2 * max(2, size // 3)
    band = burn_in_text(np.zeros((height, cols, 3), dtype=np.uint8), lines)
    pixels = np.ascontiguousarray(np.concatenate([rgb, band], axis=0))
    out = copy.deepcopy(overlay)
    out.Rows = int(pixels.shape[0])
    out.PixelData = pixels.tobytes()
    out.SOPInstanceUID = generate_uid()
    out.file_meta.MediaStorageSOPInstanceUID = out.SOPInstanceUID
    out.SeriesInstanceUID = series_instance_uid
    out.InstanceNumber = instance_number
    out.SeriesDescription = f"overread heatmap {label} (verified)"[:64]
    out.ImageComments = (f"{RESEARCH_BANNER}. {verification.statement} {label}: {decision.value}.")[
        :10240
    ]
    return out


def overlay_labels(prediction: Prediction) -> list[str]:
    """The findings :func:`build_overlays` shows by default, in its order: each decided
    positive or referred that has a heatmap, most probable first, never "No Finding"."""
    heatmaps = prediction.heatmaps or {}
    ranked = sorted(checked_findings(prediction), key=lambda f: -f.probability)
    return [
        f.label
        for f in ranked
        if f.decision is not Decision.NEGATIVE
        and f.label in heatmaps
        and f.label != Finding.NO_FINDING.value
    ]


def build_overlays(
    prediction: Prediction,
    source_dataset: Dataset,
    labels: Sequence[str] | None = None,
    *,
    series_number: int = 9902,
    series_instance_uid: str | None = None,
    max_dimension: int | None = 1024,
) -> list[hd.sc.SCImage]:
    """Build one overlay per finding, all in one new series.

    Parameters
    ----------
    labels
        Which findings to show; by default every finding decided positive or
        referred ("too close to call") that has a heatmap, most probable first.
        "No Finding" is never shown.

    Returns
    -------
    list[highdicom.sc.SCImage]
        Instances numbered 1, 2, ... in a shared series (empty if nothing to show).
    """
    if labels is None:
        labels = overlay_labels(prediction)
    series_uid = series_instance_uid or str(generate_uid())
    return [
        build_overlay(
            prediction,
            source_dataset,
            label,
            series_number=series_number,
            series_instance_uid=series_uid,
            instance_number=number,
            max_dimension=max_dimension,
        )
        for number, label in enumerate(labels, start=1)
    ]


__all__ = [
    "RESEARCH_BANNER",
    "RenderedOverlay",
    "build_overlay",
    "build_overlays",
    "burn_in_text",
    "draw_legend",
    "heatmap_on_image",
    "overlay_finding",
    "overlay_labels",
    "render_overlay",
    "verified_overlay",
    "windowed_grey",
]
