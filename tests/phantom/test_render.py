"""In-memory rendering: each finding is where its mask says, and visible there."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from overread.findings import CHEXPERT_LABELS
from overread.phantom import example_spec, render_study

FINDINGS = [lab for lab in CHEXPERT_LABELS if lab != "No Finding"]
# Findings inside the lung fields (allowing the soft edge of the lung mask).
PARENCHYMAL = ["Lung Opacity", "Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis"]


def _render(seed: int, findings: tuple[str, ...], severity: float = 0.7):
    spec = example_spec(seed=seed, findings=findings, severity=severity, size=256)
    return render_study(spec, np.random.default_rng(100 + seed))


def _displayed(pixels: np.ndarray) -> np.ndarray:
    return pixels.astype(np.float64)  # MONOCHROME2: higher value = brighter = denser


@pytest.mark.parametrize("label", FINDINGS)
@pytest.mark.parametrize("seed", [1, 2])
def test_each_finding_changes_pixels_inside_its_mask(label: str, seed: int) -> None:
    base, base_truth = _render(seed, ())
    with_finding, truth = _render(seed, (label,))
    assert base_truth.labels["No Finding"] == 1
    assert truth.labels[label] == 1
    finding = next(f for f in truth.findings if f.label == label)
    mask = finding.mask
    assert mask.any()
    diff = _displayed(with_finding) - _displayed(base)
    inside = float(np.abs(diff[mask]).mean())
    outside_region = ~ndimage.binary_dilation(mask, iterations=6)
    outside = float(np.abs(diff[outside_region]).mean())
    scale = float(base.max() - base.min())
    # A real change where the mask is (>= 2% of the dynamic range on average) ...
    assert inside > 0.02 * scale, (label, inside / scale)
    # ... and much more than elsewhere (findings that reshape anatomy move little else).
    assert inside > 3 * outside, (label, inside, outside)
    if label == "Pneumothorax":
        assert diff[mask].mean() < 0  # pleural air is darker
    elif label not in ("Fracture", "Enlarged Cardiomediastinum"):
        assert diff[mask].mean() > 0  # fluid, tissue, metal are brighter


@pytest.mark.parametrize("label", PARENCHYMAL)
def test_parenchymal_masks_lie_in_the_lungs(label: str) -> None:
    _, truth = _render(3, (label,))
    lungs = ndimage.binary_dilation(truth.lungs, iterations=3)
    for finding in truth.findings:
        assert (finding.mask & ~lungs).sum() <= 0.02 * finding.mask.sum(), finding.label


def test_boxes_enclose_masks_exactly() -> None:
    _, truth = _render(4, tuple(FINDINGS))
    assert {f.label for f in truth.findings} == set(FINDINGS)
    for finding in truth.findings:
        ys, xs = np.nonzero(finding.mask)
        assert finding.bbox == (xs.min(), ys.min(), xs.max(), ys.max())


def test_cardiothoracic_ratio() -> None:
    _, normal = _render(5, ())
    _, enlarged = _render(5, ("Cardiomegaly",), severity=0.1)
    assert normal.ctr < 0.5 < enlarged.ctr
    ctr = next(f for f in enlarged.findings if f.label == "Cardiomegaly").attributes["ctr"]
    assert ctr == enlarged.ctr


def test_lung_opacity_hierarchy_and_no_finding() -> None:
    _, truth = _render(6, ("Edema", "Support Devices"))
    assert truth.labels["Lung Opacity"] == 1
    assert truth.labels["No Finding"] == 0
    _, devices_only = _render(6, ("Support Devices",))
    assert devices_only.labels["No Finding"] == 1  # devices are not pathology (CheXpert)


def test_render_is_deterministic_and_sizes_are_respected() -> None:
    spec = example_spec(seed=7, findings=("Pleural Effusion",), size=300)
    a, _ = render_study(spec, np.random.default_rng(1))
    b, _ = render_study(spec, np.random.default_rng(1))
    c, _ = render_study(spec, np.random.default_rng(2))
    assert a.shape == (300, 300) and a.dtype == np.uint16
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_previews_are_written_for_every_label(tmp_path, run_cli) -> None:
    status, stdout, _ = run_cli("phantom", "previews", "--out", tmp_path, "--size", "128")
    assert status == 0
    names = {p.name for p in tmp_path.glob("*.png")}
    assert len(names) == len(CHEXPERT_LABELS) + 2 == len(stdout.split())
    assert {"phantom-overview.png", "phantom-sites.png", "phantom-pleural-effusion.png"} <= names
