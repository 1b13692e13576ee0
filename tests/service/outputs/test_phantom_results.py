"""Results on phantom chest radiographs, whose ground truth is exact: the overlay's
heat and the SEG must sit on the pneumothorax the phantom drew."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset

from overread.results import ModelRef, Prediction
from overread.service.outputs import build_overlay, build_seg, build_sr

from .conftest import dciodvfy_errors


@dataclass
class PhantomCase:
    dataset: Dataset
    mask: np.ndarray  # 0/1, stored-image geometry
    bbox: tuple[int, int, int, int]  # x0, y0, x1, y1


@pytest.fixture(scope="module")
def pneumothorax_case(tmp_path_factory: pytest.TempPathFactory) -> PhantomCase:
    phantom = pytest.importorskip("overread.phantom")
    root = tmp_path_factory.mktemp("phantom")
    phantom.generate_cohort(
        root, n=3, seed=5, rows=256, cols=256, prevalence={"Pneumothorax": 0.95}, workers=1
    )
    truth = json.loads((root / "ground_truth.json").read_text())
    for image in truth["images"]:
        for finding in image["findings"]:
            if finding["label"] == "Pneumothorax":
                mask = np.asarray(Image.open(root / finding["mask"])) > 127
                return PhantomCase(
                    pydicom.dcmread(root / image["path"]),
                    mask.astype(np.uint8),
                    tuple(finding["bbox"]),
                )
    pytest.fail("the phantom cohort drew no pneumothorax")


def test_overlay_heat_lies_on_the_drawn_pneumothorax(
    tmp_path: Path, pneumothorax_case: PhantomCase, prediction: Prediction
) -> None:
    # A perfect explanation: the heatmap is the truth mask at CAM resolution.
    small = Image.fromarray(pneumothorax_case.mask * 255).resize((32, 32), Image.Resampling.BOX)
    assert prediction.heatmaps is not None
    prediction.heatmaps["Pneumothorax"] = np.asarray(small, dtype=np.float32) / 255.0
    sc = build_overlay(prediction, pneumothorax_case.dataset, "Pneumothorax", max_dimension=None)
    path = tmp_path / "sc.dcm"
    sc.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []

    rgb = sc.pixel_array.astype(int)
    hot = (rgb[..., 0] - rgb[..., 2]) > 60
    hot[: rgb.shape[0] // 6] = False  # ignore the caption band
    hot[-rgb.shape[0] // 12 :, -rgb.shape[1] // 3 :] = False  # and the legend
    assert hot.sum() > 50
    x0, y0, x1, y1 = pneumothorax_case.bbox
    rows, cols = np.nonzero(hot)
    inside = (cols >= x0 - 4) & (cols <= x1 + 4) & (rows >= y0 - 4) & (rows <= y1 + 4)
    assert inside.mean() > 0.95


def test_seg_of_the_truth_mask_on_a_phantom_dx(
    tmp_path: Path, pneumothorax_case: PhantomCase
) -> None:
    model = ModelRef("phantom-truth", "1", "0" * 64)
    seg = build_seg({"Pneumothorax": pneumothorax_case.mask}, [pneumothorax_case.dataset], model)
    path = tmp_path / "seg.dcm"
    seg.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    assert np.array_equal(pydicom.dcmread(path).pixel_array, pneumothorax_case.mask)


def test_sr_on_a_phantom_dx(
    tmp_path: Path, pneumothorax_case: PhantomCase, prediction: Prediction
) -> None:
    sr = build_sr(prediction, [pneumothorax_case.dataset])
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    assert dciodvfy_errors(path) == []
    assert sr.PatientID == pneumothorax_case.dataset.PatientID
