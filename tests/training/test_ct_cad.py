"""Fitting the nodule CAD's candidate score on phantoms (``overread.training.ct_cad``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from overread.errors import ConfigError
from overread.models.blob_cad import FEATURES
from overread.phantom.ct import write_ct_cohort
from overread.training.ct_cad import cohort_candidates, fit_cad, source_lung


def test_fit_cad_labels_candidates_by_the_truth_and_ranks_nodules_first(tmp_path: Path) -> None:
    write_ct_cohort(tmp_path / "cohort", 3, 0, size=96)
    weights, data = fit_cad(tmp_path / "cohort", l2=1.0)
    assert len(weights) == len(FEATURES) + 1
    assert data.nodules > 0 and data.nodules_with_candidate >= data.nodules - 1
    assert 0 < data.labels.sum() < len(data.labels)
    w = np.asarray(weights)
    scores = w[0] + data.features @ w[1:]
    # Fitted on these candidates: the nodules' candidates rank in the top few percent.
    ranks = np.argsort(np.argsort(-scores))
    assert np.median(ranks[data.labels == 1]) < 0.05 * len(scores)


def test_not_a_cohort_is_one_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a phantom CT cohort"):
        cohort_candidates(tmp_path)


def test_source_lung_keeps_the_lungs_not_the_outside_air() -> None:
    hu = np.full((10, 40, 40), -1000.0, dtype=np.float32)
    hu[:, 4:36, 4:36] = 40.0
    hu[1:9, 8:32, 8:18] = -850.0
    hu[1:9, 8:32, 22:32] = -850.0
    hu[4, 20, 12] = 30.0  # a one-voxel nodule: a hole, filled
    lung = source_lung(hu)
    assert lung[4, 20, 12] and lung[4, 10, 25]
    assert not lung[0, 0, 0] and not lung[4, 20, 20]


def test_a_bad_case_is_one_config_error_before_any_candidate_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import json

    import overread.training.ct_cad as ct_cad

    root = tmp_path / "cohort"
    write_ct_cohort(root, 2, 0, size=64)
    cases = [row["case"] for row in json.loads((root / "cases.json").read_text())]
    last = root / cases[-1]

    def no_search(*args: object, **kwargs: object) -> object:
        raise AssertionError("candidates searched before the cohort was checked")

    monkeypatch.setattr(ct_cad, "find_candidates", no_search)
    nodules_file = last / "nodules.json"
    nodules = json.loads(nodules_file.read_text())
    assert nodules, "the phantom case has nodules"
    good_nodules, good_case = nodules_file.read_text(), (last / "case.json").read_text()
    for bad in ("missing", [1, 2], [1, "x", 3], [1, 2, float("nan")]):
        if bad == "missing":
            nodules[0].pop("centre_voxel", None)
        else:
            nodules[0]["centre_voxel"] = bad
        nodules_file.write_text(json.dumps(nodules))
        with pytest.raises(ConfigError, match="nodule 1: 'centre_voxel' is not three numbers"):
            cohort_candidates(root)
    nodules_file.write_text(good_nodules)
    info = json.loads(good_case)
    for affine, says in (
        (None, "no 'affine_lps'"),
        ([[1, 0], [0, 1]], "not a 4 x 4 affine"),
        ("x", "no 'affine_lps'"),
    ):
        if affine is None:
            (last / "case.json").write_text(
                json.dumps({k: v for k, v in info.items() if k != "affine_lps"})
            )
        else:
            (last / "case.json").write_text(json.dumps({**info, "affine_lps": affine}))
        with pytest.raises(ConfigError, match=says):
            cohort_candidates(root)
    (last / "case.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not readable JSON"):
        cohort_candidates(root)
