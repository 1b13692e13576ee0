"""Explanation trust: the map checks on their own, then on the bundled model and a phantom."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from torch import nn

from overread.explain.faithfulness import label_probabilities
from overread.explain.trust import (
    explanation_trust,
    explanation_trust_batch,
    local_mean_fill,
    map_concentration,
)
from overread.imaging import read
from overread.inference import Pipeline
from overread.models import Registry
from overread.phantom import generate_cohort


def test_a_flat_map_has_no_concentration_and_a_point_map_nearly_full() -> None:
    assert map_concentration(np.ones((20, 20))) == pytest.approx(0.0, abs=1e-9)
    point = np.zeros((20, 20))
    point[3, 4] = 1.0
    assert map_concentration(point) > 0.99
    assert map_concentration(np.zeros((20, 20))) == 0.0


class _Brightness(nn.Module):
    """Logit of label 0: brightness of a fixed patch; label 1: of the whole image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patch = x[:, 0, 2:5, 2:5].mean(dim=(1, 2))
        whole = x[:, 0].mean(dim=(1, 2))
        return torch.stack([8 * (patch - 0.5), 8 * (whole - 0.5)], dim=1)


def test_the_batch_matches_one_map_at_a_time_with_one_call() -> None:
    network = _Brightness()
    x = np.full((1, 16, 16), 0.1, dtype=np.float32)
    x[0, 2:5, 2:5] = 1.0
    maps = np.zeros((2, 16, 16), dtype=np.float32)
    maps[0, 2:5, 2:5] = 1.0  # on the patch label 0 depends on
    maps[1, 10:13, 10:13] = 1.0  # on background
    probabilities = label_probabilities(network, torch.from_numpy(x[None]))[0]
    calls: list[int] = []

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        return label_probabilities(network, torch.from_numpy(batch))

    batched = explanation_trust_batch(
        x, maps, probabilities, [0, 1, 0], predict, baseline="image-mean"
    )
    assert calls == [2] and set(batched) == {0, 1}
    for index in (0, 1):
        alone = explanation_trust(network, x, maps[index], index, baseline="image-mean")
        assert batched[index].trust_score == pytest.approx(alone.trust_score, abs=1e-6)
        assert batched[index].deletion_drop == pytest.approx(alone.deletion_drop, abs=1e-6)
    assert batched[0].deletion_drop > 0.5 and batched[0].trust_score > batched[1].trust_score
    assert explanation_trust_batch(x, maps, probabilities, [], predict) == {}
    assert calls == [2]
    local = explanation_trust_batch(x, maps, probabilities, [0], predict)
    assert local[0].deletion_drop > 0.5 and calls == [2, 1]


def test_a_region_filled_from_around_it_leaves_the_rest() -> None:
    x = np.full((1, 32, 32), 0.2, dtype=np.float32)
    x[0, 10:16, 10:16] = 0.9  # a bright "lesion"
    region = np.zeros((32, 32), dtype=bool)
    region[10:16, 10:16] = True
    filled = local_mean_fill(x, region)
    np.testing.assert_allclose(filled[0, 10:16, 10:16], 0.2, atol=1e-6)
    np.testing.assert_array_equal(filled[0][~region], x[0][~region])
    np.testing.assert_array_equal(local_mean_fill(x, np.zeros((32, 32), bool)), x)
    with pytest.raises(ValueError):
        local_mean_fill(x, np.zeros((8, 8), bool))


# -- on the bundled model ------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    return Pipeline(Registry(tmp_path_factory.mktemp("registry")).load("cxr-default"))


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("phantom")
    generate_cohort(out, n=8, seed=5, rows=256, cols=256)
    return out


def _input_mask(pipeline: Pipeline, image: Any, mask_png: Path) -> np.ndarray:
    """A ground-truth mask of the stored image placed in the model input."""
    box = pipeline.letterbox(image)
    assert box is not None
    size = pipeline.package.manifest.input.size
    resized = PILImage.open(mask_png).convert("L").resize((box.new_cols, box.new_rows))
    placed = np.zeros((size, size), dtype=np.float32)
    placed[box.top : box.top + box.new_rows, box.left : box.left + box.new_cols] = (
        np.asarray(resized) > 127
    )
    return placed


def test_a_map_on_the_lesion_earns_more_trust_than_one_on_background(
    pipeline: Pipeline, phantom: Path
) -> None:
    truth = json.loads((phantom / "ground_truth.json").read_text())
    compared = 0
    for entry in truth["images"]:
        image = read(phantom / entry["path"])
        x, _ = pipeline.preprocess(image)
        probabilities = pipeline.predict_batch(x[None])[0]
        decided = {f.label: f for f in pipeline.findings(probabilities)}
        for finding in entry["findings"]:
            label = finding["label"]
            # Lesions only: a support device is not one (and a thin tube barely survives
            # resizing to the model input).
            if label == "Support Devices" or label not in decided or not decided[label].positive:
                continue
            index = pipeline.labels.index(label)
            lesion = _input_mask(pipeline, image, phantom / finding["mask"])
            background = np.flip(lesion, axis=1) * (lesion == 0)  # the other side of the chest
            if lesion.sum() < 50 or background.sum() < 0.5 * lesion.sum():
                continue
            trusts = []
            for focus in (lesion, background):
                maps = np.zeros((len(pipeline.labels), *lesion.shape), dtype=np.float32)
                maps[index] = focus
                evidence = explanation_trust_batch(
                    x, maps, probabilities, [index], pipeline.deleted_probabilities
                )
                trusts.append(evidence[index])
            on_lesion, on_background = trusts
            # The background region is no larger, so its map is at least as concentrated:
            # the difference comes from what removing the region does to the probability.
            assert on_background.map_concentration >= on_lesion.map_concentration - 1e-6
            assert on_lesion.deletion_drop > on_background.deletion_drop + 0.1
            assert on_lesion.trust_score > on_background.trust_score, (entry["path"], label)
            compared += 1
    assert compared >= 3
