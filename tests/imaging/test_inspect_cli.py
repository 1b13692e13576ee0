"""``overread inspect``: output, exit status, one line per bad file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pydicom.data

PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "overread" / "examples"


def test_demo_examples_directory_reads_cleanly(run_cli):
    status, out, err = run_cli("inspect", EXAMPLES)
    assert status == 0, err
    assert "CT_small.dcm" in out
    assert "CT  128x128" in out
    assert "min -896  max 1167" in out
    assert err == ""


def test_json_lines_and_failures_carry_on(run_cli, tmp_path):
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", tmp_path / "a.dcm")
    (tmp_path / "b.dcm").write_bytes(b"\x00" * 10)
    shutil.copy(PYDICOM_FILES / "MR_truncated.dcm", tmp_path / "c.dcm")
    sub = tmp_path / "deeper"
    sub.mkdir()
    shutil.copy(PYDICOM_FILES / "MR_small_RLE.dcm", sub / "d")
    status, out, err = run_cli("inspect", "--json", tmp_path)
    assert status == 1
    rows = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["path"]).name for r in rows] == ["a.dcm", "b.dcm", "c.dcm", "d"]
    required = {"path", "ok", "error", "sop_instance_uid", "modality", "rows", "columns"}
    required |= {"frames", "transfer_syntax"}
    assert all(required <= set(r) for r in rows)
    ok = {Path(r["path"]).name: r["ok"] for r in rows}
    assert ok == {"a.dcm": True, "b.dcm": False, "c.dcm": False, "d": True}
    assert rows[3]["transfer_syntax"] == "1.2.840.10008.1.2.5"
    assert rows[0]["modality"] == "CT" and rows[0]["min"] == -896.0
    lines = err.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(str(tmp_path / "b.dcm") + ": ")
    assert lines[1].startswith(str(tmp_path / "c.dcm") + ": Pixel Data holds")


def test_whole_pydicom_corpus_never_crashes(run_cli):
    status, out, err = run_cli("inspect", "--json", PYDICOM_FILES)
    assert status == 1  # the corpus holds broken files on purpose
    rows = [json.loads(line) for line in out.splitlines()]
    failures = [r for r in rows if not r["ok"]]
    assert len(err.strip().splitlines()) == len(failures)
    assert sum(r["ok"] for r in rows) >= 70
    assert all("Traceback" not in line for line in err.splitlines())


def test_over_limit_frames_refused_before_decoding(run_cli, tmp_path, monkeypatch, write_dicom):
    path = write_dicom(np.zeros((3, 4, 4), np.uint16), name="multi.dcm")
    monkeypatch.setenv("OVERREAD_IMAGING__MAX_FRAMES", "2")
    status, _, err = run_cli("inspect", path)
    assert status == 1
    assert "declares 3 frames, more than the limit of 2" in err


def test_missing_path(run_cli, tmp_path):
    status, _, err = run_cli("inspect", tmp_path / "nope.dcm")
    assert status == 1
    assert err.strip() == f"{tmp_path / 'nope.dcm'}: no such file"


def test_codecs_listing(run_cli):
    status, out, _ = run_cli("inspect", "--codecs")
    assert status == 0
    assert "RLE Lossless" in out and "available" in out
    status, _, err = run_cli("inspect")
    assert status == 2 and "at least one file" in err


def test_human_output_shows_window_and_warnings(run_cli):
    status, out, _ = run_cli(
        "inspect", PYDICOM_FILES / "MR_small_padded.dcm", PYDICOM_FILES / "JPEG2000.dcm"
    )
    assert status == 0
    assert "warning: The pixel data is 8320 bytes long" in out
    assert "JPEG 2000 Image Compression" in out


def test_inspect_function_reports_metadata_of_refused_part10_files():
    from overread.imaging import inspect

    result = inspect(PYDICOM_FILES / "MR_truncated.dcm")
    assert not result.ok
    assert result.metadata is not None and result.metadata.modality == "MR"
    assert result.to_json()["rows"] == 64


def test_png_and_nifti_in_a_directory(run_cli, tmp_path):
    import nibabel as nib
    from PIL import Image as PILImage

    PILImage.fromarray(np.full((8, 6), 7, np.uint8)).save(tmp_path / "a.png")
    nib.save(nib.Nifti1Image(np.ones((4, 5, 3), np.int16), np.eye(4)), tmp_path / "b.nii.gz")
    (tmp_path / "notes.md").write_text("not an image, skipped inside a directory")
    status, out, err = run_cli("inspect", "--json", tmp_path)
    assert status == 0, err
    rows = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    assert set(rows) == {"a.png", "b.nii.gz"}
    assert rows["a.png"]["format"] == "png" and rows["a.png"]["max"] == 7.0
    assert rows["b.nii.gz"]["frames"] == 3 and rows["b.nii.gz"]["rows"] == 5
    assert rows["b.nii.gz"]["transfer_syntax"] is None


def test_json_leaves_out_the_patients_name_and_birth_date(run_cli, tmp_path):
    ds = pydicom.dcmread(PYDICOM_FILES / "CT_small.dcm")
    ds.PatientName = "Doe^Jane"
    ds.PatientBirthDate = "19700101"
    ds.PatientID = "MRN-1"
    ds.save_as(tmp_path / "named.dcm")
    status, out, err = run_cli("inspect", "--json", tmp_path / "named.dcm")
    assert status == 0, err
    [row] = [json.loads(line) for line in out.splitlines()]
    assert row["metadata"]["patient_id"] == "MRN-1"
    assert "patient_name" not in row["metadata"]
    assert "patient_birth_date" not in row["metadata"]
    assert "Doe" not in out and "19700101" not in out
