"""``overread evaluate --leave-one-site-out`` on a small phantom cohort (runs in CI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from overread.cli import main

    out = tmp_path_factory.mktemp("loso") / "cohort"
    args = ["phantom", "cxr", "--n", "48", "--out", str(out), "--size", "96", "--seed", "5"]
    assert main([*args, "--quiet", "--workers", "1"]) == 0
    return out


def _loso(run_cli, cohort: Path, *extra: str | Path) -> dict:  # type: ignore[no-untyped-def]
    status, out, err = run_cli(
        "evaluate", "--leave-one-site-out", "--model", "cxr-default", "--data", cohort,
        "--tta", "2", "--resamples", "30", "--json", *extra,
    )  # fmt: skip
    assert status == 0, err
    return json.loads(out)  # exactly one JSON object on stdout


def test_json_reports_every_held_out_site_and_remedy(run_cli, cohort: Path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from overread.inference import Pipeline

    table = tmp_path / "evaluation.md"
    table.write_text("# Evaluation\n\nText before.\n")
    result = _loso(run_cli, cohort, "--label", "Lung Opacity", "--remedies-table", table)
    truth = pd.read_csv(cohort / "truth.csv")
    assert set(result["sites"]) == set(truth["Site"])
    assert {"none", "per_site_calibration", "tta", "all"} <= set(result["remedies"])
    for entry in result["sites"].values():
        assert {"auc", "auc_ci", "ece", "sensitivity"} <= set(entry)
    for entry in result["remedies"].values():
        assert {"auc", "ece", "sensitivity"} <= set(entry)
    assert sum(e["n"] for e in result["sites"].values()) == len(truth)

    # "none" at each held-out site is the package's own probability, unaltered.
    pipeline = Pipeline.from_name("cxr-default", tta_views=1)
    predictions = pipeline.predict([cohort / p for p in truth["Path"]])
    scores = np.array([p.finding("Lung Opacity").probability for p in predictions])
    threshold = predictions[0].finding("Lung Opacity").threshold
    for site, entry in result["sites"].items():
        rows = (truth["Site"] == site).to_numpy()
        y = truth.loc[rows, "Lung Opacity"].to_numpy()
        if 0 < y.sum() < len(y):
            assert entry["auc"] == pytest.approx(roc_auc_score(y, scores[rows]), abs=1e-6)
        if y.sum():
            assert entry["sensitivity"] == pytest.approx(np.mean(scores[rows][y == 1] >= threshold))

    text = table.read_text()
    assert text.startswith("# Evaluation\n\nText before.")
    assert text.count("remedies-table:start") == 1 and "| harmonisation | not run |" in text
    _loso(run_cli, cohort, "--label", "Lung Opacity", "--remedies-table", table)
    assert table.read_text().count("remedies-table:start") == 1  # replaced, not appended


def test_json_is_one_object_of_the_documented_shape(run_cli, cohort: Path) -> None:  # type: ignore[no-untyped-def]
    """``{"sites": {SITE: {"auc", "auc_ci", "ece", "sensitivity"}}, "remedies": {NAME:
    {"auc", "ece", "sensitivity"}}}``; any other key only adds to it."""
    result = _loso(run_cli, cohort, "--label", "Lung Opacity")
    assert isinstance(result["sites"], dict) and isinstance(result["remedies"], dict)
    truth = pd.read_csv(cohort / "truth.csv")
    assert sorted(result["sites"]) == sorted(set(truth["Site"]))
    for entry in result["sites"].values():
        assert isinstance(entry["auc"], float) and 0.0 <= entry["auc"] <= 1.0
        low, high = entry["auc_ci"]
        assert low <= entry["auc"] <= high
        assert 0.0 <= entry["ece"] <= 1.0 and 0.0 <= entry["sensitivity"] <= 1.0
    # With --model nothing is trained: no harmonisation, the other remedies all there.
    assert set(result["remedies"]) == {"none", "per_site_calibration", "tta", "all"}
    for entry in result["remedies"].values():
        assert 0.0 <= entry["auc"] <= 1.0 and 0.0 <= entry["ece"] <= 1.0
        assert 0.0 <= entry["sensitivity"] <= 1.0


@pytest.fixture(scope="module")
def one_site(cohort: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cohort's studies of one site only (truth.csv pointing at its images)."""
    truth = pd.read_csv(cohort / "truth.csv")
    kept = truth[truth["Site"] == truth["Site"].iloc[0]].copy()
    kept["Path"] = [str(cohort / p) for p in kept["Path"]]
    out = tmp_path_factory.mktemp("one-site")
    kept.to_csv(out / "truth.csv", index=False)
    return out


