"""Explanation trust: the map checks on their own, then on the bundled model and a phantom."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image as PILImage

from overread.explain.trust import (
    TOP_FRACTION,
    delete_region,
    deletion_drop,
    explanation_trust,
    map_concentration,
    top_region,
    trust_score,
)
from overread.imaging import read
from overread.inference import Pipeline
from overread.models import Registry
from overread.phantom import generate_cohort


def test_a_flat_map_has_no_concentration_and_a_point_map_full() -> None:
    assert map_concentration(np.ones((20, 20))) == pytest.approx(0.0, abs=1e-9)
    point = np.zeros((20, 20))
    point[3, 4] = 1.0
    assert map_concentration(point) == pytest.approx(1.0)
    assert map_concentration(np.zeros((20, 20))) == 0.0
    blob = np.zeros((20, 20))
    blob[5:9, 5:9] = 1.0
    blob += 0.1  # some spread: less than full concentration, more than none
    assert 0.0 < map_concentration(blob) < 1.0


def test_the_top_region_is_the_top_fraction_of_the_map() -> None:
    heatmap = np.arange(100, dtype=np.float64).reshape(10, 10)
    region = top_region(heatmap)
    assert region.sum() == round(TOP_FRACTION * 100)
    assert region[9].all() and not region[:9].any()
    assert not top_region(np.zeros((10, 10))).any()
    with pytest.raises(ValueError):
        top_region(heatmap, fraction=1.0)


def test_deleting_a_region_fills_it_from_around_and_leaves_the_rest() -> None:
    x = np.full((1, 32, 32), 0.2, dtype=np.float32)
    x[0, 10:16, 10:16] = 0.9  # a bright "lesion"
    region = np.zeros((32, 32), dtype=bool)
    region[10:16, 10:16] = True
    deleted = delete_region(x, region)
    np.testing.assert_allclose(deleted[0, 10:16, 10:16], 0.2, atol=1e-6)
    np.testing.assert_array_equal(deleted[0][~region], x[0][~region])
    np.testing.assert_array_equal(delete_region(x, np.zeros((32, 32), bool)), x)
    with pytest.raises(ValueError):
        delete_region(x, np.zeros((8, 8), bool))


def test_drop_and_score_are_bounded() -> None:
    assert deletion_drop(0.8, 0.2) == pytest.approx(0.75)
    assert deletion_drop(0.5, 0.9) == 0.0
    assert deletion_drop(0.0, 0.0) == 0.0
    assert trust_score(1.0, 0.25) == pytest.approx(0.5)
    assert trust_score(0.0, 1.0) == 0.0


def test_one_extra_batch_for_all_labels_of_an_image() -> None:
    calls: list[int] = []
    x = np.full((1, 16, 16), 0.1, dtype=np.float32)
    x[0, 2:5, 2:5] = 1.0
    maps = np.zeros((3, 16, 16), dtype=np.float32)
    maps[0, 2:5, 2:5] = 1.0  # on the bright patch
    maps[2, 10:13, 10:13] = 1.0  # on background

    def predict(batch: np.ndarray) -> np.ndarray:
        calls.append(len(batch))
        brightness = batch[:, 0, 2:5, 2:5].mean(axis=(1, 2))
        return np.stack([brightness, brightness, brightness], axis=1)

    evidence = explanation_trust(x, maps, np.array([1.0, 1.0, 1.0]), [0, 2, 0], predict)
    assert calls == [2]
    assert set(evidence) == {0, 2}
    assert evidence[0].deletion_drop > 0.8 and evidence[2].deletion_drop == 0.0
    assert evidence[0].trust_score > evidence[2].trust_score
    assert explanation_trust(x, maps, np.ones(3), [], predict) == {}
    assert calls == [2]


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
                evidence = explanation_trust(
                    x, maps, probabilities, [index], pipeline.deleted_probabilities
                )
                trusts.append(evidence[index])
            on_lesion, on_background = trusts
            # The background region is no larger, so its map is at least as concentrated:
            # the difference comes from what removing the region does to the probability.
            assert on_background.map_concentration >= on_lesion.map_concentration - 1e-9
            assert on_lesion.deletion_drop > on_background.deletion_drop + 0.1
            assert on_lesion.trust_score > on_background.trust_score, (entry["path"], label)
            compared += 1
    assert compared >= 3
