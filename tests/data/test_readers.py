"""Readers on small hand-written files in each published format, bad rows included."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from overread.data import NIH_LABELS, read_labels, read_nih_bboxes
from overread.errors import DatasetError
from overread.findings import CHEXPERT_LABELS

from .label_files import CHEXPERT_HEADER, chexpert_row, write_phantom_cohort


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_chexpert_parses_paths_values_and_metadata(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "train.csv",
        [
            CHEXPERT_HEADER,
            chexpert_row(
                "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg",
                {"No Finding": "1.0", "Pneumothorax": "0.0"},
            ),
            chexpert_row(
                "CheXpert-v1.0/train/patient00002/study2/view2_lateral.jpg",
                {"Edema": "-1.0", "Cardiomegaly": "1"},
                sex="Male",
                age="77",
            ),
            chexpert_row("CheXpert-v1.0/train/patient00002/study1/view1_frontal.jpg", {}),
        ],
    )
    table = read_labels("chexpert", csv)
    assert table.labels == list(CHEXPERT_LABELS)
    assert table.frame["patient_id"].tolist() == ["patient00001", "patient00002", "patient00002"]
    assert table.frame["study_id"].tolist() == [
        "patient00001/study1",
        "patient00002/study2",
        "patient00002/study1",
    ]
    assert table.frame["view"].tolist() == ["frontal", "lateral", "frontal"]
    assert table.frame["split"].tolist() == ["train"] * 3
    assert table.frame["age"].tolist() == [60, 77, 60]
    raw = table.raw
    col = table.labels.index
    assert raw[0, col("No Finding")] == 1.0 and raw[0, col("Pneumothorax")] == 0.0
    assert raw[1, col("Edema")] == -1.0 and raw[1, col("Cardiomegaly")] == 1.0
    assert np.isnan(raw[2]).all()
    assert (table.n_patients, table.n_studies, table.n_images) == (2, 3, 3)
    assert table.skipped == []


def test_chexpert_bad_rows_are_skipped_with_line_and_reason(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "train.csv",
        [
            CHEXPERT_HEADER,
            chexpert_row("CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg", {}),
            chexpert_row(
                "CheXpert-v1.0/train/patient00002/study1/view1_frontal.jpg", {"Edema": "2.0"}
            ),
            chexpert_row("somewhere/else/image.jpg", {"Edema": "1.0"}),
            chexpert_row(
                "CheXpert-v1.0/train/patient00003/study1/view1_frontal.jpg", {"Fracture": "yes"}
            ),
            chexpert_row("CheXpert-v1.0/train/patient00004/study1/view1_frontal.jpg", {}),
        ],
    )
    table = read_labels("chexpert", csv)
    assert table.frame["patient_id"].tolist() == ["patient00001", "patient00004"]
    assert [row.line for row in table.skipped] == [3, 4, 5]
    assert "'Edema' has value '2.0'" in table.skipped[0].reason
    assert "patient00002" in table.skipped[0].path
    assert "layout" in table.skipped[1].reason
    assert "'Fracture' has value 'yes'" in str(table.skipped[2])


def test_missing_columns_raise_naming_file_and_columns(tmp_path: Path) -> None:
    csv = _write(tmp_path / "odd.csv", ["Path,Sex,Edema", "a/b.jpg,Male,1.0"])
    with pytest.raises(DatasetError) as err:
        read_labels("chexpert", csv)
    message = str(err.value)
    assert "odd.csv" in message and "'No Finding'" in message and "'Support Devices'" in message


def test_missing_file_and_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not found"):
        read_labels("chexpert", tmp_path / "none.csv")
    with pytest.raises(DatasetError, match="unknown dataset 'padchest'"):
        read_labels("padchest", tmp_path / "none.csv")
    with pytest.raises(DatasetError, match="no option"):
        read_labels("chexpert", tmp_path / "none.csv", label_set="nih")


def test_root_checks_files_and_skips_missing_ones(tmp_path: Path) -> None:
    present = "CheXpert-v1.0/train/patient00001/study1/view1_frontal.jpg"
    absent = "CheXpert-v1.0/train/patient00002/study1/view1_frontal.jpg"
    (tmp_path / present).parent.mkdir(parents=True)
    (tmp_path / present).write_bytes(b"jpeg")
    csv = _write(
        tmp_path / "train.csv",
        [CHEXPERT_HEADER, chexpert_row(present, {}), chexpert_row(absent, {})],
    )
    table = read_labels("chexpert", csv, root=tmp_path)
    assert table.frame["path"].tolist() == [present]
    assert len(table.skipped) == 1
    assert table.skipped[0].line == 3
    assert "image file not found" in table.skipped[0].reason
    assert table.image_path(0) == tmp_path / present
    assert table.frame["source_line"].tolist() == [2]


NIH_HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]"
)


def _nih_file(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "Data_Entry_2017.csv",
        [
            NIH_HEADER,
            "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143",
            "00000001_001.png,Cardiomegaly|Emphysema|Mass,1,1,58,M,PA,2894,2729,0.143,0.143",
            "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171",
            "00000003_000.png,Hernia|Dragon,0,3,81,F,PA,2500,2048,0.171,0.171",
            "00000004_000.png,Effusion|Nodule|Pleural_Thickening,0,4,60,F,AP,2500,2048,0.171,0.171",
            "00000005_000.png,,0,5,60,F,AP,2500,2048,0.171,0.171",
        ],
    )


def test_nih_native_labels_and_bad_rows(tmp_path: Path) -> None:
    table = read_labels("nih", _nih_file(tmp_path))
    assert table.labels == list(NIH_LABELS)
    assert table.frame["path"].tolist() == [
        "00000001_000.png",
        "00000001_001.png",
        "00000002_000.png",
        "00000004_000.png",
    ]
    assert table.frame["study_id"].tolist() == ["1/0", "1/1", "2/0", "4/0"]
    frame = table.frame
    assert frame["Cardiomegaly"].tolist() == [1, 1, 0, 0]
    assert frame["Emphysema"].tolist() == [0, 1, 0, 0]
    assert frame["No Finding"].tolist() == [0, 0, 1, 0]
    assert not np.isnan(table.raw).any()
    assert [(row.line, row.path) for row in table.skipped] == [
        (5, "00000003_000.png"),
        (7, "00000005_000.png"),
    ]
    assert "unknown finding 'Dragon'" in table.skipped[0].reason
    assert "empty" in table.skipped[1].reason
    assert frame["sex"].tolist() == ["M", "M", "M", "F"]


def test_nih_mapped_to_overread_labels(tmp_path: Path) -> None:
    table = read_labels("nih", _nih_file(tmp_path), label_set="overread")
    assert table.labels == list(CHEXPERT_LABELS)
    frame = table.frame
    assert frame["Lung Lesion"].tolist() == [0, 1, 0, 1]  # Mass or Nodule
    assert frame["Pleural Effusion"].tolist() == [0, 0, 0, 1]
    # Pleural_Thickening makes Pleural Other positive; its absence leaves it blank.
    other = frame["Pleural Other"].tolist()
    assert other[3] == 1 and all(math.isnan(v) for v in other[:3])
    assert frame["Fracture"].isna().all() and frame["Support Devices"].isna().all()


def test_nih_root_finds_images_in_subfolders(tmp_path: Path) -> None:
    images = tmp_path / "nih" / "images_001" / "images"
    images.mkdir(parents=True)
    for name in ("00000001_000.png", "00000002_000.png"):
        (images / name).write_bytes(b"png")
    table = read_labels("nih", _nih_file(tmp_path), root=tmp_path / "nih")
    assert table.frame["path"].tolist() == [
        "images_001/images/00000001_000.png",
        "images_001/images/00000002_000.png",
    ]
    reasons = [row.reason for row in table.skipped]
    assert sum("image file not found" in r for r in reasons) == 2


def test_nih_bboxes(tmp_path: Path) -> None:
    csv = _write(
        tmp_path / "BBox_List_2017.csv",
        [
            "Image Index,Finding Label,Bbox [x,y,w,h],,,",
            "00013118_008.png,Atelectasis,225.0,547.0,86.5,79.0",
            "00014716_007.png,Infiltrate,686.0,131.5,185.5,313.5",
        ],
    )
    boxes = read_nih_bboxes(csv)
    assert boxes["label"].tolist() == ["Atelectasis", "Infiltration"]
    assert boxes.loc[0, ["x", "y", "w", "h", "x1", "y1"]].tolist() == [
        225.0,
        547.0,
        86.5,
        79.0,
        311.5,
        626.0,
    ]


def test_mimic_studies_images_and_split(tmp_path: Path) -> None:
    labels = sorted(CHEXPERT_LABELS)  # MIMIC's columns are alphabetical
    header = "subject_id,study_id," + ",".join(labels)
    row_a = ["10000032", "50414267"] + ["" for _ in labels]
    row_a[2 + labels.index("No Finding")] = "1.0"
    row_b = ["10000032", "53189527"] + ["" for _ in labels]
    row_b[2 + labels.index("Edema")] = "-1.0"
    row_c = ["10000764", "57375967"] + ["" for _ in labels]
    row_c[2 + labels.index("Pneumonia")] = "1.0"
    chexpert = _write(
        tmp_path / "mimic-cxr-2.0.0-chexpert.csv",
        [header, *(",".join(r) for r in (row_a, row_b, row_c))],
    )
    table = read_labels("mimic", chexpert)
    assert table.frame["path"].tolist()[0] == "files/p10/p10000032/s50414267"
    assert (table.n_patients, table.n_studies, len(table)) == (2, 3, 3)
    assert table.frame["Edema"].tolist()[1] == -1.0

    metadata = _write(
        tmp_path / "mimic-cxr-2.0.0-metadata.csv",
        [
            "dicom_id,subject_id,study_id,PerformedProcedureStepDescription,ViewPosition,Rows,Columns",
            "02aa804e,10000032,50414267,CHEST (PA AND LAT),PA,3056,2544",
            "174413ec,10000032,50414267,CHEST (PA AND LAT),LATERAL,3056,2544",
            "2a2277a9,10000032,53189527,CHEST (PA AND LAT),PA,3056,2544",
            "ffffffff,19999999,59999999,CHEST (PA AND LAT),PA,3056,2544",
        ],
    )
    split = _write(
        tmp_path / "mimic-cxr-2.0.0-split.csv",
        [
            "dicom_id,study_id,subject_id,split",
            "02aa804e,50414267,10000032,train",
            "174413ec,50414267,10000032,train",
            "2a2277a9,53189527,10000032,test",
        ],
    )
    with pytest.raises(DatasetError, match="metadata"):
        read_labels("mimic", chexpert, split=split)
    images = read_labels("mimic", chexpert, metadata=metadata, split=split)
    assert images.frame["path"].tolist() == [
        "files/p10/p10000032/s50414267/02aa804e.jpg",
        "files/p10/p10000032/s50414267/174413ec.jpg",
        "files/p10/p10000032/s53189527/2a2277a9.jpg",
    ]
    assert images.frame["view"].tolist() == ["PA", "LATERAL", "PA"]
    assert images.frame["split"].tolist() == ["train", "train", "test"]
    assert images.frame["No Finding"].tolist()[:2] == [1.0, 1.0]
    # The study of subject 10000764 has labels but no image; the unlabelled image is noted.
    assert len(images.skipped) == 1 and "57375967" in images.skipped[0].reason
    assert images.skipped[0].line == 4
    assert any("1 image(s)" in w for w in images.warnings)


def test_folder_dataset_detects_labels_and_checks_files(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        (tmp_path / name).write_bytes(b"png")
    csv = _write(
        tmp_path / "labels.csv",
        [
            "path,patient_id,Nodule,Effusion,site",
            "a.png,P1,1,0,north",
            "b.png,P2,-1,,south",
            "c.png,P3,0,0,north",
        ],
    )
    table = read_labels("folder", csv)
    assert table.labels == ["Nodule", "Effusion"]
    assert table.frame["site"].tolist() == ["north", "south"]
    assert table.root == tmp_path
    assert [row.line for row in table.skipped] == [4]
    with pytest.raises(DatasetError, match="'Hernia'"):
        read_labels("folder", csv, labels=["Nodule", "Hernia"])
    no_patient = _write(tmp_path / "np.csv", ["path,Nodule", "a.png,1"])
    alone = read_labels("folder", no_patient)
    assert alone.frame["patient_id"].tolist() == ["a.png"]
    assert "no patient column" in alone.warnings[0]


def test_phantom_labels_and_truth(tmp_path: Path) -> None:
    cohort = write_phantom_cohort(tmp_path / "cohort", patients=4, studies=2, with_images=True)
    noisy = read_labels("phantom", cohort / "labels.csv")
    truth = read_labels("phantom", cohort / "labels.csv", truth=True)
    also_truth = read_labels("phantom-truth", cohort)
    assert noisy.dataset == "phantom" and truth.dataset == "phantom-truth"
    assert len(noisy) == len(truth) == len(also_truth) == 8
    assert noisy.frame["path"].tolist() == truth.frame["path"].tolist()
    assert noisy.frame["patient_id"].tolist()[:3] == ["PAT00000", "PAT00000", "PAT00001"]
    assert noisy.n_studies == 8
    assert set(np.unique(noisy.raw[np.isfinite(noisy.raw)])) == {-1.0, 0.0, 1.0}
    assert np.isnan(noisy.raw).any()
    assert set(np.unique(truth.raw)) == {0.0, 1.0}
    assert noisy.frame["site"].tolist()[:2] == ["site-A", "site-A"]
    assert {"group", "sex", "age", "sop_instance_uid"} <= set(noisy.frame.columns)
    assert noisy.root == cohort and noisy.image_path(0).is_file()
    (cohort / noisy.frame["path"].iat[0]).unlink()
    again = read_labels("phantom", cohort)
    assert len(again) == 7 and again.skipped[0].line == 2
