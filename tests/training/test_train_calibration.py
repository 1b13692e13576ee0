"""Calibration error, and operating points chosen on calibrated probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from overread.training.metrics import expected_calibration_error
from overread.training.operating import (
    apply_platt,
    operating_point_performance,
    operating_points,
    platt_calibration,
)


def _overconfident(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A rare label (8 %) scored like a ``pos_weight``-trained net: far too high."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.08).astype(np.float32)
    z = np.where(y > 0, 1.0, -1.0) + rng.normal(0, 1.0, n)
    p = 1 / (1 + np.exp(-(3 * z + 2.5)))
    return p[:, None], y[:, None]


def test_ece_is_small_for_calibrated_and_large_for_overconfident_scores() -> None:
    rng = np.random.default_rng(0)
    p = rng.random((20000, 1))
    y = (rng.random((20000, 1)) < p).astype(np.float32)
    [good] = expected_calibration_error(p, y)
    assert good is not None and good < 0.02
    bad_p, bad_y = _overconfident(5000, 1)
    [bad] = expected_calibration_error(bad_p, bad_y)
    assert bad is not None and bad > 0.2
    # Masked rows do not count; a column with no rows has no ECE.
    assert expected_calibration_error(p, y, np.zeros_like(y)) == [None]


def test_platt_lowers_ece_on_new_data() -> None:
    val_p, val_y = _overconfident(5000, 2)
    test_p, test_y = _overconfident(5000, 3)
    cal = platt_calibration(val_p, val_y, np.ones_like(val_y), ["x"])
    [before] = expected_calibration_error(test_p, test_y)
    [after] = expected_calibration_error(apply_platt(test_p, cal, ["x"]), test_y)
    assert before is not None and after is not None
    assert after < 0.03 < before


def test_thresholds_chosen_on_calibrated_probabilities_work_as_served() -> None:
    val_p, val_y = _overconfident(5000, 4)
    test_p, test_y = _overconfident(5000, 5)
    mask = np.ones_like(val_y)
    cal = platt_calibration(val_p, val_y, mask, ["x"])
    served = apply_platt(test_p, cal, ["x"])  # what the pipeline thresholds
    right = operating_points(apply_platt(val_p, cal, ["x"]), val_y, mask, ["x"])
    perf = operating_point_performance(served, test_y, np.ones_like(test_y), right, ["x"])
    balanced = perf["x"]["balanced"]
    assert balanced["sensitivity"] == pytest.approx(0.84, abs=0.08)
    assert balanced["specificity"] == pytest.approx(0.84, abs=0.08)
    assert perf["x"]["high sensitivity"]["sensitivity"] >= 0.85  # type: ignore[operator]
    assert perf["x"]["high specificity"]["specificity"] >= 0.85  # type: ignore[operator]
    # Thresholds chosen on the raw scores but applied to calibrated ones (the old bug)
    # sit above almost every calibrated probability.
    wrong = operating_points(val_p, val_y, mask, ["x"])
    stale = operating_point_performance(served, test_y, np.ones_like(test_y), wrong, ["x"])
    assert stale["x"]["balanced"]["sensitivity"] < 0.3  # type: ignore[operator]


def test_a_prior_shift_moves_probabilities_but_keeps_every_call() -> None:
    from overread.training.operating import (
        apply_platt,
        operating_points,
        platt_calibration,
        prior_shift,
    )

    rng = np.random.default_rng(0)
    labels = ["Fracture", "Edema"]
    targets = (rng.random((400, 2)) < [0.12, 0.3]).astype(np.float32)
    probs = np.clip(0.25 * targets + rng.random((400, 2)) * 0.75, 0.01, 0.99)
    mask = np.ones_like(targets)
    calibration = platt_calibration(probs, targets, mask, labels)
    points = operating_points(apply_platt(probs, calibration, labels), targets, mask, labels)
    shifted, moved = prior_shift(calibration, points, {"Fracture": (0.12, 0.05)})
    before, after = apply_platt(probs, calibration, labels), apply_platt(probs, shifted, labels)
    # Fewer positives in the population: the enriched label's probabilities fall ...
    assert after[:, 0].mean() < before[:, 0].mean() - 0.02
    assert np.array_equal(after[:, 1], before[:, 1]) and moved["Edema"] == points["Edema"]
    # ... by the ratio of prior odds on the logit scale ...
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    delta = logit(0.05) - logit(0.12)
    assert np.allclose(logit(after[:, 0]) - logit(before[:, 0]), delta, atol=1e-6)
    # ... and every image gets the same call at every operating point (thresholds are
    # validation scores, so the image that defines one is left out: a tie at float precision).
    for name, threshold in points["Fracture"].items():
        assert moved["Fracture"][name] < threshold
        clear = np.abs(before[:, 0] - threshold) > 1e-9
        assert clear.sum() >= len(clear) - 2
        assert np.array_equal(
            (before[:, 0] >= threshold)[clear], (after[:, 0] >= moved["Fracture"][name])[clear]
        )
    with pytest.raises(ValueError, match="must lie in"):
        prior_shift(calibration, points, {"Fracture": (0.0, 0.05)})


def test_an_enriched_phantom_cohort_shifts_only_its_enriched_labels() -> None:
    from overread.training.config import load_config
    from overread.training.run import enrichment_shifts

    labels = ["Fracture", "Edema", "Lung Lesion"]
    enriched = load_config(preset="cxr-phantom-xl")
    assert enrichment_shifts(enriched, labels) == {"Fracture": (0.12, 0.05)}
    assert enrichment_shifts(enriched, ["Edema"]) == {}
    assert enrichment_shifts(load_config(preset="cxr-phantom-fine"), labels) == {}


def test_the_served_decisions_keep_their_side_of_each_threshold_after_a_shift() -> None:
    from overread.inference.postprocess import decide
    from overread.training.operating import apply_platt, prior_shift

    rng = np.random.default_rng(1)
    calibration = {"method": "platt", "parameters": {"Fracture": {"a": 1.2, "b": -1.0}}}
    points = {"Fracture": {"balanced": 0.2}}
    shifted, moved = prior_shift(calibration, points, {"Fracture": (0.12, 0.05)})
    raw = rng.random((500, 1))
    before = apply_platt(raw, calibration, ["Fracture"])
    after = apply_platt(raw, shifted, ["Fracture"])
    clear = np.abs(before[:, 0] - 0.2) > 1e-9
    pos_before, _, _ = decide(before, np.array([0.2]), 0.8)
    pos_after, _, _ = decide(after, np.array([moved["Fracture"]["balanced"]]), 0.8)
    assert np.array_equal(pos_before[clear], pos_after[clear])


def test_a_prior_shift_needs_platt_calibration() -> None:
    from overread.training.operating import prior_shift

    with pytest.raises(ValueError, match="needs Platt calibration"):
        prior_shift({"method": "temperature", "parameters": {}}, {}, {"Edema": (0.2, 0.1)})


def test_a_label_generated_absent_is_not_shifted() -> None:
    from overread.training.config import load_config
    from overread.training.run import enrichment_shifts

    absent = load_config(
        preset="cxr-phantom-xl", overrides={"data.phantom.prevalence": {"Fracture": 0.0}}
    )
    assert enrichment_shifts(absent, ["Fracture"]) == {}


def test_prior_shift_command_writes_a_new_version(run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json
    import math

    from overread.models import load_package
    from overread.models.registry import bundled_dir

    # The bundled default already records a Fracture shift from its training run,
    # so this shifts another label.
    source = load_package(bundled_dir() / "cxr-default")
    assert "Edema" not in (source.manifest.training or {}).get("prior_shift", {})
    out = tmp_path / "shifted"
    status, stdout, err = run_cli(
        "models", "prior-shift", "--model", str(source.path), "--prevalence",
        "Edema=0.05:0.12", "--out", str(out), "--version", "9.9.9", "--json",
    )  # fmt: skip
    assert status == 0, err
    assert json.loads(stdout)["version"] == "9.9.9"
    shifted = load_package(out)  # verifies
    delta = math.log(0.12 / 0.88) - math.log(0.05 / 0.95)
    b0 = source.manifest.calibration.parameters["Edema"]["b"]
    assert shifted.manifest.calibration.parameters["Edema"]["b"] == pytest.approx(b0 + delta)
    assert (
        shifted.manifest.calibration.parameters["Fracture"]
        == (source.manifest.calibration.parameters["Fracture"])
    )
    t0 = source.manifest.operating_points["Edema"]["balanced"]
    t1 = shifted.manifest.operating_points["Edema"]["balanced"]
    assert math.log(t1 / (1 - t1)) - math.log(t0 / (1 - t0)) == pytest.approx(delta)
    assert shifted.manifest.training["prior_shift"]["Edema"]["served"] == 0.12
    assert (
        shifted.manifest.training["prior_shift"]["Fracture"]
        == (source.manifest.training["prior_shift"]["Fracture"])
    )
    assert "## Prior shift" in (out / "MODEL_CARD.md").read_text()
    assert (out / "MODEL_CARD.md").read_text().startswith("# Model card: cxr-default 9.9.9\n")
    status, _, err = run_cli(
        "models", "prior-shift", "--model", str(out), "--prevalence", "Edema=0.12:0.05",
        "--out", str(tmp_path / "twice"), "--version", "9.9.10",
    )  # fmt: skip
    assert status != 0 and "'Edema' is already shifted" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "twice").exists()
    for bad, says in (
        ("Edema=0.12", "expected LABEL=FITTED:SERVED"),
        ("Edem=0.12:0.05", "'Edem' is not a label"),
        ("Edema=0.12:1.5", "must lie in (0, 1)"),
        ("Fracture=0.12:0.05", "'Fracture' is already shifted"),
    ):
        status, _, err = run_cli(
            "models", "prior-shift", "--model", str(source.path), "--prevalence", bad,
            "--out", str(tmp_path / "bad"), "--version", "9.9.8",
        )  # fmt: skip
        assert status != 0 and err.strip().startswith("error:") and says in err, err
        assert len(err.strip().splitlines()) == 1
        assert not (tmp_path / "bad").exists()


def test_the_bundled_default_has_ordered_named_points() -> None:
    from overread.models import load_package
    from overread.models.registry import bundled_dir

    package = load_package(bundled_dir() / "cxr-default")
    for label, points in package.manifest.operating_points.items():
        assert points["high sensitivity"] <= points["balanced"] <= points["high specificity"], label


def test_training_points_are_ordered_on_a_strong_label() -> None:
    from overread.training.operating import operating_points

    rng = np.random.default_rng(0)
    y = (rng.random((500, 2)) < 0.3).astype(np.float32)
    # Label 0 strong (balanced already keeps 90 % of both), label 1 weak.
    strength = np.array([6.0, 1.0])
    probs = 1 / (1 + np.exp(-(rng.normal(size=(500, 2)) + strength * (y - 0.5))))
    points = operating_points(probs, y, np.ones_like(y), ["strong", "weak"])
    from overread.evaluation import threshold_for_sensitivity

    assert threshold_for_sensitivity(y[:, 0], probs[:, 0], 0.9) > points["strong"]["balanced"]
    for label in ("strong", "weak"):
        p = points[label]
        assert p["high sensitivity"] <= p["balanced"] <= p["high specificity"], label
    assert points["strong"]["high sensitivity"] == points["strong"]["balanced"]
    assert points["weak"]["high sensitivity"] < points["weak"]["balanced"]


def test_order_points_command_writes_a_new_version(run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from overread.models import load_package
    from overread.models.package import derive_package
    from overread.models.registry import bundled_dir

    bundled = load_package(bundled_dir() / "cxr-default")
    status, _, err = run_cli(
        "models", "order-points", "--model", str(bundled.path), "--out", str(tmp_path / "same"),
    )  # fmt: skip
    assert status != 0 and err.startswith("error:") and "already ordered" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "same").exists()
    only_balanced = derive_package(
        bundled,
        tmp_path / "balanced-only",
        version="0.0.9",
        operating_points={
            k: {"balanced": v["balanced"]} for k, v in bundled.manifest.operating_points.items()
        },
    )
    status, _, err = run_cli(
        "models", "order-points", "--model", str(only_balanced.path), "--out", str(tmp_path / "x"),
    )  # fmt: skip
    assert status != 0 and "has no balanced point with a high sensitivity" in err, err

    points = {k: dict(v) for k, v in bundled.manifest.operating_points.items()}
    balanced = points["Edema"]["balanced"]
    points["Edema"]["high sensitivity"] = balanced + 0.1  # above balanced: unordered
    points["Edema"]["high specificity"] = balanced - 0.1  # below balanced: unordered
    metrics = json.loads(json.dumps(bundled.manifest.metrics))
    for split in ("test", "external"):
        recorded = metrics["evaluations"][split]["operating_points"]["Edema"]
        for name, shift in (("high sensitivity", 0.1), ("high specificity", -0.1)):
            recorded[name] = {"threshold": balanced + shift, "sensitivity": 0.0}
    # The test split's figures for high sensitivity, measured at some other threshold.
    metrics["evaluations"]["test"]["operating_points"]["Edema"]["high sensitivity"] = {
        "threshold": 0.9,
        "sensitivity": 0.0,
    }
    source = derive_package(
        bundled, tmp_path / "unordered", version="0.0.1", operating_points=points, metrics=metrics
    )
    out = tmp_path / "ordered"
    status, stdout, err = run_cli(
        "models", "order-points", "--model", str(source.path), "--out", str(out),
        "--version", "0.0.2", "--json",
    )  # fmt: skip
    assert status == 0, err
    summary = json.loads(stdout)
    assert summary["version"] == "0.0.2"
    assert set(summary["moved"]) == {"Edema"}
    assert summary["moved"]["Edema"]["high sensitivity"] == {"from": balanced + 0.1, "to": balanced}
    ordered = load_package(out)  # verifies
    assert ordered.manifest.operating_points["Edema"] == dict.fromkeys(
        ("balanced", "high sensitivity", "high specificity"), balanced
    )
    for label in set(points) - {"Edema"}:
        assert ordered.manifest.operating_points[label] == points[label]
    assert ordered.manifest.calibration == source.manifest.calibration
    record = ordered.manifest.training["points_ordered"]
    assert set(record) == {"1.5.3", "0.0.2"}  # the bundled reissue's record is kept
    assert record["0.0.2"] == {"from_version": "0.0.1", "moved": summary["moved"]}
    # Measured at this package's thresholds: the moved point's figures are balanced's.
    external = ordered.manifest.metrics["evaluations"]["external"]["operating_points"]["Edema"]
    assert external["high sensitivity"] == external["balanced"] == external["high specificity"]
    # The test split's "high sensitivity" figures were measured at another threshold
    # (set above): dropped rather than shown as balanced's.
    recorded = ordered.manifest.metrics["evaluations"]["test"]["operating_points"]["Edema"]
    assert "high sensitivity" not in recorded
    assert recorded["high specificity"] == recorded["balanced"]
    assert (out / "MODEL_CARD.md").read_text().startswith("# Model card: cxr-default 0.0.2\n")
    assert (
        "## Named operating points ordered (0.0.1 -> 0.0.2)" in (out / "MODEL_CARD.md").read_text()
    )
    status, _, err = run_cli(
        "models", "order-points", "--model", str(source.path), "--out", str(out),
    )  # fmt: skip
    assert status != 0 and "already exists" in err and len(err.strip().splitlines()) == 1


def test_order_points_orders_a_site_recalibration_too(run_cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import json

    from overread.models import load_package
    from overread.models.manifest import (
        SiteCalibrationEntry,
        SiteCalibrationSection,
        SiteLabelMap,
    )
    from overread.models.package import derive_package
    from overread.models.registry import bundled_dir

    bundled = load_package(bundled_dir() / "cxr-default")
    site_points = {"balanced": 0.4, "high sensitivity": 0.6, "high specificity": 0.7}
    section = SiteCalibrationSection(
        min_images=30,
        min_per_class=5,
        sites={
            "NORTH": SiteCalibrationEntry(
                method="temperature",
                labels={
                    "Edema": SiteLabelMap(
                        temperature=1.2, operating_points=site_points, n=40, n_positive=10
                    )
                },
                n=40,
            )
        },
    )
    source = derive_package(bundled, tmp_path / "site", version="0.0.3", site_calibration=section)
    out = tmp_path / "ordered"
    status, stdout, err = run_cli(
        "models", "order-points", "--model", str(source.path), "--out", str(out), "--json",
    )  # fmt: skip
    assert status == 0, err
    summary = json.loads(stdout)
    assert summary["version"] == "0.0.3+ordered" and summary["moved"] == {}
    assert summary["moved_sites"] == {
        "NORTH": {"Edema": {"high sensitivity": {"from": 0.6, "to": 0.4}}}
    }
    ordered = load_package(out)
    assert ordered.manifest.site_calibration is not None
    edema = ordered.manifest.site_calibration.sites["NORTH"].labels["Edema"]
    assert edema.operating_points == {**site_points, "high sensitivity": 0.4}
    assert edema.temperature == 1.2
    assert ordered.manifest.operating_points == bundled.manifest.operating_points
    assert (
        "| Edema (site NORTH) | high sensitivity | 0.6000 | 0.4000 |"
        in (out / "MODEL_CARD.md").read_text()
    )
