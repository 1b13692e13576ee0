"""The CAD's operating points end to end: chosen, written, carried by the bundled package,
asked for by ``predict``; and what the commands refuse before any work."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.inference.ct_series import SHAPE, SPACING, Nodule, chest_volume, write_series

from overread.cli import main
from overread.errors import ConfigError, ModelPackageError
from overread.imaging.series import load_series
from overread.inference.ct_evaluation import _predictor, evaluate_ct_package
from overread.inference.volume import VolumePipeline
from overread.models import ct_cad
from overread.models.package import load_package, resign_package, verify_package
from overread.results import Decision, FindingResult
from overread.training.ct_cad import replace_section, write_operating_points
from overread.training.ct_eval import evaluate_cohort, figures_at, threshold_for_fp

BUNDLED = Path(__file__).resolve().parents[2] / "src/overread/models/bundled/ct-nodule-cad"
NODULE_MM = (24.0, 38.0, 50.0)


@pytest.fixture(scope="module")
def series_paths(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    volume = chest_volume(SHAPE, SPACING, [Nodule(NODULE_MM, 6.0, 30.0)])
    return write_series(tmp_path_factory.mktemp("ct") / "series", volume, SPACING)


def _copy_with(tmp_path: Path, name: str, **points: float) -> Path:
    package = tmp_path / name
    shutil.copytree(BUNDLED, package)
    current = load_package(BUNDLED).manifest.operating_points
    resign_package(package, operating_points={**current, "nodule": {**current["nodule"], **points}})
    return package


# 1. predict --operating-point reaches the CAD.


def test_predict_runs_the_cad_at_the_named_point(
    series_paths: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(series_paths[0].parents[1] / "registry"))
    folder = str(series_paths[0].parent)
    argv = ["predict", "--model", "ct-nodule-cad", "--json", folder]
    assert main([*argv, "--operating-point", "all candidates"]) in (0, None)
    [every] = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert main(argv) in (0, None)
    [default] = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    assert every["findings"][0]["operating_point"] == "all candidates"
    assert default["findings"][0]["operating_point"] == "balanced"
    floor = load_package(BUNDLED).manifest.operating_points["nodule"]["all candidates"]
    assert every["findings"][0]["threshold"] == pytest.approx(floor)
    assert len(every["regions"]) > len(default["regions"])  # the weak candidates too


def test_an_unknown_point_is_one_error_line_before_any_series_is_read(
    series_paths: list[Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("a series was analysed")

    monkeypatch.setattr(VolumePipeline, "run_volume", never)
    argv = ["predict", "--model", "ct-nodule-cad", str(series_paths[0].parent)]
    assert main([*argv, "--operating-point", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "'nope'" in err[0]
    # The service's interface takes the point too.
    pipeline = VolumePipeline(load_package(BUNDLED))
    with pytest.raises(ModelPackageError, match="no operating point 'nope'"):
        pipeline.predict([str(p) for p in series_paths], operating_point="nope")


# 2. The pipeline at a point reproduces the figures read off the FROC.


def test_a_threshold_equal_to_a_score_keeps_that_candidate(
    series_paths: list[Path], tmp_path: Path
) -> None:
    volume = load_series(series_paths).volumes[0]
    every = VolumePipeline(load_package(BUNDLED)).run_volume(
        volume, operating_point="all candidates"
    )
    scores = [r.score for r in every.prediction.regions]
    # A score float32 rounds up: compared in float32 the candidate would be dropped.
    [score, *_] = [s for s in scores if float(np.float32(s)) > s] or pytest.skip("none rounds up")
    pipeline = VolumePipeline(load_package(_copy_with(tmp_path, "cad", balanced=score)))
    kept = [r.score for r in pipeline.run_volume(volume).prediction.regions]
    assert kept == [s for s in scores if s >= score]


def test_the_pipeline_at_a_fitted_point_gives_the_froc_figures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    cohort = tmp_path / "cohort"
    argv = ["phantom", "ct", "--n", "2", "--seed", "3", "--size", "64", "--out", str(cohort)]
    assert main([*argv, "-q"]) == 0
    capsys.readouterr()
    metrics = evaluate_ct_package(str(BUNDLED), cohort, resamples=20)
    detection = metrics["detection"]
    assert len(detection["curve"]["score"]) > 2
    for i, rate in enumerate((0.5, 2.0)):
        threshold = threshold_for_fp(detection, rate, floor=metrics["score_floor"])
        assert threshold is not None and threshold not in detection["curve"]["score"]
        pipeline = VolumePipeline(load_package(_copy_with(tmp_path, f"p{i}", balanced=threshold)))
        run = evaluate_cohort(cohort, _predictor(pipeline, "balanced"))["detection"]
        expected = figures_at(detection, threshold)
        assert run.get("curve", {}).get("fp_per_scan", [0.0])[-1] == expected["fp_per_scan"]
        assert run.get("curve", {}).get("sensitivity", [0.0])[-1] == expected["sensitivity"]


# 3, 4. One place in code for the points; a new version for them.


def test_the_bundled_package_is_what_the_code_writes(tmp_path: Path) -> None:
    bundled = load_package(BUNDLED)
    written = load_package(ct_cad.write_cad_package(tmp_path / "pkg"))
    assert bundled.version == written.version == ct_cad.VERSION
    assert tuple(int(x) for x in ct_cad.VERSION.split(".")) > (1, 0, 0)
    assert written.manifest.operating_points == bundled.manifest.operating_points
    nodule, record = ct_cad.default_points()
    assert bundled.manifest.operating_points["nodule"] == nodule
    assert bundled.manifest.training["operating_points"] == record
    assert written.manifest.training["operating_points"] == record
    section = ct_cad.operating_points_section(record, default="balanced", floor=ct_cad.SCORE_FLOOR)
    assert section in (BUNDLED / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert (
        (BUNDLED / "MODEL_CARD.md")
        .read_text(encoding="utf-8")
        .startswith(f"# {ct_cad.NAME} {ct_cad.VERSION}\n")
    )
    # Other trees: the floor alone (points fitted for the bundled trees do not apply).
    other = load_package(ct_cad.write_cad_package(tmp_path / "r2", revision=2))
    assert other.manifest.operating_points["nodule"] == {"balanced": ct_cad.SCORE_FLOOR}


# 6. Writing: the card after the section kept, the registry's key, a failure reported.


def test_replace_section_keeps_what_follows() -> None:
    text = "# T\n\n## A\n\na\n\n## Operating points\n\nold\n\n## Limits\n\nkeep\n"
    out = replace_section(text, "## Operating points", "## Operating points\n\nnew\n")
    assert out == "# T\n\n## A\n\na\n\n## Operating points\n\nnew\n\n## Limits\n\nkeep\n"
    assert replace_section("# T\n", "## X", "## X\n\nx\n") == "# T\n\n## X\n\nx\n"


def test_write_signs_with_the_key_and_keeps_the_card_tail(tmp_path: Path) -> None:
    package = tmp_path / "cad"
    shutil.copytree(BUNDLED, package)
    card = package / "MODEL_CARD.md"
    card.write_text(card.read_text(encoding="utf-8") + "\n## Notes\n\nkept\n", encoding="utf-8")
    resign_package(package)
    detection = {
        "curve": {"score": [None, 0.9, 0.5], "fp_per_scan": [0, 0, 1], "sensitivity": [0, 1, 1]}
    }
    write_operating_points(
        package, {"balanced": 0.7}, cohort="two", metrics={"detection": detection}, key=b"k"
    )
    assert verify_package(package, key=b"k") == []
    assert verify_package(package, key=b"other") != []
    text = card.read_text(encoding="utf-8")
    assert text.count("## Operating points") == 1 and text.rstrip().endswith("kept")


def test_a_read_only_package_is_a_config_error_and_left_as_it_was(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes read-only files")
    package = tmp_path / "cad"
    shutil.copytree(BUNDLED, package)
    before = (package / "manifest.json").read_bytes()
    os.chmod(package / "manifest.json", 0o444)
    os.chmod(package, 0o555)
    try:
        with pytest.raises(ConfigError, match="cannot be written"):
            write_operating_points(package, {"balanced": 0.5}, cohort="x", metrics={})
    finally:
        os.chmod(package, 0o755)
    assert (package / "manifest.json").read_bytes() == before


def test_a_failed_card_write_is_a_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from overread.training import ct_cad as training

    package = tmp_path / "cad"
    shutil.copytree(BUNDLED, package)

    def refuse(path: Path, text: str) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(training, "_write_atomic", refuse)
    detection = {"curve": {"score": [None, 0.9], "fp_per_scan": [0, 0], "sensitivity": [0, 1]}}
    with pytest.raises(ConfigError, match="cannot write the operating points"):
        write_operating_points(
            package, {"balanced": 0.5}, cohort="x", metrics={"detection": detection}
        )
    assert verify_package(package) == []


# 6, 7. The command refuses bad input before the minutes of evaluation.


@pytest.fixture
def no_evaluation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from overread.inference import ct_evaluation

    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("evaluated")

    monkeypatch.setattr(ct_evaluation, "evaluate_ct_package", never)
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))


def _cohort(root: Path, cases: Any, nodules: Any = ()) -> Path:
    root.mkdir(parents=True)
    (root / "cases.json").write_text(
        cases if isinstance(cases, str) else json.dumps(cases), encoding="utf-8"
    )
    if isinstance(cases, list):
        for row in cases:
            if isinstance(row, dict) and "case" in row:
                (root / row["case"]).mkdir()
                (root / row["case"] / "nodules.json").write_text(json.dumps(list(nodules)))
                (root / row["case"] / "series").mkdir()
                for name in ("case.json", "lung.nii.gz", "nodules.nii.gz"):
                    (root / row["case"] / name).write_bytes(b"")
    return root


def _one_error(capsys: pytest.CaptureFixture[str], argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and needle in err[0], err
    assert "Traceback" not in captured.err + captured.out


@pytest.mark.usefixtures("no_evaluation")
@pytest.mark.parametrize(
    ("cases", "needle"),
    [
        ([], "no cases"),
        ("{not json", "not readable JSON"),
        ({"case": "ct0000"}, "not a list of cases"),
        ([1, 2], "not a list of cases"),
        ([{"case": "ct0000"}], "no nodules"),
    ],
)
def test_a_bad_cohort_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cases: Any, needle: str
) -> None:
    data = _cohort(tmp_path / "cohort", cases)
    _one_error(capsys, ["models", "ct-operating-points", "--data", str(data)], needle)


_GOOD = {"label": 1, "centre_mm": [1.0, 2.0, 3.0], "diameter_mm": 8.0, "density": "solid"}


@pytest.mark.usefixtures("no_evaluation")
@pytest.mark.parametrize(
    ("nodule", "needle"),
    [
        ({k: v for k, v in _GOOD.items() if k != "diameter_mm"}, "no 'diameter_mm'"),
        ({k: v for k, v in _GOOD.items() if k != "density"}, "no 'density'"),
        ({**_GOOD, "diameter_mm": "8"}, "'diameter_mm' is not a positive number"),
        ({**_GOOD, "diameter_mm": -1}, "'diameter_mm' is not a positive number"),
        ({**_GOOD, "centre_mm": [1, 2]}, "'centre_mm' is not three numbers"),
        ({**_GOOD, "label": "one"}, "'label' is not an integer"),
        ({**_GOOD, "density": 3}, "'density' is not a text"),
        ("a nodule", "not an object"),
    ],
)
def test_a_bad_nodule_entry_is_one_error_line_before_any_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodule: Any, needle: str
) -> None:
    data = _cohort(tmp_path / "cohort", [{"case": "ct0000"}], [_GOOD, nodule])
    _one_error(capsys, ["models", "ct-operating-points", "--data", str(data)], needle)

    # evaluate_cohort checks them too, before any case is read.
    def never(*_: Any) -> Any:
        raise AssertionError("a case was evaluated")

    with pytest.raises(ConfigError, match=re.escape(needle)):
        evaluate_cohort(data, never)


@pytest.mark.usefixtures("no_evaluation")
@pytest.mark.parametrize("missing", ["series", "case.json", "lung.nii.gz", "nodules.nii.gz"])
def test_a_case_missing_a_file_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], missing: str
) -> None:
    data = _cohort(tmp_path / "cohort", [{"case": "ct0000"}], [_GOOD])
    target = data / "ct0000" / missing
    if target.is_dir():
        target.rmdir()
    else:
        target.unlink()
    _one_error(capsys, ["models", "ct-operating-points", "--data", str(data)], f"no {missing}")


@pytest.mark.usefixtures("no_evaluation")
def test_evaluate_refuses_an_empty_cohort(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from overread.training.ct_eval import read_cases

    data = _cohort(tmp_path / "cohort", [])
    with pytest.raises(ConfigError, match="no cases"):
        read_cases(data)


@pytest.mark.usefixtures("no_evaluation")
def test_the_command_refuses_a_package_that_is_not_a_cad_or_not_the_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _cohort(tmp_path / "cohort", [{"case": "ct0000"}], [_GOOD])
    argv = ["models", "ct-operating-points", "--data", str(data)]
    _one_error(capsys, [*argv, "--model", "ct-threshold-baseline"], "not a blob-cad package")
    other = _copy_with(tmp_path, "other", balanced=0.5)
    _one_error(capsys, [*argv, "--write", str(other)], "not the evaluated --model")
    _one_error(capsys, [*argv, "--write", str(tmp_path)], "no manifest.json")


# 8. A candidate at the point that cannot be measured: never a silent NEGATIVE.


def test_an_unmeasured_candidate_makes_the_finding_indeterminate(
    series_paths: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    volume = load_series(series_paths).volumes[0]
    monkeypatch.setattr(VolumePipeline, "_measure", lambda *_, **__: None)
    prediction = VolumePipeline(load_package(BUNDLED)).run_volume(volume).prediction
    [finding] = prediction.findings
    assert prediction.regions == []
    assert finding.decision is Decision.INDETERMINATE
    assert finding.probability >= finding.threshold
    assert any("could not be measured" in w for w in prediction.warnings)


# 9. Rounding never carries a probability across its threshold.


def test_rounding_keeps_the_probability_on_its_side() -> None:
    below = FindingResult(
        label="nodule",
        probability=0.08868671,
        positive=False,
        threshold=0.0886867655856101,
        decision=Decision.NEGATIVE,
    )
    stored = below.to_dict()
    assert stored["probability"] < stored["threshold"]
    above = below.with_values(probability=0.0886868, positive=True, decision=Decision.POSITIVE)
    assert above.to_dict()["probability"] == 0.088687
    assert (
        FindingResult(label="x", probability=0.1234567, positive=False).to_dict()["probability"]
        == 0.123457
    )
