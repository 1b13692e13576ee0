"""Revision 3 of the nodule CAD: what its manifest and runtime refuse, the closed lung
once per series, the shell features on precomputed shells, trees scored as fitted."""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from overread.errors import ConfigError, ModelPackageError
from overread.inference.volume import VolumePipeline
from overread.models.blob_cad import (
    FAR_SHELL,
    FEATURES_V3,
    SHELLS,
    Candidate,
    check_trees,
    closed_lung,
    coarse_closed_lung,
    search_candidates,
    shell_features,
    tree_scores,
)
from overread.models.ct_cad import write_cad_package
from overread.models.manifest import Manifest
from overread.models.package import load_package
from overread.models.registry import bundled_dir
from overread.training.ct_cad import fit_trees

from .ct_series import NODULES, SHAPE, SPACING, chest_volume, write_series

NAN, INF = float("nan"), float("inf")
LEAVES = [-1.0, 0.5, -1.0, -1.0, -1.0, -0.5, -1.0, -1.0]
HOSTILE: dict[str, list[float]] = {
    "feature infinite": [INF, 0.3, 1.0, 2.0, *LEAVES],
    "feature -0.5": [-0.5, 0.3, 1.0, 2.0, *LEAVES],
    "feature 1.5": [1.5, 0.3, 1.0, 2.0, *LEAVES],
    "child 1e12": [0.0, 0.3, 1.0, 1e12, *LEAVES],
    "child -1": [0.0, 0.3, 1.0, -1.0, *LEAVES],
    "child 1.5": [0.0, 0.3, 1.5, 2.0, *LEAVES],
    "child before": [0.0, 0.3, 0.0, 2.0, *LEAVES],
    "leaf NaN": [0.0, 0.3, 1.0, 2.0, -1.0, NAN, -1.0, -1.0, -1.0, -0.5, -1.0, -1.0],
    "leaf infinite": [0.0, 0.3, 1.0, 2.0, -1.0, INF, -1.0, -1.0, -1.0, -0.5, -1.0, -1.0],
    "threshold NaN": [0.0, NAN, 1.0, 2.0, *LEAVES],
    "threshold infinite": [0.0, -INF, 1.0, 2.0, *LEAVES],
    "leaf with children": [0.0, 0.3, 1.0, 2.0, -1.0, 0.5, 2.0, 2.0, -1.0, -0.5, -1.0, -1.0],
}


def _hostile_copy(tmp_path: Path, volume_update: dict[str, object]) -> Path:
    """The bundled package with its volume section changed and signed again (the
    signature matches: it is the content that must be refused)."""
    root = Path(shutil.copytree(bundled_dir() / "ct-nodule-cad", tmp_path / "pkg"))
    manifest = load_package(root).manifest
    assert manifest.volume is not None
    volume = manifest.volume.model_copy(update=volume_update)
    bad = manifest.model_copy(update={"volume": volume}).signed()
    (root / "manifest.json").write_text(bad.to_json(), encoding="utf-8")
    return root


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_trees_are_refused_on_load_in_one_line(case: str, tmp_path: Path) -> None:
    tree = HOSTILE[case]
    with pytest.raises(ValueError, match="cad_trees"):
        check_trees([[-1.0, -1.0, -1.0, -1.0], tree], len(FEATURES_V3))
    root = _hostile_copy(tmp_path, {"cad_trees": ((-1.0, -1.0, -1.0, -1.0), tuple(tree))})
    with pytest.raises(ModelPackageError) as caught:
        load_package(root)
    message = str(caught.value)
    assert "cad_trees" in message and "\n" not in message


def test_the_bundled_trees_pass_the_check() -> None:
    manifest = load_package(bundled_dir() / "ct-nodule-cad").manifest
    assert manifest.volume is not None
    check_trees(manifest.volume.cad_trees, len(FEATURES_V3))


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    rng = np.random.default_rng(0)
    volume = chest_volume(SHAPE, SPACING, NODULES)
    volume = (volume + rng.normal(0, 15, volume.shape)).astype(np.float32)
    return write_series(tmp_path_factory.mktemp("cad") / "series", volume, SPACING)


def test_a_score_that_is_not_a_number_stops_the_prediction(
    series: list[Path], tmp_path: Path
) -> None:
    """NaN < threshold is False: a NaN score must not become a nodule."""
    pipeline = VolumePipeline(load_package(write_cad_package(tmp_path / "pkg", revision=2)))
    weights = list(pipeline.spec.cad_weights)
    weights[0] = NAN
    pipeline.spec = pipeline.spec.model_copy(update={"cad_weights": tuple(weights)})
    [out] = pipeline.predict_series(series)
    assert not out.prediction.ok and not out.prediction.regions
    assert "not a number" in (out.prediction.error or "")
    pipeline = VolumePipeline(load_package(write_cad_package(tmp_path / "pkg3")))
    pipeline.spec = pipeline.spec.model_copy(update={"cad_trees": ((-1.0, NAN, -1.0, -1.0),)})
    [out] = pipeline.predict_series(series)
    assert not out.prediction.ok and not out.prediction.regions
    assert "cad_trees" in (out.prediction.error or "")


