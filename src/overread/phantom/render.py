"""Render one chest radiograph from a :class:`StudySpec`, with exact ground truth."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import numpy.typing as npt
from PIL import Image

from overread.findings import CHEXPERT_LABELS, Finding
from overread.phantom.acquisition import expose
from overread.phantom.anatomy import (
    HEART_EXTRA,
    LUNG_AIR,
    SOFT_TISSUE,
    ChestFields,
    ChestShape,
    Field,
    Grid,
    chest_fields,
    chest_shape,
    lung_markings,
    smooth_noise,
    with_ctr,
)
from overread.phantom.bones import RibFracture, render_bones, rib_point
from overread.phantom.devices import render_devices
from overread.phantom.pathology import RENDERERS, FindingLayer
from overread.phantom.spec import FindingSpec, FindingTruth, StudySpec, StudyTruth

#: Findings that CheXpert's hierarchy counts as lung opacities.
OPACITY_CHILDREN: frozenset[str] = frozenset(
    {
        Finding.LUNG_LESION.value,
        Finding.EDEMA.value,
        Finding.CONSOLIDATION.value,
        Finding.PNEUMONIA.value,
        Finding.ATELECTASIS.value,
    }
)


def cardiomegaly_ctr(severity: float) -> float:
    """Cardiothoracic ratio of an enlarged heart (always > 0.5)."""
    return 0.515 + 0.17 * float(np.clip(severity, 0.0, 1.0))


def _geometry(spec: StudySpec) -> ChestShape:
    shape = chest_shape(spec.anatomy, spec.positioning)
    for f in spec.findings:
        if f.label == Finding.CARDIOMEGALY.value:
            shape = with_ctr(shape, cardiomegaly_ctr(f.severity))
        elif f.label == Finding.ENLARGED_CARDIOMEDIASTINUM.value:
            shape = replace(shape, mediastinum_widening=0.03 + 0.05 * f.severity)
        elif f.label == Finding.ATELECTASIS.value and f.severity > 0.3:
            lift = 0.012 + 0.035 * f.severity
            if f.side < 0:
                shape = replace(shape, dome_right=shape.dome_right - lift)
            else:
                shape = replace(shape, dome_left=shape.dome_left - lift)
    return shape


def _fractures(spec: FindingSpec, fields: ChestFields) -> tuple[tuple[RibFracture, ...], Field]:
    rng = np.random.default_rng(spec.seed)
    s = spec.severity
    side = spec.side if spec.side in (-1, 1) else int(rng.choice([-1, 1]))
    count = 1 + int(rng.random() < 0.6 + 0.4 * s) + int(rng.random() < 0.7 * s)
    first = int(rng.integers(2, 8 - count + 1))
    position = rng.uniform(0.6, 0.95)
    callus = float(rng.uniform(1.0, 1.6)) if rng.random() < 0.75 else 0.0
    fractures = tuple(
        RibFracture(
            side=side,
            rib=first + k,
            position=float(position + rng.normal(0, 0.03)),
            step=float((0.9 + 1.1 * s) * rng.choice([-1, 1])),
            gap=0.008 + 0.01 * s,
            callus=callus,
        )
        for k in range(count)
    )
    grid = fields.grid
    mask = np.zeros(grid.u.shape, dtype=bool)
    for fx in fractures:
        u, v = rib_point(fields, fx.rib, fx.side, fx.position)
        mask |= (grid.u - u) ** 2 + (grid.v - v) ** 2 < 0.03**2
    return fractures, mask


def _base_attenuation(fields: ChestFields, spec: StudySpec) -> tuple[Field, Field]:
    """Soft tissue, heart and abdomen (without lung air) and the markings field."""
    grid = fields.grid
    anatomy = spec.anatomy
    a = SOFT_TISSUE * anatomy.body_thickness * (0.25 + 0.75 * fields.body)
    a *= fields.body > 0
    below = grid.v > fields.dome
    a = a + 0.22 * below * fields.body
    shape = fields.shape
    # Gastric bubble under the left hemidiaphragm.
    bubble = ((grid.u - (0.5 + 0.55 * shape.lung_half_width)) / 0.05) ** 2 + (
        (grid.v - (shape.dome_left + 0.045)) / 0.025
    ) ** 2
    a = a - 0.35 * np.clip(1.0 - bubble, 0.0, 1.0) * below
    a = a + HEART_EXTRA * (fields.heart | fields.mediastinum)
    # Trachea: a lucent band down the upper mediastinum to the carina.
    trachea = np.exp(-((grid.dx / 0.011) ** 4)) * np.clip((0.35 - grid.v) / 0.03, 0.0, 1.0)
    a = a - 0.35 * trachea * (grid.v > 0.02)
    if anatomy.breast > 0:
        for side in (-1.0, 1.0):
            r = ((grid.u - (0.5 + side * 0.24)) / 0.17) ** 2 + ((grid.v - 0.74) / 0.12) ** 2
            a = a + 0.25 * anatomy.breast * np.sqrt(np.clip(1.0 - r, 0.0, 1.0))
    markings = lung_markings(fields, anatomy.seed)
    texture = smooth_noise(np.random.default_rng(anatomy.seed + 1), grid.rows, grid.cols, 48)
    markings = 0.7 * markings + 0.3 * (texture + 0.6) * fields.lung_depth
    return a.astype(np.float32), markings


def _to_stored(mask: Field, rows: int, cols: int) -> npt.NDArray[np.bool_]:
    img = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, mode="L")
    return np.asarray(img.resize((cols, rows), Image.Resampling.NEAREST)) > 127


def _bbox(mask: npt.NDArray[np.bool_]) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return (0, 0, 0, 0)
    return (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))


def truth_labels(findings: tuple[FindingSpec, ...]) -> dict[str, int]:
    """Exact CheXpert labels implied by the rendered findings.

    Lung Opacity is positive whenever any of its children is (CheXpert's label
    hierarchy). No Finding is positive when no pathology is present; as in
    CheXpert, support devices do not count as pathology.
    """
    present = {f.label for f in findings}
    if present & OPACITY_CHILDREN:
        present.add(Finding.LUNG_OPACITY.value)
    pathology = present - {Finding.SUPPORT_DEVICES.value, Finding.NO_FINDING.value}
    labels = {label: int(label in present) for label in CHEXPERT_LABELS}
    labels[Finding.NO_FINDING.value] = int(not pathology)
    return labels


def render_study(
    spec: StudySpec, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint16], StudyTruth]:
    """Render ``spec`` to stored pixel values and its exact ground truth.

    Parameters
    ----------
    spec
        The study to render.
    rng
        Source of acquisition noise only; anatomy and findings come from seeds in
        ``spec``, so the same patient rendered with and without a finding differs
        only where the finding is.

    Returns
    -------
    pixels
        ``(spec.rows, spec.cols)`` uint16 stored values (inverted for MONOCHROME1).
    truth
        Labels, per-finding masks and boxes in stored-pixel coordinates, the
        cardiothoracic ratio and the lung mask.
    """
    internal_rows = spec.internal
    internal_cols = max(8, round(spec.internal * spec.cols / spec.rows))
    grid = Grid(internal_rows, internal_cols, spec.positioning)
    shape = _geometry(spec)
    fields = chest_fields(grid, shape)
    attenuation, markings = _base_attenuation(fields, spec)

    layers: list[tuple[FindingSpec, FindingLayer]] = []
    fractures: tuple[RibFracture, ...] = ()
    ptx_side = 0
    for f in spec.findings:
        if f.label in RENDERERS:
            layer = RENDERERS[f.label](f, fields)
            layers.append((f, layer))
            if f.label == Finding.PNEUMOTHORAX.value:
                ptx_side = int(layer.attributes["side"])
        elif f.label == Finding.FRACTURE.value:
            fx, mask = _fractures(f, fields)
            fractures += fx
            layers.append((f, FindingLayer(mask=mask, attributes={"ribs": len(fx)})))
        elif f.label == Finding.CARDIOMEGALY.value:
            heart = fields.heart & (grid.v < fields.dome + 0.01)
            layers.append((f, FindingLayer(mask=heart, attributes={"ctr": round(shape.ctr, 4)})))
        elif f.label == Finding.ENLARGED_CARDIOMEDIASTINUM.value:
            medi = fields.mediastinum & (grid.v > 0.12)
            width = 2 * (shape.mediastinum_half_width + shape.mediastinum_widening)
            layers.append((f, FindingLayer(mask=medi, attributes={"width": round(width, 4)})))
    for f in spec.findings:
        if f.label == Finding.SUPPORT_DEVICES.value:
            layers.append((f, render_devices(f, fields, ptx_side)))

    fill_total = np.zeros_like(attenuation)
    marking_gain = np.ones_like(attenuation)
    for _, layer in layers:
        if layer.fill is not None:
            fill_total += layer.fill
        if layer.add is not None:
            attenuation += layer.add
        if layer.markings is not None:
            marking_gain *= layer.markings
    fill_total = np.clip(fill_total, 0.0, 1.0)
    air = LUNG_AIR * fields.lung_depth * (1.0 - fill_total)
    attenuation += 0.22 * markings * marking_gain * (1.0 - fill_total) - air
    attenuation += render_bones(fields, fractures, anterior=True)

    pixels, center, width = expose(
        attenuation, spec.rows, spec.cols, spec.acquisition, rng, spec.monochrome1
    )

    truths: list[FindingTruth] = []
    opacity_masks = []
    for f, layer in layers:
        mask = _to_stored(layer.mask, spec.rows, spec.cols)
        if f.label in OPACITY_CHILDREN or f.label == Finding.LUNG_OPACITY.value:
            opacity_masks.append((f, mask))
            if f.label == Finding.LUNG_OPACITY.value:
                continue
        truths.append(
            FindingTruth(
                label=f.label,
                severity=round(f.severity, 3),
                mask=mask,
                bbox=_bbox(mask),
                attributes=dict(layer.attributes),
            )
        )
    if opacity_masks:
        union = np.zeros((spec.rows, spec.cols), dtype=bool)
        for _, m in opacity_masks:
            union |= m
        truths.append(
            FindingTruth(
                label=Finding.LUNG_OPACITY.value,
                severity=round(max(f.severity for f, _ in opacity_masks), 3),
                mask=union,
                bbox=_bbox(union),
                attributes={"from": sorted({f.label for f, _ in opacity_masks})},
            )
        )
    order = {label: i for i, label in enumerate(CHEXPERT_LABELS)}
    truths.sort(key=lambda t: order[t.label])
    return pixels, StudyTruth(
        labels=truth_labels(spec.findings),
        findings=truths,
        ctr=round(shape.ctr, 4),
        lungs=_to_stored(fields.lungs, spec.rows, spec.cols),
        window_center=center,
        window_width=width,
        bits_stored=spec.acquisition.bits_stored,
    )
