"""Revision 3 of the nodule CAD: shell features, a tree-ensemble score, candidates in
the closed lung, and the manifest that carries them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from overread.models.blob_cad import (
    FEATURES_V3,
    Candidate,
    candidate_features_v3,
    search_candidates,
    shell_features,
    tree_scores,
)
from overread.models.ct_cad import NAME, default_trees, write_cad_package
from overread.models.manifest import Manifest
from overread.models.package import load_package
from overread.training.ct_cad import fit_trees

SPACING = (1.5, 1.0, 1.0)
SHAPE = (40, 80, 80)


def _grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    z, y, x = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(SHAPE, SPACING, strict=True)], indexing="ij"
    )
    return z, y, x


def _segment(points: np.ndarray, a: np.ndarray, b: np.ndarray, radius: float) -> np.ndarray:
    ab = b - a
    t = np.clip(((points - a) @ ab) / float(ab @ ab), 0.0, 1.0)
    closest = a + t[..., None] * ab
    return np.linalg.norm(points - closest, axis=-1) <= radius


def _lung_with(kind: str) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Lung (-850 HU, noise) with a 4 mm-radius sphere or a vessel branch point
    (three 2.5 mm-radius tubes meeting) at the same place, +40 HU."""
    z, y, x = _grid()
    points = np.stack([z, y, x], axis=-1)
    centre = np.array([30.0, 40.0, 40.0])
    hu = np.full(SHAPE, -850.0)
    if kind == "sphere":
        shape = np.linalg.norm(points - centre, axis=-1) <= 4.0
    else:
        shape = np.zeros(SHAPE, dtype=bool)
        for direction in ((0.0, -1.0, 0.0), (0.3, 0.6, 0.75), (-0.3, 0.6, -0.75)):
            d = np.asarray(direction) / np.linalg.norm(direction)
            shape |= _segment(points, centre, centre + 24.0 * d, 2.5)
    hu[shape] = 40.0
    hu += np.random.default_rng(3).normal(0, 15, SHAPE)
    voxel = (centre / np.asarray(SPACING)).round()
    return hu.astype(np.float32), (float(voxel[0]), float(voxel[1]), float(voxel[2]))


def _candidate_at(hu: np.ndarray, voxel: tuple[float, float, float]) -> Candidate:
    found = search_candidates(hu, SPACING, np.ones(SHAPE, dtype=bool), max_candidates=1000)
    return min(
        found.candidates,
        key=lambda c: float(np.linalg.norm((np.asarray(c.centre) - voxel) * SPACING)),
    )


@pytest.fixture(scope="module")
def pair() -> dict[str, tuple[np.ndarray, Candidate]]:
    out = {}
    for kind in ("sphere", "branch"):
        hu, voxel = _lung_with(kind)
        candidate = _candidate_at(hu, voxel)
        assert np.linalg.norm((np.asarray(candidate.centre) - voxel) * SPACING) <= 4.0
        out[kind] = (hu, candidate)
    return out


def test_a_branch_point_is_bright_in_its_outer_shells_a_sphere_is_not(
    pair: dict[str, tuple[np.ndarray, Candidate]],
) -> None:
    sphere = shell_features(pair["sphere"][0], SPACING, pair["sphere"][1])
    branch = shell_features(pair["branch"][0], SPACING, pair["branch"][1])
    # core fill, shells at 1, 1.5, 2 radii, then the brightest side of the outer two
    assert sphere[0] > 0.8
    assert sphere[2] < 0.1 and sphere[3] < 0.05
    assert branch[4] > sphere[4] + 0.15 and branch[5] > sphere[5] + 0.05


def test_the_bundled_trees_score_a_branch_point_under_a_sphere_of_its_size(
    pair: dict[str, tuple[np.ndarray, Candidate]],
) -> None:
    trees = default_trees()
    scores = {
        kind: float(tree_scores(trees, candidate_features_v3(hu, SPACING, c))[0])
        for kind, (hu, c) in pair.items()
    }
    assert scores["sphere"] > 2 * scores["branch"], scores


def test_tree_scores_follow_the_splits_and_sum_the_leaves() -> None:
    # intercept -1; a stump on feature 1 at 0.5 (+2 left, -2 right)
    trees = (
        (-1.0, -1.0, -1.0, -1.0),
        (1.0, 0.5, 1.0, 2.0, -1.0, 2.0, -1.0, -1.0, -1.0, -2.0, -1, -1),
    )
    x = np.array([[9.0, 0.4], [9.0, 0.5], [9.0, 0.6]])
    expected = 1 / (1 + np.exp(-np.array([1.0, 1.0, -3.0])))
    assert np.allclose(tree_scores(trees, x), expected)


def test_fitted_trees_score_as_scikit_learn_does() -> None:
    from sklearn.ensemble import GradientBoostingClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 4))
    y = (x[:, 0] + x[:, 1] ** 2 + rng.normal(size=2000) > 2).astype(int)
    settings: dict[str, float | int] = {
        "n_estimators": 30,
        "max_depth": 3,
        "learning_rate": 0.1,
        "min_samples_leaf": 10,
        "subsample": 0.5,
    }
    trees = fit_trees(x, y, settings=settings)
    model = GradientBoostingClassifier(
        n_estimators=30,
        max_depth=3,
        learning_rate=0.1,
        min_samples_leaf=10,
        subsample=0.5,
        random_state=0,
    ).fit(x, y)
    assert np.allclose(tree_scores(trees, x), model.predict_proba(x)[:, 1], atol=1e-5)


