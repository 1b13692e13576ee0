"""PNG previews of the phantom: one per finding, and one across sites.

Used for the documentation and to eyeball a change to the renderer: each
finding is shown on the same patient as the normal study, next to a copy with
its ground-truth mask outlined, so what the label means is visible at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw
from scipy import ndimage

from overread.findings import CHEXPERT_LABELS, Finding
from overread.phantom.examples import example_spec
from overread.phantom.render import render_study
from overread.phantom.sites import DEFAULT_SITES
from overread.phantom.spec import StudySpec, StudyTruth


def display(
    pixels: npt.NDArray[np.uint16], truth: StudyTruth, monochrome1: bool
) -> npt.NDArray[np.uint8]:
    """Apply the study's VOI window (and MONOCHROME1 inversion) for viewing."""
    lo = truth.window_center - truth.window_width / 2
    x = np.clip((pixels.astype(np.float32) - lo) / truth.window_width, 0.0, 1.0)
    if monochrome1:
        x = 1.0 - x
    return np.asarray(x * 255, dtype=np.uint8)


def _outlined(grey: npt.NDArray[np.uint8], mask: npt.NDArray[np.bool_]) -> Image.Image:
    rgb = np.repeat(grey[:, :, None], 3, axis=2)
    edge = mask & ~ndimage.binary_erosion(mask, iterations=2)
    rgb[edge] = (255, 200, 0)
    return Image.fromarray(rgb, mode="RGB")


def _render(spec: StudySpec) -> tuple[npt.NDArray[np.uint8], StudyTruth]:
    pixels, truth = render_study(spec, np.random.default_rng(7))
    return display(pixels, truth, spec.monochrome1), truth


def slug(label: str) -> str:
    """File-name form of a label: ``Pleural Effusion`` -> ``pleural-effusion``."""
    return label.lower().replace(" ", "-")


def write_previews(
    out_dir: str | Path, size: int = 512, tile: int = 320, seed: int = 3
) -> list[Path]:
    """Write ``phantom-<finding>.png``, ``phantom-overview.png`` and ``phantom-sites.png``.

    Parameters
    ----------
    out_dir
        Folder for the PNGs.
    size
        Rendered image size (the DICOM-like stored size).
    tile
        Size of each panel in the PNGs (downsampled).
    seed
        Patient seed.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    tiles: list[Image.Image] = []
    for label in CHEXPERT_LABELS:
        findings = () if label == Finding.NO_FINDING.value else (label,)
        spec = example_spec(seed=seed, findings=findings, severity=0.75, size=size)
        grey, truth = _render(spec)
        mask = np.zeros_like(grey, dtype=bool)
        for f in truth.findings:
            if f.label == label:
                mask = f.mask
        left = Image.fromarray(grey).convert("RGB").resize((tile, tile), Image.Resampling.LANCZOS)
        right = _outlined(grey, mask).resize((tile, tile), Image.Resampling.LANCZOS)
        pair = Image.new("RGB", (2 * tile, tile))
        pair.paste(left, (0, 0))
        pair.paste(right, (tile, 0))
        path = out / f"phantom-{slug(label)}.png"
        pair.save(path, optimize=True)
        written.append(path)
        small = left.resize((tile // 2, tile // 2), Image.Resampling.LANCZOS)
        ImageDraw.Draw(small).text((4, 2), label, fill=(255, 255, 0))
        tiles.append(small)
    cols = 5
    half = tile // 2
    rows = (len(tiles) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * half, rows * half))
    for i, t in enumerate(tiles):
        sheet.paste(t, ((i % cols) * half, (i // cols) * half))
    path = out / "phantom-overview.png"
    sheet.save(path, optimize=True)
    written.append(path)
    # The same patient at each site, and at the first site after its drift.
    panels = []
    for index, site in enumerate(DEFAULT_SITES):
        spec = example_spec(seed=seed, size=size, site=index)
        grey, _ = _render(spec)
        panels.append((site.code, grey))
    drifted = example_spec(seed=seed, size=size, site=0)
    drifted = StudySpec(
        anatomy=drifted.anatomy,
        positioning=drifted.positioning,
        findings=(),
        acquisition=DEFAULT_SITES[0].after_drift().acquisition,
        rows=size,
        cols=size,
        internal=drifted.internal,
    )
    grey, _ = _render(drifted)
    panels.append((f"{DEFAULT_SITES[0].code} after drift", grey))
    sheet = Image.new("RGB", (len(panels) * half, half))
    for i, (name, grey) in enumerate(panels):
        img = Image.fromarray(grey).convert("RGB").resize((half, half), Image.Resampling.LANCZOS)
        ImageDraw.Draw(img).text((4, 2), name, fill=(255, 255, 0))
        sheet.paste(img, (i * half, 0))
    path = out / "phantom-sites.png"
    sheet.save(path, optimize=True)
    written.append(path)
    return written
