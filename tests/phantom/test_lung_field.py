"""The chest X-ray phantom's lung-field masks: written beside the finding masks,
listed in ground_truth.json, and where the image shows lungs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from scipy import ndimage

from overread.imaging.transforms import cxr_chain
from overread.phantom import generate_cohort
from overread.phantom.cohort import LUNG_FIELD_MASK


def test_lung_field_masks_are_two_lungs_darker_than_the_mediastinum(tmp_path: Path) -> None:
    generate_cohort(tmp_path, n=6, seed=7, rows=128, cols=128, workers=1, monochrome1_fraction=0.5)
    images = json.loads((tmp_path / "ground_truth.json").read_text())["images"]
    chain = cxr_chain(128)
    assert len(images) == 6
    for record in images:
        path = tmp_path / record["lung_field"]
        assert path.name == LUNG_FIELD_MASK and path.parent.parts[-2] == record["patient_id"]
        mask = np.asarray(PILImage.open(path)) > 127
        assert mask.shape == (128, 128)
        labels, count = ndimage.label(mask)
        assert count == 2, record["path"]
        centres = [c for _, c in ndimage.center_of_mass(mask, labels, [1, 2])]
        assert min(centres) < 64 < max(centres)  # one lung each side of the midline
        assert 0.15 < mask.mean() < 0.5
        # Bone bright after the chain (MONOCHROME1 inverted): lungs are dark.
        x = np.asarray(chain.read_and_apply(tmp_path / record["path"]).processed.pixels)
        rows = np.flatnonzero(mask.any(axis=1))
        band = np.zeros_like(mask)
        band[rows[0] : rows[-1] + 1, 60:68] = True  # the mediastinum between the lungs
        band &= ~mask
        assert band.sum() > 50
        assert x[mask].mean() < x[band].mean() - 0.1, record["path"]


def test_the_lung_field_is_the_geometry_the_lungs_are_drawn_with(tmp_path: Path) -> None:
    import json as _json

    from overread.phantom.cohort import CohortOptions, plan_cohort, study_spec
    from overread.phantom.render import render_study

    generate_cohort(tmp_path, n=2, seed=11, rows=96, cols=96, workers=1)
    options = CohortOptions(n=2, seed=11, rows=96, cols=96, workers=1)
    records = _json.loads((tmp_path / "ground_truth.json").read_text())["images"]
    for plan, record in zip(plan_cohort(options), records, strict=True):
        _, truth = render_study(study_spec(plan, options), np.random.default_rng(0))
        mask = np.asarray(PILImage.open(tmp_path / record["lung_field"])) > 127
        assert np.array_equal(mask, truth.lungs)
