"""CT evaluation: truth read back through the DICOM loader scores perfectly; misses cost."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from overread.phantom.ct import make_case, read_mask, write_case
from overread.training.ct import CtPrediction, Detection, threshold_baseline
from overread.training.ct_eval import evaluate_cohort, markdown_table


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ctcohort")
    rows = []
    # Case 0 loses a slice; nodules with known positions in every case.
    for i, rate in ((0, 1.0), (3, 0.0)):
        case = make_case(21, i, size=64, missing_rate=rate, max_nodules=4)
        rows.append(write_case(case, out))
    (out / "cases.json").write_text(json.dumps(rows))
    assert rows[0]["missing_slices"] and sum(r["nodules"] for r in rows) >= 2
    return out


def oracle(root: Path, *, drop_detections: bool = False):  # type: ignore[no-untyped-def]
    """A predictor that returns the truth of whichever case it is shown (matched by shape)."""
    truths = {}
    for row in json.loads((root / "cases.json").read_text()):
        folder = root / row["case"]
        lung, _ = read_mask(folder / "lung.nii.gz")
        nod, _ = read_mask(folder / "nodules.nii.gz")
        keep = [k for k in range(lung.shape[0]) if k not in row["missing_slices"]]
        nodules = json.loads((folder / "nodules.json").read_text())
        truths[(len(keep), *lung.shape[1:])] = (lung[keep], nod[keep], nodules, keep)

    def predict(hu: np.ndarray, spacing: tuple[float, float, float]) -> CtPrediction:
        lung, nod, nodules, keep = truths[hu.shape]
        dets = []
        for n in [] if drop_detections else nodules:
            col, row, sl = n["centre_voxel"]
            z = float(np.interp(sl, keep, np.arange(len(keep))))
            dets.append(
                Detection((z, row, col), (z - 1, row - 1, col - 1), (z + 1, row + 1, col + 1), 0.9)
            )
        # One false positive per scan, far outside the lungs.
        dets.append(Detection((0.0, 0.0, 0.0), (0, 0, 0), (1, 1, 1), 0.95))
        return CtPrediction(lung > 0, nod > 0, dets)

    return predict


def test_truth_scores_perfectly_even_with_a_missing_slice(cohort: Path) -> None:
    result = evaluate_cohort(cohort, oracle(cohort))
    assert result["lung_dice"] == 1.0 and result["lung_hd95_mm"] == 0.0
    if result["nodules_ge6mm"]:
        assert result["nodule_dice_ge6mm"] == 1.0
    assert result["detection"]["sensitivity_at_1fp"] == 1.0
    assert result["detection"]["cpm"] < 1.0  # below 1 FP/scan the higher-scored FP costs


def test_missed_nodules_cost_sensitivity(cohort: Path) -> None:
    result = evaluate_cohort(cohort, oracle(cohort, drop_detections=True))
    assert result["detection"]["sensitivity_at_1fp"] == 0.0


def test_threshold_baseline_finds_the_lungs_and_reports_a_table(cohort: Path) -> None:
    result = evaluate_cohort(cohort, threshold_baseline)
    assert result["lung_dice"] > 0.85
    table = markdown_table(result, result)
    assert "| Lung Dice (mean over cases) |" in table and "ground-glass" in table
