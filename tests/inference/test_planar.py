"""Planar (2-D) lung-field segmentation: the preset, the package, the pipeline, the
SEG and the evaluation, on chest X-ray phantoms."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydantic import ValidationError
from tests.service.outputs.conftest import dciodvfy_errors

from overread.inference import open_pipeline
from overread.inference.planar import PlanarPipeline, lung_field
from overread.models.manifest import Manifest
from overread.models.package import load_package
from overread.phantom import generate_cohort
from overread.service.config import Route
from overread.service.outputs.volume import build_volume_outputs
from overread.service.routing import InstanceFacts, Router
from overread.training.cxr_seg import (
    mask_to_model,
    parse_seg_config,
    run_seg_training,
    seg_toml,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The preset trained end to end on a tiny cohort (small net, one epoch)."""
    out = tmp_path_factory.mktemp("lung-seg")
    data = seg_toml(None, "cxr-lung-seg")
    assert data is not None
    cfg = parse_seg_config(
        data,
        {
            "output": str(out),
            "data.train_n": 6,
            "data.test_n": 3,
            "data.image_size": 96,
            "model.size": 64,
            "model.channels": [4, 8, 16],
            "optim.epochs": 1,
            "optim.batch_size": 3,
        },
    )
    return run_seg_training(cfg, echo=lambda _: None)


def test_the_preset_trains_end_to_end_and_the_package_verifies(trained: Any, run_cli: Any) -> None:
    metrics = trained.metrics
    assert metrics["train_images"] == 6 and metrics["iterations"] == 2
    assert 0.0 <= metrics["test_dice_model_grid"]["mean"] <= 1.0
    package = load_package(trained.package)
    manifest = package.manifest
    assert manifest.task.value == "segmentation" and manifest.architecture == "cxr-unet2d"
    assert manifest.volume is not None and manifest.volume.planar
    assert manifest.volume.postprocess == "lung-field"
    assert manifest.accepts.modalities == ["CR", "DX"]
    assert manifest.input.size == 64 and manifest.input.chain[-1]["name"] == "resize"
    assert [c.value for c in manifest.labels[0].codes] == ["39607008"]
    status, _, err = run_cli("models", "verify", trained.package)
    assert status == 0, err
    assert isinstance(open_pipeline(str(trained.package)), PlanarPipeline)


def test_planar_manifest_rules() -> None:
    data = json.loads(
        (
            Path(__file__).parents[2]
            / "src/overread/models/bundled/ct-threshold-baseline/manifest.json"
        ).read_text()
    )
    data.pop("signature", None)
    data["volume"]["planar"] = True
    with pytest.raises(ValidationError, match="planar"):
        Manifest.model_validate(data)  # lung-nodule is not a planar postprocess
    data["volume"]["planar"] = False
    data["volume"]["postprocess"] = "lung-field"
    with pytest.raises(ValidationError, match="planar"):
        Manifest.model_validate(data)


def test_lung_field_keeps_the_two_lungs_and_fills_holes() -> None:
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 3:15] = True
    mask[5:35, 25:37] = True
    mask[20, 8] = False  # a hole (a nodule)
    mask[1:3, 18:20] = True  # a stray blob
    kept = lung_field(mask)
    assert kept[20, 8] and not kept[1:3, 18:20].any()
    assert kept.sum() == 2 * 30 * 12


def _phantom(folder: Path, rows: int, cols: int, seed: int) -> Path:
    generate_cohort(folder, n=1, seed=seed, rows=rows, cols=cols, workers=1)
    return next((folder / "images").rglob("*.dcm"))


