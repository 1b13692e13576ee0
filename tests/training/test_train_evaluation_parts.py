"""Metrics, operating points, calibration, pruning and the preprocessing cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from synthetic_task import SmallNet

from overread.training.compression import magnitude_prune, measure, sparsity
from overread.training.data import preprocess_images
from overread.training.metrics import bootstrap_auc_ci, mean_auc, per_class_auc
from overread.training.operating import operating_points, platt_calibration


def _scores(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 2)) < 0.3).astype(np.float32)
    p = np.clip(0.3 + 0.35 * y + rng.normal(0, 0.2, y.shape), 0.001, 0.999)
    return p, y


def test_auc_per_class_mask_and_degenerate_columns() -> None:
    p, y = _scores()
    y[:, 1] = 0  # one class only
    aucs = per_class_auc(p, y)
    assert aucs[1] is None and 0.8 < (aucs[0] or 0) < 1
    assert mean_auc(aucs) == aucs[0]
    # Masking the positives' rows out makes the column degenerate too.
    mask = np.ones_like(y)
    mask[y[:, 0] == 1, 0] = 0
    assert per_class_auc(p, y, mask)[0] is None


def test_bootstrap_ci_brackets_the_estimate() -> None:
    p, y = _scores()
    auc = per_class_auc(p, y)[0]
    [ci, _] = bootstrap_auc_ci(p, y, n_boot=200, seed=1)
    assert ci is not None and ci[0] < (auc or 0) < ci[1]
    # Clustering into few patients widens the interval.
    clusters = [str(i % 20) for i in range(len(p))]
    [wide, _] = bootstrap_auc_ci(p, y, clusters=clusters, n_boot=200, seed=1)
    assert wide is not None


def _card_inputs() -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """Predictions with ties, masked labels, a rare label and patients with several images."""
    rng = np.random.default_rng(20261204)
    n, k = 90, 3
    patients = [f"P{int(i):03d}" for i in rng.integers(0, 40, n)]
    targets = (rng.random((n, k)) < np.array([0.3, 0.5, 0.08])).astype(np.float32)
    noise = rng.normal(0.0, 0.9, (n, k))
    probs = np.round(1 / (1 + np.exp(-(1.6 * targets - 0.8 + noise))), 2).astype(np.float32)
    mask = (rng.random((n, k)) > 0.1).astype(np.float32)
    return probs, targets, mask, patients


def test_model_card_figures_are_those_of_the_earlier_training_metrics() -> None:
    """The AUCs and patient-clustered intervals of the model cards made so far.

    The numbers were computed by the training package's own AUC and bootstrap
    (scikit-learn AUC per resample, one resample at a time) before both moved onto
    the evaluation package's; a card computed now must show the same figures.
    """
    probs, targets, mask, patients = _card_inputs()
    assert per_class_auc(probs, targets, mask) == pytest.approx(
        [0.8741758241758242, 0.8678090575275399, 0.8648648648648648], rel=1e-12
    )
    clustered = bootstrap_auc_ci(probs, targets, clusters=patients, n_boot=300, seed=7)
    expected_clustered = [
        (0.7878288952028546, 0.9282949032949033),
        (0.7805168918918919, 0.9520554519526108),
        (0.7688778659611993, 0.9666687520854188),
    ]
    for got, want in zip(clustered, expected_clustered, strict=True):
        assert got == pytest.approx(want, rel=1e-12)
    by_row = bootstrap_auc_ci(probs, targets, n_boot=200, seed=0)
    expected_by_row = [
        (0.7952804387265335, 0.9332563034732847),
        (0.7897759103641456, 0.9435205853174603),
        (0.7369553114923486, 0.9747126177103029),
    ]
    for got, want in zip(by_row, expected_by_row, strict=True):
        assert got == pytest.approx(want, rel=1e-12)
    # Too few resamples with both classes: no interval rather than a made-up one.
    assert bootstrap_auc_ci(probs, targets, n_boot=5) == [None, None, None]


def test_operating_points_meet_their_targets() -> None:
    p, y = _scores(2000)
    mask = np.ones_like(y)
    points = operating_points(p, y, mask, ["a", "b"])
    pos, neg = p[y[:, 0] == 1, 0], p[y[:, 0] == 0, 0]
    assert (pos >= points["a"]["high sensitivity"]).mean() >= 0.9
    assert (neg < points["a"]["high specificity"]).mean() >= 0.9
    assert (
        points["a"]["high sensitivity"]
        <= points["a"]["balanced"]
        <= points["a"]["high specificity"]
    )


def test_platt_calibration_fixes_overconfidence() -> None:
    rng = np.random.default_rng(0)
    y = (rng.random(3000) < 0.2).astype(np.float32)
    true_logit = np.where(y > 0, 1.0, -1.0) + rng.normal(0, 1.0, y.shape)
    # The Bayes log-odds of y given z = +-1 + N(0, 1) are 2 z + log(0.2 / 0.8); the scores
    # use 3 z and no prior: too confident, so a = 2/3 and b = log(1/4) recover the truth.
    p = 1 / (1 + np.exp(-3 * true_logit))
    cal = platt_calibration(p[:, None], y[:, None], np.ones((3000, 1)), ["x"])
    assert cal["method"] == "platt"
    assert cal["parameters"]["x"]["a"] == pytest.approx(2 / 3, abs=0.08)
    assert cal["parameters"]["x"]["b"] == pytest.approx(np.log(0.25), abs=0.15)


def test_pruning_zeroes_the_requested_fraction() -> None:
    torch.manual_seed(0)
    net = SmallNet()
    magnitude_prune(net, 0.6)
    assert sparsity(net) == pytest.approx(0.6, abs=0.01)
    assert not any("weight_orig" in k for k in net.state_dict())  # made permanent
    cost = measure(net, "pruned", (1, 16, 16), evaluate=lambda _m: 0.5, repeats=1)
    assert cost.nonzero_parameters < cost.parameters and cost.mean_auc == 0.5
    dense = measure(SmallNet(), "dense", (1, 16, 16), repeats=1)
    assert cost.compressed_bytes < dense.compressed_bytes


def test_preprocessing_caches_and_carries_on_past_bad_files(tmp_path: Path) -> None:
    from overread.imaging.transforms import cxr_chain

    good = tmp_path / "a.png"
    PILImage.fromarray((np.arange(40 * 60) % 255).reshape(40, 60).astype(np.uint8)).save(good)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"not an image")
    spec = cxr_chain(32).to_spec()
    cache = tmp_path / "cache"
    images, errors = preprocess_images([good, bad], spec, 32, cache_dir=cache)
    assert images.shape == (2, 1, 32, 32) and images.dtype == np.float16
    assert errors[0] == "" and errors[1].startswith(str(bad))
    assert float(images[0].min()) >= 0 and float(images[0].max()) <= 1
    assert len(list(cache.glob("*.npy"))) == 1
    again, errors2 = preprocess_images([good, bad], spec, 32, cache_dir=cache)
    assert errors2 == errors and np.array_equal(np.asarray(again), images)
