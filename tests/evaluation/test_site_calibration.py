"""Per-site recalibration: the fit improves a shifted site, and small samples fall back."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import expit, logit

from overread.errors import EvaluationError
from overread.evaluation.calibration import calibration_error
from overread.evaluation.site_calibration import (
    MIN_PER_CLASS,
    MIN_SITE_IMAGES,
    apply_per_site,
    find_site,
    fit_site,
    fit_sites,
    map_probabilities,
    merge_sites,
    site_probabilities,
    site_thresholds,
)

LABELS = ["Effusion", "Nodule"]


def shifted_site(
    n: int, seed: int, *, scale: float = 3.0, shift: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Outcomes drawn from true probabilities; the model reports an over-confident,
    shifted version of them (what a new detector does to a model)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-0.5, 1.2, size=(n, len(LABELS)))
    truth = (rng.random((n, len(LABELS))) < expit(z)).astype(np.float64)
    reported = expit(scale * z + shift)
    return truth, reported


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_fit_improves_ece_on_held_out_images_of_the_shifted_site(method: str) -> None:
    y_fit, p_fit = shifted_site(400, seed=1)
    y_new, p_new = shifted_site(4000, seed=2)
    entry = fit_site(y_fit, p_fit, LABELS, method=method)
    assert set(entry.labels) == set(LABELS) and not entry.fallback
    recalibrated = site_probabilities(p_new, entry, LABELS)
    for c, label in enumerate(LABELS):
        before = calibration_error(y_new[:, c], p_new[:, c], n_bins=10).ece
        after = calibration_error(y_new[:, c], recalibrated[:, c], n_bins=10).ece
        assert after < 0.5 * before, (label, before, after)
        # The cross-validated figures recorded in the package say the same.
        fitted = entry.labels[label]
        assert fitted.ece_after is not None and fitted.ece_before is not None
        assert fitted.ece_after < fitted.ece_before
        assert fitted.n == 400 and fitted.n_positive == int(y_fit[:, c].sum())


def test_temperature_keeps_the_ranking_and_recovers_the_scale() -> None:
    y, p = shifted_site(2000, seed=3, scale=2.0, shift=0.0)
    entry = fit_site(y, p, LABELS, method="temperature")
    temperature = entry.labels["Effusion"].temperature
    assert temperature is not None and 1.7 < temperature < 2.3
    q = site_probabilities(p, entry, LABELS)
    assert np.array_equal(np.argsort(q[:, 0]), np.argsort(p[:, 0]))


def test_site_thresholds_are_chosen_on_the_recalibrated_probabilities() -> None:
    y, p = shifted_site(300, seed=4)
    entry = fit_site(y, p, LABELS, global_points={"Effusion": {"triage": 0.8}})
    q = site_probabilities(p, entry, LABELS)
    points = entry.labels["Effusion"].operating_points
    positive = q[:, 0] >= points["high sensitivity"]
    assert positive[y[:, 0] == 1].mean() >= 0.9
    negative = q[:, 0] < points["high specificity"]
    assert negative[y[:, 0] == 0].mean() >= 0.9
    # A package point the site does not fit: the global threshold mapped through the
    # site's map, so the decisions are the global ones.
    mapped = points["triage"]
    assert np.array_equal(q[:, 0] >= mapped - 1e-12, p[:, 0] >= 0.8)
    thresholds = site_thresholds(entry, LABELS, "balanced", {"Nodule": {"balanced": 0.3}})
    assert thresholds[0] == points["balanced"]
    assert thresholds[1] == entry.labels["Nodule"].operating_points["balanced"]


def test_a_site_below_the_minimum_sample_keeps_the_global_calibration() -> None:
    y, p = shifted_site(MIN_SITE_IMAGES - 1, seed=5)
    entry = fit_site(y, p, LABELS)
    assert entry.labels == {}
    assert set(entry.fallback) == set(LABELS)
    assert f"fewer than the minimum {MIN_SITE_IMAGES}" in entry.fallback["Effusion"]
    assert np.array_equal(site_probabilities(p, entry, LABELS), p)
    thresholds = site_thresholds(entry, LABELS, "balanced", {"Effusion": {"balanced": 0.42}})
    assert thresholds.tolist() == [0.42, 0.5]


def test_a_label_with_too_few_positives_falls_back_alone() -> None:
    y, p = shifted_site(200, seed=6)
    y[:, 1] = 0.0
    y[: MIN_PER_CLASS - 1, 1] = 1.0
    y[50:60, 1] = np.nan  # unknown outcomes do not count
    entry = fit_site(y, p, LABELS)
    assert set(entry.labels) == {"Effusion"}
    assert "each class needs at least" in entry.fallback["Nodule"]
    q = site_probabilities(p, entry, LABELS)
    assert np.array_equal(q[:, 1], p[:, 1])
    assert not np.allclose(q[:, 0], p[:, 0])


def test_isotonic_needs_the_larger_sample() -> None:
    y, p = shifted_site(60, seed=7)
    assert set(fit_site(y, p, LABELS, method="temperature").labels) == set(LABELS)
    assert fit_site(y, p, LABELS, method="isotonic").labels == {}


def test_per_site_fit_and_apply_pick_each_image_s_site() -> None:
    y_a, p_a = shifted_site(200, seed=8, scale=3.0)
    y_b, p_b = shifted_site(200, seed=9, scale=0.5, shift=0.0)
    section = fit_sites(
        np.vstack([y_a, y_b]),
        np.vstack([p_a, p_b]),
        ["Northgate General Hospital"] * 200 + ["RMC-CR02"] * 200,
        LABELS,
    )
    t_a = section.sites["Northgate General Hospital"].labels["Effusion"].temperature
    t_b = section.sites["RMC-CR02"].labels["Effusion"].temperature
    assert t_a is not None and t_b is not None and t_a > 1.5 and t_b < 1.0
    probe = np.array([[0.9, 0.9], [0.9, 0.9], [0.9, 0.9]])
    out, used = apply_per_site(
        probe, ["NORTHGATE  general hospital ", "rmc-cr02", "Elsewhere"], section, LABELS
    )
    assert used == ["Northgate General Hospital", "RMC-CR02", None]
    assert out[0, 0] < 0.9 < out[1, 0]
    assert out[2].tolist() == [0.9, 0.9]
    assert find_site(section, "") is None and find_site(None, "RMC-CR02") is None
    # Refitting one site replaces it and keeps the other.
    again = fit_sites(y_b, p_b, ["rmc-cr02"] * 200, LABELS)
    merged = merge_sites(section, again)
    assert sorted(merged.sites) == ["Northgate General Hospital", "rmc-cr02"]


def test_map_probabilities_matches_the_formula() -> None:
    y, p = shifted_site(100, seed=10)
    entry = fit_site(y, p, LABELS)
    label_map = entry.labels["Effusion"]
    assert label_map.temperature is not None
    expected = expit(logit(0.7) / label_map.temperature)
    assert map_probabilities(0.7, label_map) == pytest.approx(expected)


def test_bad_input_is_refused() -> None:
    y, p = shifted_site(50, seed=11)
    with pytest.raises(EvaluationError, match="temperature or isotonic"):
        fit_site(y, p, LABELS, method="platt")
    with pytest.raises(EvaluationError, match="shape"):
        fit_site(y, p[:, :1], LABELS)
    with pytest.raises(EvaluationError, match=r"\[0, 1\]"):
        fit_site(y, p * 2, LABELS)


def test_a_map_that_does_not_help_on_the_site_s_sample_is_not_used() -> None:
    # A site the package is already calibrated for: refitting only adds noise.
    y, p = shifted_site(60, seed=12, scale=1.0, shift=0.0)
    entry = fit_site(y, p, LABELS)
    assert entry.labels == {}
    assert "recalibration did not help" in entry.fallback["Effusion"]


def test_cross_validation_keeps_a_patient_s_images_together() -> None:
    y, p = shifted_site(300, seed=13)
    patients = np.repeat(np.arange(100), 3)
    grouped = fit_site(y, p, LABELS, groups=patients)
    assert set(grouped.labels) == set(LABELS)
    # The map itself does not depend on the folds; only the cross-validated figure does.
    plain = fit_site(y, p, LABELS)
    assert grouped.labels["Effusion"].temperature == plain.labels["Effusion"].temperature
    with pytest.raises(EvaluationError, match="one group per image"):
        fit_site(y, p, LABELS, groups=patients[:10])


def test_a_strong_label_gets_ordered_site_points() -> None:
    from overread.evaluation import threshold_for_sensitivity, threshold_for_specificity

    # Outcomes nearly decided by z, reported under-confident and shifted: the site's
    # balanced point already keeps 90 % sensitivity and specificity.
    rng = np.random.default_rng(1)
    z = rng.normal(-0.5, 1.2, size=(300, len(LABELS)))
    y = (rng.random(z.shape) < expit(6 * z)).astype(np.float64)
    p = expit(0.8 * z + 1.0)
    entry = fit_site(y, p, LABELS)
    q = site_probabilities(p, entry, LABELS)[:, 0]
    points = entry.labels["Effusion"].operating_points
    assert threshold_for_sensitivity(y[:, 0], q, 0.9) > points["balanced"]  # unordered
    assert threshold_for_specificity(y[:, 0], q, 0.9) < points["balanced"]
    assert points["high sensitivity"] == points["balanced"] == points["high specificity"]
