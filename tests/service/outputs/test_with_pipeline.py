"""End to end with the real inference pipeline: DX image -> Prediction -> SR, overlay,
FHIR -> a real PACS. Slow only because loading the pipeline imports the runtimes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fhir.resources.R4B.bundle import Bundle
from pydicom.dataset import Dataset

from overread.service.outputs import (
    DicomDestination,
    build_fhir_report,
    build_overlay,
    build_sr,
    send_datasets,
)

from .conftest import DX_CHEST, StoreSCP, dciodvfy_errors

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_prediction() -> Any:
    inference = pytest.importorskip("overread.inference")
    pipeline = inference.Pipeline.from_name("cxr-default")
    (prediction,) = pipeline.predict([DX_CHEST], explain=True)
    assert prediction.ok, prediction.error
    assert prediction.heatmaps and prediction.letterbox is not None
    return prediction


def test_real_prediction_to_valid_sr_overlay_and_fhir(
    tmp_path: Path, real_prediction: Any, dx_chest: Dataset
) -> None:
    sr = build_sr(real_prediction, [dx_chest])
    sr_path = tmp_path / "sr.dcm"
    sr.save_as(sr_path, enforce_file_format=True)
    assert dciodvfy_errors(sr_path) == []
    groups = hd.sr.srread(sr_path).content.get_image_measurement_groups()
    assert len(groups) == len(real_prediction.findings)
    expected = {"positive": "52101004", "negative": "272519000", "indeterminate": "373068000"}
    for group, finding in zip(groups, real_prediction.findings, strict=True):
        (decision,) = group.get_qualitative_evaluations()
        assert decision.value.value == expected[finding.decision]
        probability = next(m for m in group.get_measurements() if m.name.value == "122157")
        assert probability.value == pytest.approx(finding.probability, abs=1e-6)

    label = real_prediction.findings[-1].label
    sc = build_overlay(real_prediction, dx_chest, label)
    sc_path = tmp_path / "sc.dcm"
    sc.save_as(sc_path, enforce_file_format=True)
    assert dciodvfy_errors(sc_path) == []

    bundle = build_fhir_report(
        real_prediction, dx_chest, sr_sop_instance_uid=str(sr.SOPInstanceUID)
    )
    assert len(Bundle.model_validate(bundle).entry) == len(real_prediction.findings) + 2


def test_overlay_puts_the_heatmap_peak_where_the_letterbox_maps_it(
    real_prediction: Any, dx_chest: Dataset
) -> None:
    # Replace one map by a single hot spot at a known stored-image position and
    # check the overlay shows it there, i.e. the padding was cut away correctly.
    box = real_prediction.letterbox
    size = real_prediction.heatmaps[real_prediction.findings[0].label].shape
    target_row, target_col = 0.75, 0.3  # fractions of the stored image
    heat = np.zeros(size, dtype=np.float32)
    r = int(box.top + target_row * box.new_rows)
    c = int(box.left + target_col * box.new_cols)
    heat[r - 3 : r + 4, c - 3 : c + 4] = 1.0
    label = real_prediction.findings[0].label
    original = real_prediction.heatmaps[label]
    real_prediction.heatmaps[label] = heat
    try:
        sc = build_overlay(real_prediction, dx_chest, label, max_dimension=512)
    finally:
        real_prediction.heatmaps[label] = original
    rgb = sc.pixel_array.astype(int)
    redness = rgb[..., 0] - rgb[..., 2]
    redness[: sc.Rows // 6] = 0  # the caption band
    redness[-sc.Rows // 12 :, -sc.Columns // 3 :] = 0  # the colour-scale legend
    peak_row, peak_col = np.unravel_index(np.argmax(redness), redness.shape)
    assert peak_row / sc.Rows == pytest.approx(target_row, abs=0.03)
    assert peak_col / sc.Columns == pytest.approx(target_col, abs=0.03)


@pytest.mark.service
def test_real_prediction_results_reach_a_pacs(
    storescp: StoreSCP, real_prediction: Any, dx_chest: Dataset
) -> None:
    datasets = [
        build_sr(real_prediction, [dx_chest]),
        build_overlay(real_prediction, dx_chest, real_prediction.findings[0].label),
    ]
    results = send_datasets(datasets, DicomDestination("PACSAE", "127.0.0.1", storescp.port))
    assert all(r.ok for r in results)
    received = {pydicom.dcmread(p).SOPInstanceUID for p in storescp.out_dir.iterdir()}
    assert received == {ds.SOPInstanceUID for ds in datasets}
