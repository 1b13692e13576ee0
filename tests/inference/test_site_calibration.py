"""Per-site calibration of a package: written into a new version (never into the verified
source), and applied to a study's findings by its site, with what was applied recorded."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from scipy.special import expit, logit
from tests.models.conftest import LABELS, tiny_package

from overread.errors import EvaluationError, ModelPackageError
from overread.evaluation.site_calibration import MIN_SITE_IMAGES
from overread.inference.site_calibration import apply_site_calibration, calibrate_sites
from overread.models import load_package, verify_package
from overread.models.manifest import SiteCalibrationEntry, SiteCalibrationSection, SiteLabelMap
from overread.models.package import ModelPackage, derive_package
from overread.models.registry import bundled_dir
from overread.results import Decision, FindingResult, ModelRef, Prediction
from overread.service.site_calibration import SiteCalibrationSettings

Run = Callable[..., tuple[int, str, str]]


def _tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _label_map(temperature: float, balanced: float) -> SiteLabelMap:
    return SiteLabelMap(
        temperature=temperature,
        operating_points={"balanced": balanced, "high sensitivity": balanced / 2},
        n=60,
        n_positive=20,
    )


@pytest.fixture
def sited(tmp_path: Path) -> ModelPackage:
    """The tiny package with two sites: North (over-confident: T 2) and River (T 0.5,
    Pneumothorax left on the global calibration)."""
    source = load_package(tiny_package(tmp_path / "tiny"))
    section = SiteCalibrationSection(
        min_images=30,
        min_per_class=5,
        sites={
            "North General": SiteCalibrationEntry(
                method="temperature",
                labels={label: _label_map(2.0, 0.3) for label in LABELS},
                n=60,
            ),
            "RIVER-CR02": SiteCalibrationEntry(
                method="temperature",
                labels={"Cardiomegaly": _label_map(0.5, 0.7)},
                fallback={"Pneumothorax": "2 positive and 58 negative images"},
                n=60,
            ),
        },
    )
    return derive_package(
        source, tmp_path / "sited", version="1.0.0+sites", site_calibration=section
    )


def _prediction(package: ModelPackage, probabilities: list[float], **extra: object) -> Prediction:
    findings = [
        FindingResult(
            label,
            p,
            p >= 0.5,
            threshold=0.5,
            operating_point="balanced",
            conformal_set=extra.get("conformal_set"),  # type: ignore[arg-type]
        )
        for label, p in zip(package.labels, probabilities, strict=True)
    ]
    ref = ModelRef(package.name, package.version, package.sha256)
    return Prediction(path="x.dcm", ok=True, model=ref, findings=findings)


def test_a_study_from_a_calibrated_site_gets_its_maps_and_thresholds(sited: ModelPackage) -> None:
    study = [_prediction(sited, [0.9, 0.2, 0.6])]
    applied = apply_site_calibration(study, sited, "north  GENERAL", source="institution")
    assert applied.to_dict() == {
        "site": "north  GENERAL",
        "source": "institution",
        "calibration": "site",
        "package_site": "North General",
        "method": "temperature",
    }
    [cardio, ptx, devices] = study[0].findings
    assert cardio.probability == pytest.approx(expit(logit(0.9) / 2.0))
    assert ptx.probability == pytest.approx(expit(logit(0.2) / 2.0))
    assert [f.threshold for f in study[0].findings] == [0.3, 0.3, 0.3]
    assert cardio.positive and cardio.decision is not Decision.NEGATIVE
    assert devices.probability == pytest.approx(expit(logit(0.6) / 2.0))


def test_labels_below_the_minimum_keep_the_global_calibration(sited: ModelPackage) -> None:
    study = [_prediction(sited, [0.6, 0.2, 0.6])]
    applied = apply_site_calibration(study, sited, "RIVER-CR02", source="station")
    assert applied.calibration == "site"
    assert applied.fallback == {"Pneumothorax": "2 positive and 58 negative images"}
    [cardio, ptx, devices] = study[0].findings
    assert cardio.probability == pytest.approx(expit(logit(0.6) / 0.5))
    assert cardio.threshold == 0.7
    assert cardio.positive == (cardio.probability >= 0.7)
    # Not fitted at this site: the package's own probability and threshold.
    assert (ptx.probability, ptx.threshold) == (0.2, 0.5)
    assert (devices.probability, devices.threshold) == (0.6, 0.5)


def test_an_unknown_site_keeps_the_global_calibration_and_says_why(
    sited: ModelPackage, caplog: pytest.LogCaptureFixture
) -> None:
    study = [_prediction(sited, [0.9, 0.2, 0.6])]
    before = [f.to_dict() for f in study[0].findings]
    with caplog.at_level("INFO"):
        applied = apply_site_calibration(study, sited, "Lakeside Clinic", source="institution")
    assert applied.calibration == "global"
    assert "'Lakeside Clinic' is not calibrated" in applied.reason
    assert "global calibration" in caplog.text
    assert [f.to_dict() for f in study[0].findings] == before
    empty = apply_site_calibration(study, sited, "", source="calling_ae")
    assert empty.calibration == "global" and "calling_ae is empty" in empty.reason


def test_a_site_with_no_map_says_so(sited: ModelPackage, tmp_path: Path) -> None:
    assert sited.manifest.site_calibration is not None
    small = SiteCalibrationEntry(
        method="temperature", fallback={label: "12 labelled images" for label in LABELS}, n=12
    )
    section = sited.manifest.site_calibration.model_copy(
        update={"sites": {**sited.manifest.site_calibration.sites, "Tiny": small}}
    )
    package = derive_package(
        sited, tmp_path / "tiny2", version="1.0.0+tiny", site_calibration=section
    )
    study = [_prediction(package, [0.9, 0.2, 0.6])]
    applied = apply_site_calibration(study, package, "tiny", source="calling_ae")
    assert applied.calibration == "global" and applied.package_site == "Tiny"
    assert "no label has a site map" in applied.reason
    assert applied.to_dict()["fallback"]["Cardiomegaly"] == "12 labelled images"
    assert [f.probability for f in study[0].findings] == [0.9, 0.2, 0.6]


def test_an_ambiguous_conformal_set_stays_indeterminate(sited: ModelPackage) -> None:
    study = [_prediction(sited, [0.99, 0.01, 0.99], conformal_set="both")]
    apply_site_calibration(study, sited, "North General")
    assert {f.decision for f in study[0].findings} == {Decision.INDETERMINATE}


def test_the_service_names_the_site_from_its_configured_source_through_the_mapping() -> None:
    facts = {"institution": "Riverside Medical Centre", "station": "RMC-CR02", "calling_ae": "CR02"}
    sites = {"riverside  medical centre": "River", "RMC-CR02": "River CR", "cr02": "RIVER-CR02"}
    by_institution = SiteCalibrationSettings(sites=sites).match(**facts)
    assert (by_institution.value, by_institution.site) == ("Riverside Medical Centre", "River")
    by_station = SiteCalibrationSettings(source="station", sites=sites).match(**facts)  # type: ignore[arg-type]
    assert by_station.site == "River CR"
    by_ae = SiteCalibrationSettings(source="calling_ae", sites=sites).match(**facts)  # type: ignore[arg-type]
    assert by_ae.site == "RIVER-CR02"
    # Only the configured source counts: another fact that the mapping names does not.
    other = SiteCalibrationSettings(source="station", sites={"CR02": "RIVER-CR02"})  # type: ignore[arg-type]
    assert other.match(**facts).site is None and other.match(**facts).unmapped


def test_a_value_the_mapping_does_not_name_is_never_taken_as_the_site_name() -> None:
    # The institution is spelled as the package's site, but the mapping does not name it.
    unmapped = SiteCalibrationSettings().match(institution="North General")
    assert unmapped.site is None and unmapped.unmapped and unmapped.value == "North General"
    assert not SiteCalibrationSettings().match(institution="  ").unmapped  # no value at all


def test_an_unmapped_study_gets_the_global_calibration_and_says_so(sited: ModelPackage) -> None:
    from overread.inference.site_calibration import unmapped_site

    applied = unmapped_site("North General", "institution", sited).to_dict()
    assert applied["calibration"] == "global" and applied["unmapped"] is True
    assert "not in the [service.site_calibration] sites mapping" in applied["reason"]
    assert "unmapped" not in apply_site_calibration([], sited, "North General").to_dict()


def test_an_unmapped_study_is_counted_in_the_metrics() -> None:
    from unittest.mock import MagicMock

    from overread.service.metrics import ServiceMetrics, observe_unmapped_site

    metrics = ServiceMetrics(MagicMock(), MagicMock(routes=[]))
    metrics.start()
    try:
        observe_unmapped_site("station")
        observe_unmapped_site("station")
    finally:
        metrics.stop()
    value = metrics.registry.get_sample_value(
        "overread_site_calibration_unmapped_total", {"source": "station"}
    )
    assert value == 2.0


def _station_cohort(root: Path, stations: list[str]) -> Path:
    root.mkdir(parents=True)
    rows = ["Path,Station,Pneumothorax"] + [
        f"img{i}.dcm,{station},0" for i, station in enumerate(stations)
    ]
    (root / "truth.csv").write_text("\n".join(rows) + "\n")
    return root


def test_the_fit_refuses_cohort_values_the_mapping_does_not_name(tmp_path: Path) -> None:
    package = load_package(tiny_package(tmp_path / "t"))
    cohort = _station_cohort(tmp_path / "c", ["NGH-DX01", "RMC-CR02", "LKC-DX04", "NGH-DX01"])
    mapping = {"ngh-dx01": "Northgate"}
    with pytest.raises(
        EvaluationError, match=r"2 station value\(s\) not in .*'LKC-DX04', 'RMC-CR02'"
    ):
        calibrate_sites(
            package, cohort, tmp_path / "o", sites=["Northgate"], version="2",
            site_source="station", site_map=mapping,
        )  # fmt: skip
    # A site the mapping cannot give would never be chosen by the service: refused.
    with pytest.raises(EvaluationError, match="'Riverside' not among the sites of"):
        calibrate_sites(
            package, cohort, tmp_path / "o", sites=["Riverside"], version="2",
            site_source="station", site_map=mapping,
        )  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_the_command_refuses_unmapped_cohort_values_in_one_line(
    run_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "overread.toml"
    config.write_text(
        '[service.site_calibration]\nsource = "station"\nsites = {"NGH-DX01" = "Northgate"}\n'
    )
    monkeypatch.setenv("OVERREAD_CONFIG", str(config))
    cohort = _station_cohort(tmp_path / "c", ["NGH-DX01", "RMC-CR02"])
    status, _, err = run_cli(
        "models", "calibrate", "--model", "cxr-default", "--data", cohort,
        "--out", tmp_path / "o", "--site", "Northgate",
    )  # fmt: skip
    assert status != 0 and "Traceback" not in err
    [error] = [line for line in err.splitlines() if line.startswith("error:")]
    assert "station value(s) not in [service.site_calibration] sites" in error
    assert "'RMC-CR02'" in error


def test_a_verified_package_is_never_edited(sited: ModelPackage, tmp_path: Path) -> None:
    before = _tree_hashes(sited.path)
    with pytest.raises(ModelPackageError, match="never overwritten"):
        calibrate_sites(sited, tmp_path, sited.path, sites=["X"], version="2")
    with pytest.raises(ModelPackageError, match="new version"):
        calibrate_sites(sited, tmp_path, tmp_path / "new", sites=["X"], version=sited.version)
    assert _tree_hashes(sited.path) == before
    assert verify_package(sited.path) == []


# -- the command on the bundled model and a two-site phantom cohort ------------------


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from overread.phantom import generate_cohort

    out = tmp_path_factory.mktemp("sites") / "cohort"
    generate_cohort(out, 80, 5, rows=256, cols=256, internal=128, sites=2, workers=1)
    return out


@pytest.mark.slow
def test_calibrate_site_writes_a_new_version_and_leaves_the_source_alone(
    run_cli: Run, two_sites: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    # The images of a site are those the service would take for it: by station here.
    config = tmp_path / "overread.toml"
    config.write_text(
        '[service.site_calibration]\nsource = "station"\n'
        'sites = {"NGH-DX01" = "Northgate General Hospital", "RMC-CR02" = "RMC-CR02"}\n'
    )
    monkeypatch.setenv("OVERREAD_CONFIG", str(config))
    source = bundled_dir() / "cxr-default"
    before = _tree_hashes(source)
    out = tmp_path / "sited"
    status, stdout, err = run_cli(
        "models", "calibrate", "--model", "cxr-default", "--data", two_sites, "--out", out,
        "--site", "Northgate General Hospital", "--site", "RMC-CR02", "--json",
    )  # fmt: skip
    assert status == 0, err
    summary = json.loads(stdout)
    assert summary["version"] == "1.5.3+sites"
    assert summary["sites_in_package"] == ["Northgate General Hospital", "RMC-CR02"]
    truth = (two_sites / "truth.csv").read_text().splitlines()
    assert summary["sites"]["RMC-CR02"]["images"] == sum(",RMC," in r for r in truth)
    assert summary["sites"]["Northgate General Hospital"]["images"] == sum(
        ",NGH," in r for r in truth
    )
    package = load_package(out)
    section = package.manifest.site_calibration
    assert section is not None and section.min_images == MIN_SITE_IMAGES
    for entry in section.sites.values():
        # Every label fitted or left on the global calibration with a reason.
        assert set(entry.labels) | set(entry.fallback) == set(package.labels)
        for fitted in entry.labels.values():
            assert fitted.temperature is not None
            assert fitted.ece_after is not None and fitted.ece_before is not None
    assert _tree_hashes(source) == before

    # A site whose sample is below the minimum: written, every label on the global one.
    small = tmp_path / "small"
    status, stdout, err = run_cli(
        "models", "calibrate", "--model", out, "--data", two_sites, "--out", small,
        "--site", "RMC-CR02", "--min-images", "1000", "--version", "1.1.0+sites.2",
    )  # fmt: skip
    assert status == 0, err
    assert "has no label with a site map" in err
    merged = load_package(small).manifest.site_calibration
    assert merged is not None
    assert sorted(merged.sites) == ["Northgate General Hospital", "RMC-CR02"]
    assert merged.sites["RMC-CR02"].labels == {}
    assert "fewer than the minimum 1000" in merged.sites["RMC-CR02"].fallback["Pneumothorax"]

    status, _, err = run_cli(
        "models", "calibrate", "--model", out, "--data", two_sites, "--out", tmp_path / "x",
        "--site", "Lakeside Clinic",
    )  # fmt: skip
    assert status != 0 and "'Lakeside Clinic' not among the sites of" in err
    assert "Traceback" not in err


def test_the_command_refuses_bad_input_in_one_line(run_cli: Run, tmp_path: Path) -> None:
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "truth.csv").write_text("Path\n")
    for args, message in (
        (["--site", "A", "--method", "platt"], "--method must be temperature or isotonic"),
        (["--whole-cohort"], "--whole-cohort needs exactly one --site"),
    ):
        status, _, err = run_cli(
            "models", "calibrate", "--model", "cxr-default", "--data", tmp_path / "c",
            "--out", tmp_path / "o", *args,
        )  # fmt: skip
        assert status != 0 and message in err and "Traceback" not in err


def test_every_image_of_a_whole_cohort_is_the_site_s(tmp_path: Path) -> None:
    with pytest.raises(EvaluationError, match="name one"):
        calibrate_sites(
            load_package(tiny_package(tmp_path / "t")), tmp_path, tmp_path / "o",
            sites=["A", "B"], version="2", whole_cohort=True,
        )  # fmt: skip


@pytest.mark.slow
def test_a_whole_cohort_calibrates_a_calling_ae_with_isotonic_maps(
    run_cli: Run, two_sites: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    out = tmp_path / "ae"
    status, stdout, err = run_cli(
        "models", "calibrate", "--model", "cxr-default", "--data", two_sites, "--out", out,
        "--site", "CR01", "--whole-cohort", "--method", "isotonic", "--min-images", "60",
        "--version", "1.1.0+cr01", "--json",
    )  # fmt: skip
    assert status == 0, err
    summary = json.loads(stdout)
    assert summary["sites"]["CR01"]["images"] == 80 and summary["min_images"] == 60
    entry = load_package(out).manifest.site_calibration
    assert entry is not None
    cr01 = entry.sites["CR01"]
    assert cr01.method == "isotonic" and cr01.cohort["matched"] == "whole cohort"
    assert cr01.labels, "some label has a map worth using"
    for fitted in cr01.labels.values():
        assert fitted.temperature is None and len(fitted.x) == len(fitted.y) >= 2
        assert fitted.y == sorted(fitted.y)  # monotone


def test_predict_applies_a_named_site_s_calibration(
    run_cli: Run, sited: ModelPackage, cxr_dicom: Callable[..., Path]
) -> None:
    image = cxr_dicom()
    status, plain, err = run_cli("predict", "--model", sited.path, image, "--json")
    assert status == 0, err
    status, north, err = run_cli(
        "predict", "--model", sited.path, image, "--json", "--site", "North General"
    )
    assert status == 0, err
    before, after = json.loads(plain), json.loads(north)
    assert "calibration" not in before
    assert after["calibration"]["calibration"] == "site"
    assert after["calibration"]["package_site"] == "North General"
    for old, new in zip(before["findings"], after["findings"], strict=True):
        assert new["probability"] == pytest.approx(expit(logit(old["probability"]) / 2.0), abs=1e-5)
        assert new["threshold"] == 0.3 and old["threshold"] == 0.5
    status, elsewhere, err = run_cli(
        "predict", "--model", sited.path, image, "--json", "--site", "Elsewhere"
    )
    assert json.loads(elsewhere)["calibration"]["calibration"] == "global"