def test_a_nodule_the_lung_threshold_leaves_out_is_a_candidate_in_the_closed_lung() -> None:
    """A solid nodule joined by a vessel to the mediastinum is no hole of the lung mask."""
    z, y, x = _grid()
    hu = np.full(SHAPE, -850.0)
    wall = x < 12.0
    hu[wall] = 40.0
    nodule = (z - 30.0) ** 2 + (y - 40.0) ** 2 + (x - 40.0) ** 2 <= 6.0**2
    vessel = ((z - 30.0) ** 2 + (y - 40.0) ** 2 <= 1.5**2) & (x < 40.0)
    hu[nodule | vessel] = 40.0
    hu = (hu + np.random.default_rng(4).normal(0, 15, SHAPE)).astype(np.float32)
    lung = hu < -500  # the threshold lung: the nodule is outside it
    centre = np.array([20.0, 40.0, 40.0])

    def near(closing: float) -> bool:
        found = search_candidates(hu, SPACING, lung, closing_mm=closing)
        return any(
            np.linalg.norm((np.asarray(c.centre) - centre) * SPACING) <= 6.0
            for c in found.candidates
        )

    assert not near(0.0)
    assert near(10.0)


def test_revision_3_manifests_carry_the_trees_in_their_hash(tmp_path: Path) -> None:
    package = load_package(write_cad_package(tmp_path / "pkg"))
    volume = package.manifest.volume
    assert volume is not None and volume.cad_revision == 3
    assert volume.cad_trees == default_trees() and volume.cad_weights == ()
    assert volume.cad_candidate_closing_mm == 10.0 and volume.cad_max_candidates == 1000
    assert package.manifest.training["features"] == list(FEATURES_V3)
    data = json.loads(package.manifest.to_json())
    data.pop("signature")
    base = Manifest.model_validate(data).content_sha256()
    changed = json.loads(json.dumps(data))
    changed["volume"]["cad_trees"][1][1] += 0.5
    assert Manifest.model_validate(changed).content_sha256() != base
    changed = json.loads(json.dumps(data))
    changed["volume"]["cad_candidate_closing_mm"] = 8.0
    assert Manifest.model_validate(changed).content_sha256() != base
    bad = json.loads(json.dumps(data))
    bad["volume"]["cad_trees"] = []
    with pytest.raises(ValueError, match="cad_trees"):
        Manifest.model_validate(bad)
    bad = json.loads(json.dumps(data))
    bad["volume"]["cad_trees"] = [[float(len(FEATURES_V3)), 0.0, 1.0, 2.0] + [-1, 0, -1, -1] * 2]
    with pytest.raises(ValueError, match="feature 15 is not"):
        Manifest.model_validate(bad)
    # Revision 2 packages are still written and read with their logistic weights.
    old = load_package(write_cad_package(tmp_path / "old", revision=2))
    assert old.manifest.volume is not None and old.manifest.volume.cad_revision == 2
    assert "cad_trees" not in json.loads(old.manifest.canonical_bytes())["volume"]


def test_the_bundled_cad_package_is_revision_3() -> None:
    from overread.models import Registry

    package = Registry("unused-registry-root").load(NAME)
    volume = package.manifest.volume
    assert volume is not None and volume.cad_revision == 3
    assert volume.cad_trees == default_trees()


def test_a_part_solid_core_with_ground_glass_around_it_takes_the_lung_beyond() -> None:
    """The core's near background is the ground glass: revision 3's rim level uses the
    lung beyond it, so the mask is the whole nodule, not the core."""
    from overread.models.blob_cad import fwhm_mask

    spacing = (2.0, 1.0, 1.0)
    shape = (24, 48, 48)
    z, y, x = np.meshgrid(
        *[np.arange(n) * s for n, s in zip(shape, spacing, strict=True)], indexing="ij"
    )
    dist = np.sqrt((z - 24) ** 2 + (y - 24) ** 2 + (x - 24) ** 2)
    rng = np.random.default_rng(5)
    hu = np.full(shape, -850.0)
    whole = dist <= 7.0
    hu[whole] = -600.0
    hu[dist <= 3.0] = 30.0
    hu = (hu + rng.normal(0, 15, shape)).astype(np.float32)
    # The core's candidate: radius 2 mm, its 1.5-2.5 radii shell all ground glass.
    candidate = Candidate((12, 24, 24), 2.0 / np.sqrt(3.0), 300.0, 200.0, 0.9, 30.0, -600.0)

    def dice(far: bool) -> float:
        box, mask = fwhm_mask(hu, spacing, candidate, rim_ratio=3.0, far_background=far)
        truth = whole[box]
        return float(2 * (mask & truth).sum() / (mask.sum() + whole.sum()))

    assert dice(False) < 0.5
    assert dice(True) > 0.8
