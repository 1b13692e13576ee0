"""``overread labels stats`` against counts computed independently from the CSV."""

from __future__ import annotations

import csv
import gzip
import json
from collections import Counter
from pathlib import Path

from overread.findings import CHEXPERT_LABELS

from .label_files import CHEXPERT_HEADER, chexpert_row, write_phantom_cohort


def _stats(run_cli, *args: str | Path) -> dict:  # type: ignore[no-untyped-def]
    status, out, err = run_cli("labels", "stats", *args, "--json")
    assert status == 0, err
    return json.loads(out)


def test_real_chexpert_counts(run_cli, txv_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = txv_dir / "chexpert_train.csv.gz"
    values: dict[str, Counter[str]] = {label: Counter() for label in CHEXPERT_LABELS}
    patients: set[str] = set()
    studies: set[str] = set()
    rows = 0
    with gzip.open(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            rows += 1
            parts = row["Path"].split("/")
            patients.add(parts[2])
            studies.add(parts[2] + "/" + parts[3])
            for label in CHEXPERT_LABELS:
                values[label][row[label]] += 1
    assert rows == 223_414
    for policy in ("u-ones", "u-ignore"):
        stats = _stats(run_cli, "--dataset", "chexpert", "--csv", path, "--policy", policy)
        assert (stats["images"], stats["studies"], stats["patients"]) == (
            rows,
            len(studies),
            len(patients),
        )
        for label in CHEXPERT_LABELS:
            counts = stats["labels"][label]
            pos, neg = values[label]["1.0"], values[label]["0.0"]
            unc, blank = values[label]["-1.0"], values[label][""]
            assert pos + neg + unc + blank == rows
            assert (counts["positive"], counts["negative"]) == (pos, neg)
            assert (counts["uncertain"], counts["blank"]) == (unc, blank)
            after = counts["after"]
            if policy == "u-ones":
                assert (after["positive"], after["negative"], after["ignored"]) == (
                    pos + unc,
                    neg + blank,
                    0,
                )
            else:
                assert (after["positive"], after["negative"], after["ignored"]) == (
                    pos,
                    neg + blank,
                    unc,
                )
    # Spot values, so a change in the source file is noticed.
    assert (values["Edema"]["1.0"], values["Edema"]["-1.0"]) == (52_246, 12_984)
    assert (len(patients), len(studies)) == (64_540, 187_641)


def test_real_chexpert_lsr_soft_counts(run_cli, txv_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = txv_dir / "chexpert_train.csv.gz"
    stats = _stats(run_cli, "-d", "chexpert", "--csv", path, "-p", "u-lsr;blank=ignore")
    atelectasis = stats["labels"]["Atelectasis"]
    after = atelectasis["after"]
    assert after["soft"] == atelectasis["uncertain"] == 33_739
    assert after["ignored"] == atelectasis["blank"]
    assert after["positive"] == atelectasis["positive"]
    assert sum(after.values()) == stats["images"]


def test_real_nih_counts(run_cli, txv_dir: Path) -> None:  # type: ignore[no-untyped-def]
    path = txv_dir / "Data_Entry_2017_v2020.csv.gz"
    findings: Counter[str] = Counter()
    patients: set[str] = set()
    rows = 0
    with gzip.open(path, "rt", newline="") as handle:
        for row in csv.DictReader(handle):
            rows += 1
            patients.add(row["Patient ID"])
            findings.update(row["Finding Labels"].split("|"))
    stats = _stats(run_cli, "--dataset", "nih", "--csv", path)
    assert stats["images"] == rows == 112_120
    assert stats["patients"] == len(patients) == 30_805
    assert set(stats["labels"]) == set(findings)
    for label, count in findings.items():
        counts = stats["labels"][label]
        assert counts["positive"] == count
        assert counts["negative"] == rows - count
        assert counts["uncertain"] == counts["blank"] == 0
    assert findings["No Finding"] == 60_361 and findings["Hernia"] == 227


def test_real_nih_bboxes(txv_dir: Path) -> None:
    from overread.data import read_nih_bboxes

    boxes = read_nih_bboxes(txv_dir / "BBox_List_2017.csv.gz")
    with gzip.open(txv_dir / "BBox_List_2017.csv.gz", "rt", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert len(boxes) == len(rows) == 984
    assert boxes["image"].nunique() == len({r[0] for r in rows}) == 880
    assert Counter(boxes["label"])["Infiltration"] == sum(r[1] == "Infiltrate" for r in rows)
    first = rows[0]
    assert boxes.loc[0, ["x", "y", "w", "h"]].tolist() == [float(v) for v in first[2:6]]
    assert (boxes["x1"] <= 1024.5).all() and (boxes["w"] > 0).all()


def test_bad_rows_exit_1_with_summary(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    csv_path = tmp_path / "train.csv"
    csv_path.write_text(
        "\n".join(
            [
                CHEXPERT_HEADER,
                chexpert_row(
                    "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg", {"Edema": "1.0"}
                ),
                chexpert_row(
                    "CheXpert-v1.0/train/patient00002/study1/view1_frontal.jpg", {"Edema": "7"}
                ),
            ]
        )
        + "\n"
    )
    status, out, err = run_cli(
        "labels", "stats", "--dataset", "chexpert", "--csv", csv_path, "--json"
    )
    assert status == 1
    stats = json.loads(out)
    assert stats["images"] == 1 and stats["labels"]["Edema"]["positive"] == 1
    assert stats["skipped"][0]["line"] == 3
    assert "line 3" in err and "'Edema' has value '7'" in err and "1 row(s)" in err


def test_table_output_and_errors(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cohort = write_phantom_cohort(tmp_path / "cohort", patients=3, studies=2, with_images=True)
    status, out, err = run_cli(
        "labels",
        "stats",
        "--dataset",
        "phantom",
        "--csv",
        cohort / "labels.csv",
        "--policy",
        "u-ones",
    )
    assert status == 0, err
    assert "Pleural Effusion" in out and "6 images, 6 studies, 3 patients" in out
    truth = _stats(run_cli, "--dataset", "phantom-truth", "--csv", cohort / "truth.csv")
    assert all(c["uncertain"] == 0 and c["blank"] == 0 for c in truth["labels"].values())
    status, _, err = run_cli(
        "labels", "stats", "--dataset", "chexpert", "--csv", tmp_path / "none.csv"
    )
    assert status == 2 and err.startswith("error: ") and "none.csv" in err
    status, _, err = run_cli(
        "labels",
        "stats",
        "--dataset",
        "nih",
        "--csv",
        cohort / "labels.csv",
        "--policy",
        "u-sometimes",
    )
    assert status == 2 and "u-sometimes" in err


def test_mimic_and_siim_through_the_cli(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    labels = sorted(CHEXPERT_LABELS)
    rows = ["subject_id,study_id," + ",".join(labels)]
    for subject, study, edema in (
        ("10000032", "50414267", "1.0"),
        ("10000032", "53189527", "-1.0"),
    ):
        cells = [subject, study] + ["" for _ in labels]
        cells[2 + labels.index("Edema")] = edema
        rows.append(",".join(cells))
    chexpert = tmp_path / "mimic-cxr-2.0.0-chexpert.csv"
    chexpert.write_text("\n".join(rows) + "\n")
    metadata = tmp_path / "mimic-cxr-2.0.0-metadata.csv"
    metadata.write_text(
        "dicom_id,subject_id,study_id,ViewPosition\n"
        "a1,10000032,50414267,PA\na2,10000032,50414267,LATERAL\nb1,10000032,53189527,AP\n"
    )
    studies = _stats(run_cli, "-d", "mimic", "--csv", chexpert, "-p", "u-zeros")
    assert (studies["patients"], studies["studies"], studies["images"]) == (1, 2, 2)
    images = _stats(
        run_cli, "-d", "mimic", "--csv", chexpert, "--metadata", metadata, "-p", "u-ones"
    )
    assert (images["studies"], images["images"]) == (2, 3)
    assert (
        images["labels"]["Edema"]["positive"] == 2 and images["labels"]["Edema"]["uncertain"] == 1
    )
    assert images["labels"]["Edema"]["after"]["positive"] == 3

    siim = tmp_path / "train-rle.csv"
    siim.write_text(
        "ImageId, EncodedPixels\nimg1,-1\nimg2,5 3 10 2\nimg2,100 4\nimg3,7 x\nimg4,-1\n"
    )
    status, out, err = run_cli("labels", "stats", "-d", "siim", "--csv", siim, "--json")
    assert status == 1
    stats = json.loads(out)
    assert stats["images"] == 3 and stats["labels"]["Pneumothorax"]["positive"] == 1
    assert "line 5 (img3)" in err and "not a list of integers" in err


def test_split_command_writes_disjoint_csvs(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import pandas as pd

    cohort = write_phantom_cohort(tmp_path / "cohort", patients=12, studies=2, with_images=True)
    out = tmp_path / "splits"
    status, stdout, err = run_cli(
        "labels",
        "split",
        "-d",
        "phantom",
        "--csv",
        cohort / "labels.csv",
        "--out",
        out,
        "--fractions",
        "0.5,0.25,0.25",
        "--holdout-site",
        "site-C",
    )
    assert status == 0, err
    frames = {
        name: pd.read_csv(out / f"{name}.csv") for name in ("train", "val", "test", "external")
    }
    assert set(frames["external"]["site"]) == {"site-C"}
    patients = [set(f["patient_id"]) for f in frames.values()]
    assert sum(len(p) for p in patients) == len(set().union(*patients)) == 12
    assert sum(len(f) for f in frames.values()) == 24
    assert "external: 4 patients, 8 studies, 8 images" in stdout
    status, _, err = run_cli(
        "labels", "split", "-d", "phantom", "--csv", cohort, "--out", out, "--fractions", "a,b"
    )
    assert status == 2 and "--fractions" in err