def test_write_cad_package_refuses_other_revisions_and_trees_on_revision_2(
    tmp_path: Path,
) -> None:
    for revision in (1, 4):
        with pytest.raises(ConfigError, match="revision"):
            write_cad_package(tmp_path / f"r{revision}", revision=revision)
    with pytest.raises(ConfigError, match="trees"):
        write_cad_package(tmp_path / "r2", revision=2, trees=[[-1.0, 0.0, -1.0, -1.0]])
    assert not (tmp_path / "r2").exists()


@pytest.mark.parametrize("key", ["cad_candidate_closing_mm", "cad_max_candidates", "cad_rim_ratio"])
def test_revision_3_needs_its_settings(key: str, tmp_path: Path) -> None:
    root = _hostile_copy(tmp_path, {key: None})
    with pytest.raises(ModelPackageError, match=key) as caught:
        load_package(root)
    assert "\n" not in str(caught.value)


def test_revision_2_has_no_closing_and_still_loads(tmp_path: Path) -> None:
    old = load_package(write_cad_package(tmp_path / "old", revision=2))
    data = json.loads(old.manifest.to_json())
    data.pop("signature")
    Manifest.model_validate(data)  # as written
    closing = json.loads(json.dumps(data))
    closing["volume"]["cad_candidate_closing_mm"] = 10.0
    with pytest.raises(ValueError, match="cad_candidate_closing_mm"):
        Manifest.model_validate(closing)
    weights = json.loads(json.dumps(data))
    weights["volume"]["cad_weights"][1] = INF
    with pytest.raises(ValueError, match="finite"):
        Manifest.model_validate(weights)


def _ball_lung() -> tuple[np.ndarray, tuple[float, float, float]]:
    spacing = (0.7, 0.6, 0.6)
    shape = (90, 100, 100)
    z, y, x = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    lung = (z - 31) ** 2 / 1.2 + (y - 30) ** 2 + (x - 30) ** 2 <= 24.0**2
    # A bay in the lung's edge (a nodule on the pleura) and a hole inside it.
    lung &= ~((z - 31) ** 2 + (y - 30) ** 2 + (x - 53) ** 2 <= 5.0**2)
    lung &= ~((z - 40) ** 2 + (y - 25) ** 2 + (x - 25) ** 2 <= 4.0**2)
    return lung, spacing


def test_the_closed_lung_is_closed_once_and_is_the_whole_volume_closing() -> None:
    lung, spacing = _ball_lung()
    whole = tuple(slice(0, n) for n in lung.shape)
    exact = closed_lung(lung, spacing, whole, 10.0)  # type: ignore[arg-type]
    coarse = coarse_closed_lung(lung, spacing, 10.0)
    region = lung | coarse.on(whole)  # type: ignore[arg-type]
    # Per slab: the same voxels as the whole volume's region.
    for z0 in range(0, lung.shape[0], 8):
        box = (slice(z0, min(z0 + 8, lung.shape[0])), slice(5, 90), slice(0, 100))
        assert np.array_equal(lung[box] | coarse.on(box), region[box])
    # A bay on the edge and a hole are closed; the outside is not; the coarse closing
    # is the closing at the source but for voxels along the edge.
    assert not lung[44, 50, 88] and not lung[57, 42, 42]
    assert region[44, 50, 88] and region[57, 42, 42] and exact[44, 50, 88]
    assert not region[85, 95, 95] and not region[0, 0, 0] and not exact[0, 0, 0]
    differ = region ^ exact
    assert differ.sum() <= 0.06 * exact.sum()
    # Only along the closed lung's edge (within a block's diagonal, about 3.3 mm).
    from scipy import ndimage

    inside = ndimage.distance_transform_edt(exact, sampling=spacing)
    outside = ndimage.distance_transform_edt(~exact, sampling=spacing)
    assert float(np.maximum(inside, outside)[differ].max()) <= 3.3


def test_the_candidates_do_not_depend_on_the_slab() -> None:
    rng = np.random.default_rng(1)
    lung, spacing = _ball_lung()
    hu = np.where(lung, -850.0, 40.0) + rng.normal(0, 15, lung.shape)
    z, y, x = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(lung.shape, spacing, strict=True)], indexing="ij"
    )
    hu[(z - 31) ** 2 + (y - 30) ** 2 + (x - 48) ** 2 <= 4.0**2] = 40.0
    hu = hu.astype(np.float32)
    a = search_candidates(hu, spacing, lung, closing_mm=10.0, slab_slices=8)
    b = search_candidates(hu, spacing, lung, closing_mm=10.0, slab_slices=500)
    assert a.candidates == b.candidates and a.candidates


