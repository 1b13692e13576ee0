from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image as PilImage

from overread.models import Registry
from overread.models.int8_tuning import INT8_TOLERANCE


def _bundled_manifest():  # type: ignore[no-untyped-def]
    return Registry("unused-registry-root").load("cxr-default").manifest


@pytest.fixture(autouse=True)
def _private_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))


def test_predict_prints_findings_and_writes_an_overlay(
    run_cli,
    cxr_dicom: Callable[..., Path],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    dicom = cxr_dicom("chest.dcm")
    out = tmp_path / "out"
    status, stdout, stderr = run_cli("predict", dicom, "--out", out)
    assert status == 0, stderr
    manifest = _bundled_manifest()
    assert f"cxr-default {manifest.version} onnx/int8" in stdout
    assert "Pneumothorax" in stdout and "overlay:" in stdout
    assert ("untrained placeholder" in stderr) is not manifest.trained
    overlays = sorted(out.glob("*.png"))
    assert overlays
    with PilImage.open(overlays[0]) as picture:
        size = 2 * manifest.input.size
        assert picture.mode == "RGB" and picture.size == (size, size)
    results = json.loads((out / "results.json").read_text())
    assert results[0]["ok"] is True and sorted(results[0]["overlays"]) == [str(p) for p in overlays]


def test_predict_json_and_bad_files(
    run_cli,
    cxr_dicom: Callable[..., Path],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    folder = tmp_path / "study"
    folder.mkdir()
    cxr_dicom("study/a.dcm")
    cxr_dicom("study/b.dcm")
    (folder / "broken.dcm").write_bytes(b"DICM but not really")
    png = tmp_path / "film.png"
    PilImage.new("L", (120, 100), color=90).save(png)
    status, stdout, stderr = run_cli("predict", folder, png, tmp_path / "missing.dcm", "--json")
    assert status == 1
    records = [json.loads(line) for line in stdout.splitlines()]
    assert [Path(r["path"]).name for r in records] == [
        "a.dcm",
        "b.dcm",
        "broken.dcm",
        "film.png",
        "missing.dcm",
    ]
    assert [r["ok"] for r in records] == [True, True, False, True, False]
    good = records[0]
    assert set(good) >= {"path", "ok", "error", "model", "findings"}
    assert set(good["model"]) >= {"name", "version", "sha256"}
    assert set(good["findings"][0]) >= {"label", "probability", "positive", "threshold_proximity"}
    assert len(good["findings"]) == 14
    error_lines = [line for line in stderr.splitlines() if not line.startswith("warning:")]
    assert error_lines == [
        f"{folder / 'broken.dcm'}: {records[2]['error']}",
        f"{tmp_path / 'missing.dcm'}: no such file",
    ]


@pytest.mark.parametrize("where", ["file", "file/out"])
def test_predict_out_that_cannot_be_a_folder_is_one_line(
    run_cli,
    cxr_dicom: Callable[..., Path],
    tmp_path: Path,
    where: str,  # type: ignore[no-untyped-def]
) -> None:
    (tmp_path / "file").write_text("not a folder\n")
    status, stdout, stderr = run_cli("predict", cxr_dicom("chest.dcm"), "--out", tmp_path / where)
    assert status == 2
    assert stdout == ""  # refused before any image is read
    assert stderr.startswith(f"error: --out {tmp_path / where}: ") and stderr.count("\n") == 1
    assert (tmp_path / "file").read_text() == "not a folder\n"


def test_predict_with_an_unknown_model_is_a_clear_error(
    run_cli, cxr_dicom: Callable[..., Path]
) -> None:  # type: ignore[no-untyped-def]
    status, _, stderr = run_cli("predict", cxr_dicom(), "--model", "no-such-model")
    assert status == 2
    assert stderr.startswith("error: no model package 'no-such-model'")


def test_export_rebuilds_onnx_and_int8(run_cli, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "exported"
    status, stdout, stderr = run_cli(
        "export",
        "cxr-default",
        "--onnx",
        "--int8",
        "--out",
        out,
        "--calibration-images",
        "16",
        "--json",
    )
    assert status == 0, stderr
    report = json.loads(stdout)
    assert report["fp32_vs_torch_max_abs_diff"] < 1e-4
    # Within the drift the runtime accepts before it serves an INT8 model (1.5.2: 0.049 on
    # 16 calibration phantoms; 8 are too few for its 16 x 16 map: 0.066).
    assert report["int8_vs_fp32_max_prob_diff"] < INT8_TOLERANCE
    assert report["cam_output"] is True
    status, stdout, _ = run_cli("models", "verify", out)
    assert status == 0
    status, _, stderr = run_cli("export", "cxr-default", "--onnx")
    assert status == 2 and "bundled packages are read-only" in stderr


def test_predict_writes_the_pdf_report_of_the_study(
    run_cli,
    cxr_dicom: Callable[..., Path],
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    pypdf = pytest.importorskip("pypdf")
    dicom = cxr_dicom("chest.dcm", seed=7)
    target = tmp_path / "reports" / "chest.pdf"
    status, stdout, stderr = run_cli("predict", dicom, "--pdf", target)
    assert status == 0, stderr
    assert f"PDF report: {target}" in stdout
    reader = pypdf.PdfReader(target)
    text = " ".join(" ".join((p.extract_text() or "").split()) for p in reader.pages)
    assert "NOT VERIFIED BY A RADIOLOGIST" in text
    assert "PHANTOM, Chest" in text and "P0007" in text
    assert "Pneumothorax" in text


def test_predict_pdf_needs_a_dicom_input(
    run_cli,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    png = tmp_path / "film.png"
    PilImage.new("L", (120, 100), color=90).save(png)
    status, _, stderr = run_cli("predict", png, "--pdf", tmp_path / "r.pdf")
    assert status == 1
    assert stderr.strip().splitlines()[-1].startswith("error: --pdf")
    assert "Traceback" not in stderr
    assert not (tmp_path / "r.pdf").exists()
