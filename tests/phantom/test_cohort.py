"""Cohort layout, CSV formats, ground truth, determinism, drift and errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from overread.errors import ConfigError
from overread.findings import CHEXPERT_LABELS
from overread.phantom import LABELS_COLUMNS, CohortSummary, generate_cohort

EXPECTED_LABELS_HEADER = [
    *["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA"],
    *CHEXPERT_LABELS,
    *["PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "StudyDate"],
    *["AccessionNumber", "Site", "Station", "Manufacturer", "Department", "Group"],
]


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_labels_csv_follows_the_contract(cohort_dir: Path) -> None:
    with (cohort_dir / "labels.csv").open(newline="") as fh:
        header = next(csv.reader(fh))
    assert header == EXPECTED_LABELS_HEADER == list(LABELS_COLUMNS)
    rows = _rows(cohort_dir / "labels.csv")
    assert len(rows) == 30
    for row in rows:
        assert (cohort_dir / row["Path"]).is_file()
        assert row["Path"].startswith("images/patient")
        assert row["Path"].endswith("/view1_frontal.dcm")
        assert row["Sex"] in ("Male", "Female")
        assert 18 <= int(row["Age"]) <= 100
        assert row["Frontal/Lateral"] == "Frontal"
        assert row["AP/PA"] in ("AP", "PA")
        for label in CHEXPERT_LABELS:
            assert row[label] in ("1.0", "0.0", "-1.0", ""), (label, row[label])
        assert row["No Finding"] in ("1.0", "")
        assert row["Department"] in ("ED", "ICU", "INPATIENT", "OUTPATIENT")
        assert row["Group"] in ("A", "B", "C", "D")
        ds = pydicom.dcmread(cohort_dir / row["Path"], stop_before_pixels=True)
        assert ds.PatientID == row["PatientID"]
        assert ds.SOPInstanceUID == row["SOPInstanceUID"]
        assert ds.StudyInstanceUID == row["StudyInstanceUID"]
        assert ds.AccessionNumber == row["AccessionNumber"]
        assert ds.StudyDate == row["StudyDate"]
        assert ds.StationName == row["Station"]
    assert any(row[label] == "" for row in rows for label in CHEXPERT_LABELS)


def test_truth_csv_is_exact_and_consistent(cohort_dir: Path) -> None:
    truth = pd.read_csv(cohort_dir / "truth.csv")
    head = ["Path", "PatientID", "StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID"]
    assert list(truth.columns[:5]) == head
    assert list(truth.columns[12:14]) == ["Sex", "Age"]
    assert list(truth.columns[14:28]) == list(CHEXPERT_LABELS)
    values = truth[list(CHEXPERT_LABELS)]
    assert values.isin([0, 1]).all().all()
    pathology = values.drop(columns=["No Finding", "Support Devices"]).sum(axis=1)
    assert ((pathology == 0) == (truth["No Finding"] == 1)).all()
    children = ["Lung Lesion", "Edema", "Consolidation", "Pneumonia", "Atelectasis"]
    assert (truth.loc[values[children].any(axis=1), "Lung Opacity"] == 1).all()
    assert ((truth["Cardiomegaly"] == 1) == (truth["CTR"] > 0.5)).all()
    labels = pd.read_csv(cohort_dir / "labels.csv")
    assert list(labels["Path"]) == list(truth["Path"])


def test_ground_truth_json_boxes_match_masks(cohort_dir: Path, small_cohort: CohortSummary) -> None:
    data = json.loads((cohort_dir / "ground_truth.json").read_text())
    assert data["version"] == 1 and data["seed"] == 11
    truth = pd.read_csv(cohort_dir / "truth.csv").set_index("Path")
    assert len(data["images"]) == 30
    n_findings = 0
    for image in data["images"]:
        assert truth.loc[image["path"], "SOPInstanceUID"] == image["sop_instance_uid"]
        labels = {f["label"] for f in image["findings"]}
        positives = {lab for lab in CHEXPERT_LABELS if truth.loc[image["path"], lab] == 1}
        assert labels == positives - {"No Finding"}
        for finding in image["findings"]:
            n_findings += 1
            mask = np.asarray(Image.open(cohort_dir / finding["mask"]))
            assert mask.shape == (256, 256)
            assert set(np.unique(mask)) <= {0, 255}
            ys, xs = np.nonzero(mask)
            assert ys.size > 0, finding
            assert finding["bbox"] == [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]
            assert 0.0 < finding["severity"] <= 1.0
    assert n_findings > 10
    cohort = json.loads((cohort_dir / "cohort.json").read_text())
    assert cohort["counts"]["studies"] == 30
    assert cohort["counts"]["patients"] == small_cohort.patients


def test_patients_have_several_studies_with_the_same_anatomy(cohort_dir: Path) -> None:
    truth = pd.read_csv(cohort_dir / "truth.csv")
    per_patient = truth.groupby("PatientID").size()
    assert per_patient.max() >= 2
    assert per_patient.max() <= 4
    for _, group in truth.groupby("PatientID"):
        assert group["Sex"].nunique() == 1 and group["Group"].nunique() == 1
        assert list(group["StudyDate"]) == sorted(group["StudyDate"])
        studies = [Path(p).parent.name for p in group["Path"]]
        assert studies == [f"study{i}" for i in range(1, len(group) + 1)]


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a = generate_cohort(tmp_path / "a", n=6, seed=4, rows=128, cols=128, workers=1)
    b = generate_cohort(tmp_path / "b", n=6, seed=4, rows=128, cols=128, workers=2)
    c = generate_cohort(tmp_path / "c", n=6, seed=5, rows=128, cols=128, workers=1)
    for name in ("labels.csv", "truth.csv", "ground_truth.json"):
        assert (a.out_dir / name).read_bytes() == (b.out_dir / name).read_bytes()
    files = sorted(p.relative_to(a.out_dir) for p in (a.out_dir / "images").rglob("*.dcm"))
    assert files
    for rel in files:
        assert (a.out_dir / rel).read_bytes() == (b.out_dir / rel).read_bytes()
    assert (a.out_dir / "labels.csv").read_bytes() != (c.out_dir / "labels.csv").read_bytes()


def test_drift_changes_acquisition_after_the_date(tmp_path: Path) -> None:
    summary = generate_cohort(
        tmp_path / "drift",
        n=30,
        seed=2,
        rows=256,
        cols=256,
        sites=1,
        drift_site="NGH",
        drift_date="2025-01-01",
        workers=2,
    )
    truth = pd.read_csv(summary.out_dir / "truth.csv")
    after = truth["StudyDate"] >= 20250101
    assert (truth["Drifted"] == after.astype(int)).all()
    assert 5 <= after.sum() <= 25
    stats: dict[bool, list[tuple[str, int, float, float]]] = {True: [], False: []}
    for path, drifted in zip(truth["Path"], after, strict=True):
        ds = pydicom.dcmread(summary.out_dir / path)
        top = (1 << ds.BitsStored) - 1
        px = ds.pixel_array.astype(np.float64)
        if ds.PhotometricInterpretation == "MONOCHROME1":
            px = top - px
        brightness = float(px.mean()) / top
        # Fine-scale noise: median absolute Laplacian, in window widths.
        lap = 4 * px[1:-1, 1:-1] - px[:-2, 1:-1] - px[2:, 1:-1] - px[1:-1, :-2] - px[1:-1, 2:]
        noise = float(np.median(np.abs(lap))) / float(ds.WindowWidth)
        stats[bool(drifted)].append((ds.StationName, int(ds.BitsStored), brightness, noise))
    before, after_ = stats[False], stats[True]
    assert {s[0] for s in before} == {"NGH-DX01"}
    assert {s[0] for s in after_} == {"NGH-DX01-N"}
    assert {s[1] for s in before} != {s[1] for s in after_}
    assert np.median([s[2] for s in after_]) > np.median([s[2] for s in before]) + 0.04
    assert np.median([s[3] for s in after_]) > 1.1 * np.median([s[3] for s in before])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "at least 1"),
        ({"rows": 5000}, "outside 64..3000"),
        ({"sites": 9}, "--sites"),
        ({"modality": "MR"}, "--modality"),
        ({"uncertain_rate": 1.5}, "uncertain rate"),
        ({"label_noise": -0.1}, "label noise"),
        ({"drift_site": "NOPE", "drift_date": "2025-01-01"}, "drift site"),
        ({"drift_site": "NGH"}, "drift date"),
        ({"drift_site": "NGH", "drift_date": "2031-01-01"}, "outside the study dates"),
        ({"drift_site": "NGH", "drift_date": "yesterday"}, "not a date"),
        ({"prevalence": {"Edema": 2.0}}, "outside 0..0.95"),
        ({"prevalence": {"Flu": 0.1}}, "unknown label"),
        ({"colour": "red"}, "unexpected keyword"),
    ],
)
def test_bad_arguments_raise_clear_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    args = {"n": 2, **kwargs}
    n = args.pop("n")
    with pytest.raises(ConfigError, match=message):
        generate_cohort(tmp_path / "bad", n=n, seed=0, **args)


def test_cli_generates_and_reports(tmp_path: Path, run_cli) -> None:
    out = tmp_path / "cli"
    status, stdout, _ = run_cli(
        "phantom", "cxr", "--n", "3", "--out", out, "--size", "128", "--seed", "3", "--quiet"
    )
    assert status == 0, stdout
    assert "wrote 3 studies" in stdout
    assert len(_rows(out / "labels.csv")) == 3


def test_cli_bad_argument_exits_2_with_one_line(tmp_path: Path, run_cli) -> None:
    status, _, err = run_cli(
        "phantom", "cxr", "--n", "3", "--out", tmp_path, "--drift-site", "NGH", "--quiet"
    )
    assert status == 2
    assert err.strip() == "error: a drift site needs a drift date (--drift-date)"