def test_a_cohort_of_one_site_or_without_the_site_column_is_one_error_line(  # type: ignore[no-untyped-def]
    run_cli, cohort: Path, one_site: Path
) -> None:
    for data, extra, message in (
        (one_site, [], "at least two sites"),
        (cohort, ["--site-column", "Hospital"], "no site column 'Hospital'"),
    ):
        status, out, err = run_cli(
            "evaluate", "--leave-one-site-out", "--model", "cxr-default", "--data", data,
            "--json", *extra,
        )  # fmt: skip
        assert status == 2 and out == ""
        assert err.startswith("error:") and message in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1


def test_a_labelled_site_sample_is_left_out_of_the_figures(run_cli, cohort: Path) -> None:  # type: ignore[no-untyped-def]
    result = _loso(run_cli, cohort, "--site-sample", "2", "--min-site-cases", "4")
    truth = pd.read_csv(cohort / "truth.csv")
    assert result["n_studies"] < len(truth)
    assert any("labelled sample and are left out" in note for note in result["notes"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "cxr-default"], "--data"),
        (["--model", "cxr-default", "--train", "x.toml", "--data", "."], "exactly one"),
        (["--train", "x.toml"], "--data"),
        (["--model", "cxr-default", "--data", ".", "--tta", "1"], "--tta"),
        (["--model", "cxr-default", "--data", "nowhere"], "no such cohort"),
        (["--model", "cxr-default", "--data", ".", "--calibration", "magic"], "--calibration"),
    ],
)
def test_bad_invocations_are_one_error_line(run_cli, args: list[str], message: str) -> None:  # type: ignore[no-untyped-def]
    status, _, err = run_cli("evaluate", "--leave-one-site-out", *args)
    assert status == 2
    assert err.startswith("error:") and message in err and "Traceback" not in err


def _bundled_manifest():  # type: ignore[no-untyped-def]
    from overread.models import Registry

    return Registry.from_settings().load("cxr-default").manifest


def test_a_left_right_flip_is_refused_for_chest_packages() -> None:
    from overread.errors import InferenceError
    from overread.inference.uncertainty import SampleSettings
    from overread.models.manifest import TtaSettings, UncertaintySettings

    manifest = _bundled_manifest()

    flipped = manifest.model_copy(
        update={"uncertainty": UncertaintySettings(tta=TtaSettings(horizontal_flip=True))}
    )
    assert "CHEST" in flipped.accepts.body_parts
    with pytest.raises(InferenceError, match="CHEST"):
        SampleSettings.for_package(flipped, tta_views=4)
    # Without views there is nothing to flip; without the flip, views are fine.
    SampleSettings.for_package(flipped, tta_views=1)
    SampleSettings.for_package(manifest, tta_views=4)


@pytest.mark.slow
def test_train_mode_trains_plain_and_harmonised_packages_per_fold(  # type: ignore[no-untyped-def]
    run_cli, cohort: Path, tmp_path
) -> None:
    from overread.models import load_package

    config = (Path(__file__).parents[2] / "configs" / "loso-tiny.toml").read_text()
    config = config.replace("epochs = 8", "epochs = 1")
    (tmp_path / "tiny.toml").write_text(config)
    workdir = tmp_path / "folds"
    status, out, err = run_cli(
        "evaluate", "--leave-one-site-out", "--train", tmp_path / "tiny.toml", "--data", cohort,
        "--workdir", workdir, "--tta", "2", "--resamples", "20", "--label", "Lung Opacity",
        "--json",
    )  # fmt: skip
    assert status == 0, err
    result = json.loads(out)
    assert set(result["remedies"]) == {
        "none", "harmonisation", "per_site_calibration", "tta", "all",
    }  # fmt: skip
    truth = pd.read_csv(cohort / "truth.csv")
    for site in set(truth["Site"]):
        fold = workdir / f"fold-{site}"
        trained = pd.read_csv(fold / "labels.csv")
        assert site not in set(trained["Site"])  # the held-out site is never trained on
        seen = set(truth.loc[truth["Site"] == site, "PatientID"])
        assert not seen & set(trained["PatientID"])  # nor its patients' other studies
        plain = load_package(fold / "plain" / "run" / "package").manifest
        harmonised = load_package(fold / "harmonised" / "run" / "package").manifest
        names = [step["name"] for step in harmonised.input.chain]
        assert "histogram_match" in names and "clahe" in names
        assert "histogram_match" not in [step["name"] for step in plain.input.chain]
        assert harmonised.training["harmonisation"]["intensity"] == "histogram_match"