def _old_shell_features(
    hu: np.ndarray, spacing: Sequence[float], candidate: Candidate
) -> np.ndarray:
    """Shell features as first written (float64 grids per candidate)."""
    r = max(candidate.radius_mm, 0.75 * max(spacing))
    reach = [math.ceil(FAR_SHELL[1] * r / s) + 1 for s in spacing]
    c = candidate.centre
    lo = [max(0, ci - q) for ci, q in zip(c, reach, strict=True)]
    hi = [min(n, ci + q + 1) for ci, n, q in zip(c, hu.shape, reach, strict=True)]
    sub = hu[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    axes = [(np.arange(a, b) - ci) * s for a, b, ci, s in zip(lo, hi, c, spacing, strict=True)]
    grid = np.meshgrid(*axes, indexing="ij")
    dist = np.sqrt(sum(g * g for g in grid)) / r
    bright = sub >= 0.5 * (candidate.core_hu + candidate.background_hu)
    out: list[float] = []
    for a, b in SHELLS:
        shell = (dist >= a) & (dist <= b) if a > 0 else dist <= b
        out.append(float(bright[shell].mean()) if shell.any() else 1.0)
    for a, b in SHELLS[-2:]:
        shell = (dist >= a) & (dist <= b)
        best = 0.0
        for g in grid:
            for side in (g > 0.3 * r, g < -0.3 * r):
                part = shell & side
                if part.any():
                    best = max(best, float(bright[part].mean()))
        out.append(best)
    far = sub[(dist >= FAR_SHELL[0]) & (dist <= FAR_SHELL[1])]
    out.append(candidate.background_hu / 1000.0)
    out.append((float(np.median(far)) if far.size else candidate.background_hu) / 1000.0)
    return np.asarray(out)


def test_shell_features_are_those_of_the_per_candidate_grids() -> None:
    rng = np.random.default_rng(2)
    spacing = (0.7, 0.62, 0.62)
    hu = (rng.normal(-700, 300, (60, 70, 70))).astype(np.float32)
    for k in range(40):
        centre = (int(rng.integers(0, 60)), int(rng.integers(0, 70)), int(rng.integers(0, 70)))
        scale = float(rng.choice([1.0, 2.0, 3.5, 5.0]))
        candidate = Candidate(centre, scale, 100.0, 50.0, 0.5, -100.0 - k, -850.0)
        new = shell_features(hu, spacing, candidate)
        assert np.allclose(new, _old_shell_features(hu, spacing, candidate), atol=1e-12)


def test_trees_decide_near_their_thresholds_as_scikit_learn_does() -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    y = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=600) > 0.3).astype(int)
    settings: dict[str, float | int] = {
        "n_estimators": 20,
        "max_depth": 3,
        "learning_rate": 0.1,
        "min_samples_leaf": 5,
        "subsample": 1.0,
    }
    trees = fit_trees(x, y, settings=settings)
    model = GradientBoostingClassifier(
        n_estimators=20, max_depth=3, learning_rate=0.1, min_samples_leaf=5, random_state=0
    ).fit(x, y)
    # Rows at each split's threshold and the float64 numbers just beside it.
    rows = []
    for tree in trees[1:]:
        t = np.asarray(tree).reshape(-1, 4)
        for f, threshold, _, _ in t[t[:, 0] >= 0]:
            for value in (
                threshold,
                np.nextafter(threshold, np.inf),
                np.nextafter(threshold, -np.inf),
                float(np.float32(threshold)),
                threshold + 1e-7,
                threshold - 1e-7,
            ):
                row = x[len(rows) % len(x)].copy()
                row[int(f)] = value
                rows.append(row)
    near = np.asarray(rows)
    expected = model.predict_proba(near)[:, 1]
    assert np.allclose(tree_scores(trees, near), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "field",
    ["cad_candidate_closing_mm", "cad_min_blobness", "cad_rim_hu", "cad_rim_ratio", "cad_floor"],
)
def test_cad_settings_refuse_infinity_and_nan(field: str) -> None:
    from pydantic import ValidationError

    from overread.models.manifest import VolumeSpec

    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValidationError):
            VolumeSpec(postprocess="blob-cad", **{field: bad})


def test_a_closing_radius_beyond_30_mm_is_refused() -> None:
    from pydantic import ValidationError

    from overread.models.manifest import VolumeSpec

    with pytest.raises(ValidationError):
        VolumeSpec(postprocess="blob-cad", cad_candidate_closing_mm=31.0)