def test_mask_comes_back_to_the_source_grid_and_the_seg_references_the_image(
    trained: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _phantom(tmp_path / "cohort", 128, 96, seed=21)
    pipeline = PlanarPipeline(load_package(trained.package))
    # 128 x 96 letterboxes into 64 x 64 as 64 x 48 from column 8: a box over the
    # content's left half must come back as the image's left half.
    box_map = np.zeros((1, 64, 64), dtype=np.float32)
    box_map[0, :, 8:32] = 0.99
    monkeypatch.setattr(pipeline, "_probabilities", lambda x: box_map.copy())
    [output] = pipeline.predict_series([source])
    prediction = output.prediction
    assert prediction.ok and prediction.task == "segmentation"
    label_map = output.label_map
    assert label_map is not None and label_map.shape == (1, 128, 96)
    assert label_map[0][:, :47].all() and not label_map[0][:, 49:].any()
    [finding] = prediction.findings
    assert finding.label == "lung-field" and finding.positive

    datasets = build_volume_outputs(
        prediction, output.source_datasets(), label_map, output.labels, planar=True
    )
    assert [d.Modality for d in datasets] == ["SEG"]
    path = tmp_path / "seg.dcm"
    datasets[0].save_as(path, enforce_file_format=True)
    seg = hd.seg.segread(path)
    image = pydicom.dcmread(source)
    [(study, series, sop)] = seg.get_source_image_uids()
    assert (study, series, sop) == (
        image.StudyInstanceUID,
        image.SeriesInstanceUID,
        image.SOPInstanceUID,
    )
    assert (seg.Rows, seg.Columns, int(seg.NumberOfFrames)) == (128, 96, 1)
    [segment] = seg.SegmentSequence
    assert segment.SegmentLabel == "lung-field"
    [algorithm] = segment.SegmentationAlgorithmIdentificationSequence
    assert algorithm.AlgorithmName == pipeline.model.name
    assert algorithm.AlgorithmVersion == pipeline.model.version
    pixels = seg.get_pixels_by_source_instance([image.SOPInstanceUID], segment_numbers=[1])
    assert np.array_equal(pixels[0, :, :, 0] > 0, label_map[0] == 1)
    assert dciodvfy_errors(path) == []


def test_a_ct_image_is_outside_the_planar_packages_use(trained: Any, tmp_path: Path) -> None:
    source = _phantom(tmp_path / "cohort", 96, 96, seed=22)
    ds = pydicom.dcmread(source)
    ds.Modality = "CT"
    ds.save_as(source)
    [output] = PlanarPipeline(load_package(trained.package)).predict_series([source])
    prediction = output.prediction
    assert not prediction.ok and output.label_map is None
    assert prediction.error == "not analysed: modality CT is not accepted (accepts CR, DX)"
    assert prediction.gate is not None and prediction.gate.refused


def _with_header(source: Path, **values: str) -> Path:
    ds = pydicom.dcmread(source)
    for keyword, value in values.items():
        if value:
            setattr(ds, keyword, value)
        elif keyword in ds:
            delattr(ds, keyword)
    ds.save_as(source)
    return source


def test_the_input_gate_refuses_a_body_part_outside_intended_use(tmp_path: Path) -> None:
    """The classifiers' header rules, not only the modality: a DX of a hand is not
    analysed (no mask, no finding), with the gate's reason, as for the classifier."""
    source = _with_header(
        _phantom(tmp_path / "cohort", 96, 96, seed=23), Modality="DX", BodyPartExamined="HAND"
    )
    pipeline = open_pipeline("cxr-lung-seg")
    assert isinstance(pipeline, PlanarPipeline)
    [output] = pipeline.predict_series([source])
    prediction = output.prediction
    assert not prediction.ok and output.label_map is None and prediction.findings == []
    assert prediction.error == "not analysed: body part HAND is not accepted (accepts CHEST)"
    assert prediction.gate is not None and prediction.gate.refused
    assert prediction.gate.reasons == ("body part HAND is not accepted (accepts CHEST)",)
    # Its header is kept: the result says which image was refused.
    assert prediction.metadata is not None
    assert prediction.metadata.sop_instance_uid == pydicom.dcmread(source).SOPInstanceUID
    # The service's interface says the same.
    [same] = pipeline.predict([source])
    assert same.error == prediction.error and same.gate == prediction.gate

    # A reader's "analyse anyway": analysed, marked outside the intended use.
    [forced] = pipeline.predict_series([source], override_gate=True)
    assert forced.prediction.ok and forced.label_map is not None
    assert forced.prediction.outside_intended_use
    assert forced.prediction.gate is not None and forced.prediction.gate.overridden
    assert not forced.prediction.gate.refused


def test_a_header_without_modality_or_body_part_is_flagged_not_passed(tmp_path: Path) -> None:
    """A missing value the package checks is not taken as accepted: with no pixel
    check to decide it, the image is analysed and flagged with the reason."""
    source = _with_header(
        _phantom(tmp_path / "cohort", 96, 96, seed=24), Modality="", BodyPartExamined=""
    )
    [output] = open_pipeline("cxr-lung-seg").predict_series([source])
    prediction = output.prediction
    assert prediction.ok and output.label_map is not None
    assert prediction.gate is not None and prediction.gate.status == "flag"
    assert "modality, body part not in the header" in prediction.gate.reason
    assert any("not in the header" in w for w in prediction.warnings)


def test_a_chest_radiograph_passes_the_gate(tmp_path: Path) -> None:
    source = _with_header(
        _phantom(tmp_path / "cohort", 96, 96, seed=25), Modality="DX", BodyPartExamined="CHEST"
    )
    [output] = open_pipeline("cxr-lung-seg").predict_series([source])
    assert output.prediction.ok and output.prediction.gate is not None
    assert output.prediction.gate.status == "pass" and output.prediction.gate.reasons == ()


def test_evaluate_reports_dice_hd95_nsd_with_patient_level_intervals(
    trained: Any, run_cli: Any, tmp_path: Path
) -> None:
    data = Path(trained.package).parent / "test-phantoms"
    status, out, err = run_cli(
        "evaluate", "--model", trained.package, "--data", data, "--out", tmp_path / "eval"
    )
    assert status == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["images"] == 3 and metrics["model"]["label"] == "lung-field"
    assert {"dice", "hd95_mm", "nsd", "ci95", "per_image", "nsd_tolerance_mm"} <= set(metrics)
    assert set(metrics["ci95"]) == {"dice", "hd95_mm", "nsd"}
    assert all(0.0 <= r["dice"] <= 1.0 for r in metrics["per_image"])
    assert (tmp_path / "eval" / "report.html").is_file()
    assert "Dice" in out


def test_the_letterboxed_training_mask_matches_the_image_geometry() -> None:
    from overread.imaging.transforms import Letterbox

    mask = np.zeros((128, 96), dtype=bool)
    mask[:, :48] = True
    box = Letterbox.fit(128, 96, 64, 64, keep_aspect=True)
    model = mask_to_model(mask, 64, box)
    assert model[:, 8:32].all() and not model[:, 32:].any() and not model[:, :8].any()


def test_a_route_sends_radiographs_to_the_classifier_and_the_lung_fields() -> None:
    routes = [
        Route(
            name="chest-xray", modality=["CR", "DX"], body_part=["CHEST"], models=["cxr-default"]
        ),
        Route(
            name="chest-xray-lung-fields",
            modality=["CR", "DX"],
            body_part=["CHEST"],
            models=["cxr-lung-seg"],
        ),
    ]
    plan = Router(routes).plan([InstanceFacts(modality="DX", body_part="CHEST")])
    assert [p.model for p in plan] == ["cxr-default", "cxr-lung-seg"]
    assert Router(routes).plan([InstanceFacts(modality="CT", body_part="CHEST")]) == []


def test_the_bundled_package_segments_lung_fields_of_other_phantoms(tmp_path: Path) -> None:
    from PIL import Image as PILImage

    from overread.evaluation.segmentation import dice

    generate_cohort(tmp_path, n=3, seed=31, rows=320, cols=288, workers=1)
    pipeline = open_pipeline("cxr-lung-seg")
    assert isinstance(pipeline, PlanarPipeline) and pipeline.model.trained
    records = json.loads((tmp_path / "ground_truth.json").read_text())["images"]
    for record in records:
        [output] = pipeline.predict_series([tmp_path / record["path"]])
        truth = np.asarray(PILImage.open(tmp_path / record["lung_field"])) > 127
        assert output.label_map is not None and output.label_map.shape == (1, 320, 288)
        assert dice(output.label_map[0] == 1, truth) > 0.9, record["path"]


def test_predict_routes_a_radiograph_to_the_classifier_and_the_lung_fields(
    run_cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = _phantom(tmp_path / "cohort", 256, 256, seed=41)
    (tmp_path / "overread.toml").write_text(
        """
[[service.routes]]
name = "chest-xray"
modality = ["CR", "DX"]
body_part = ["CHEST"]
models = ["cxr-default"]

[[service.routes]]
name = "chest-xray-lung-fields"
modality = ["CR", "DX"]
body_part = ["CHEST"]
models = ["cxr-lung-seg"]
"""
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OVERREAD_CONFIG", raising=False)
    status, out, err = run_cli("predict", source, "--out", tmp_path / "out", "--no-trust")
    assert status == 0, err
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(r["model"]["name"] for r in results) == ["cxr-default", "cxr-lung-seg"]
    [seg_path] = (tmp_path / "out").rglob("cxr-lung-seg-SEG.dcm")
    seg = hd.seg.segread(seg_path)
    image = pydicom.dcmread(source)
    assert seg.get_source_image_uids()[0][2] == image.SOPInstanceUID
    assert "lung-field:" in out


def test_train_cli_lists_and_resolves_the_preset(run_cli: Any, tmp_path: Path) -> None:
    status, out, _ = run_cli("train", "--list-presets")
    assert status == 0 and "cxr-lung-seg" in out.split()
    status, out, _ = run_cli(
        "train", "--preset", "cxr-lung-seg", "--set", "optim.epochs=2",
        "-o", tmp_path / "o", "--show-config",
    )  # fmt: skip
    assert status == 0
    shown = json.loads(out)
    assert shown["kind"] == "cxr-segmentation" and shown["optim"]["epochs"] == 2
    assert shown["model"]["size"] == 128 and Path(shown["output"]) == tmp_path / "o"
    status, _, err = run_cli(
        "train", "--preset", "cxr-lung-seg", "--set", "optim.loss=focal", "--show-config"
    )
    assert status != 0 and "optim.loss" in err and "Traceback" not in err


def test_evaluate_refuses_a_cohort_without_lung_fields(run_cli: Any, tmp_path: Path) -> None:
    generate_cohort(tmp_path / "c", n=1, seed=61, rows=96, cols=96, workers=1)
    truth = tmp_path / "c" / "ground_truth.json"
    data = json.loads(truth.read_text())
    for record in data["images"]:
        record.pop("lung_field")
    truth.write_text(json.dumps(data))
    status, _, err = run_cli(
        "evaluate", "--model", "cxr-lung-seg", "--data", tmp_path / "c", "--out", tmp_path / "e"
    )
    assert status != 0 and "no lung-field masks" in err and "Traceback" not in err
