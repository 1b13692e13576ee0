"""The centre-heatmap nodule detector: decoding, training, package, pipeline, SR, evaluation."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest

from overread.cli import main
from overread.inference.ct_evaluation import evaluate_ct_package
from overread.inference.volume import VolumePipeline
from overread.models.centre_heatmap import decode_peaks
from overread.models.manifest import Task
from overread.models.package import load_package
from overread.service.outputs.volume import build_volume_outputs
from overread.training.ct_detect import (
    CHANNELS,
    detection_targets,
    parse_detection_config,
    predict_detections,
    train_detector,
    write_detection_package,
)

REPO = Path(__file__).resolve().parents[2]


def _blob(shape: tuple[int, int, int], centre: tuple[int, int, int], sigma: float) -> np.ndarray:
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    d2 = (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2
    return np.exp(-d2 / (2 * sigma**2)).astype(np.float32)


def test_peaks_are_local_maxima_with_their_sizes_strongest_first() -> None:
    shape = (20, 30, 30)
    heat = 0.9 * _blob(shape, (5, 8, 8), 1.5) + 0.6 * _blob(shape, (14, 20, 22), 1.5)
    sizes = np.full((3, *shape), 0.25, dtype=np.float32)
    sizes[:, 14, 20, 22] = 0.5
    peaks = decode_peaks(heat, sizes, (2.0, 2.0, 2.0), floor=0.1, max_detections=5, max_size_mm=40)
    assert [p.centre for p in peaks] == [(5.0, 8.0, 8.0), (14.0, 20.0, 22.0)]
    assert peaks[0].score == pytest.approx(0.9, abs=1e-3)
    assert peaks[0].size_mm == (10.0, 10.0, 10.0) and peaks[1].size_mm == (20.0, 20.0, 20.0)
    # The floor and the cap both bite.
    assert (
        len(decode_peaks(heat, sizes, (2, 2, 2), floor=0.7, max_detections=5, max_size_mm=40)) == 1
    )
    assert (
        len(decode_peaks(heat, sizes, (2, 2, 2), floor=0.1, max_detections=1, max_size_mm=40)) == 1
    )


def test_a_weaker_peak_inside_a_stronger_ones_box_is_one_nodule() -> None:
    shape = (20, 20, 20)
    heat = 0.9 * _blob(shape, (10, 10, 10), 1.0) + 0.5 * _blob(shape, (10, 10, 14), 1.0)
    big = np.full((3, *shape), 0.5, dtype=np.float32)  # 20 mm boxes: 10 mm half-size
    assert len(decode_peaks(heat, big, (2, 2, 2), floor=0.1, max_detections=5, max_size_mm=40)) == 1
    small = np.full((3, *shape), 0.1, dtype=np.float32)  # 4 mm boxes
    assert (
        len(decode_peaks(heat, small, (2, 2, 2), floor=0.1, max_detections=5, max_size_mm=40)) == 2
    )


def test_targets_peak_at_each_centre_with_the_nodules_size() -> None:
    heat, size = detection_targets(
        (16, 16, 16), [(4.2, 5.0, 6.0), (11.0, 11.0, 11.0)], [2, 6], [0.1, 0.3]
    )
    assert heat[4, 5, 6] == 1.0 and heat[11, 11, 11] == 1.0
    assert heat.max() == 1.0 and heat[0, 15, 0] < 1e-3
    assert size[:, 4, 5, 6].tolist() == pytest.approx([0.1] * 3)
    assert size[:, 11, 11, 11].tolist() == pytest.approx([0.3] * 3)


def test_the_preset_is_a_detection_config(run_cli) -> None:  # type: ignore[no-untyped-def]
    status, out, _ = run_cli("train", "--preset", "ct-nodule-detection", "--show-config")
    assert status == 0
    cfg = json.loads(out)
    assert cfg["kind"] == "ct-detection" and cfg["model"]["target_spacing"] >= 2.5
    shipped = REPO / "src" / "overread" / "training" / "presets" / "ct-nodule-detection.toml"
    assert (REPO / "configs" / "ct-nodule-detection.toml").read_text() == shipped.read_text()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object, object]:
    root = tmp_path_factory.mktemp("ctdet")
    cfg = parse_detection_config(
        {
            "kind": "ct-detection",
            "output": str(root / "run"),
            "data": {"train_n": 3, "size": 64},
            "model": {"channels": [4, 8, 16], "patch": [16, 16, 16], "target_spacing": 6.0},
            "optim": {"iterations": 3, "batch_size": 2},
            "inference": {"peak_floor": 0.01},
        }
    )
    net, result = train_detector(cfg, echo=lambda _line: None)
    assert result.checkpoint.is_file() and np.isfinite(result.final_loss)
    package = write_detection_package(net, cfg, root / "pkg")
    args = ["phantom", "ct", "--n", "2", "--seed", "3", "--size", "64", "--out", str(root / "ct")]
    assert main([*args, "-q"]) == 0
    return package, root / "ct", net, cfg


def test_the_package_is_a_verified_detection_package(tiny, run_cli) -> None:  # type: ignore[no-untyped-def]
    package = tiny[0]
    status, out, err = run_cli("models", "verify", str(package))
    assert status == 0, out + err
    manifest = load_package(package).manifest
    assert manifest.task is Task.DETECTION and manifest.label_names == list(CHANNELS)
    assert manifest.volume is not None and manifest.volume.postprocess == "centre-heatmap"
    assert manifest.volume.spacing_mm == (6.0, 6.0, 6.0)
    assert manifest.volume.hu_window == (-1000.0, 400.0)


def test_the_pipeline_gives_boxes_and_an_sr_without_a_seg(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    package, cohort, net, cfg = tiny
    series = sorted((cohort / "ct0000" / "series").glob("*.dcm"))
    [output] = VolumePipeline(load_package(package)).predict_series(series)
    prediction = output.prediction
    assert prediction.ok and prediction.task == "detection" and output.label_map is None
    assert prediction.regions, "the untrained heatmap still has peaks over a 0.01 floor"
    assert len(prediction.regions) <= cfg.inference.max_detections
    for region in prediction.regions:
        x0, y0, z0, x1, y1, z1 = region.box_mm
        cx, cy, cz = region.centre_mm
        assert x0 <= cx <= x1 and y0 <= cy <= y1 and z0 <= cz <= z1
        assert 0 < region.score <= 1 and region.volume_mm3 > 0 and region.segment_number is None
        assert region.density in {"solid", "part-solid", "ground-glass"}
    scores = [r.score for r in prediction.regions]
    assert scores == sorted(scores, reverse=True)
    # The pipeline decodes what training's predictor decodes (same peaks, same order).
    volume = output.volume
    direct = predict_detections(net, volume.pixels, volume.spacing, cfg)
    assert [round(d.score, 5) for d in direct.detections] == [round(s, 5) for s in scores]
    [finding] = prediction.findings
    assert finding.label == "nodule" and finding.positive

    [sr] = build_volume_outputs(prediction, output.source_datasets(), None, output.labels)
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    groups = hd.sr.srread(path).content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(prediction.regions)
    assert all(g.referenced_segment is None and g.roi is not None for g in groups)
    if shutil.which("dciodvfy") is not None:
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [x for x in (done.stdout + done.stderr).splitlines() if x.startswith("Error")]
        assert errors == []


def test_evaluate_reports_froc_and_cpm_without_mask_figures(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    package, cohort, _, _ = tiny
    metrics = evaluate_ct_package(str(package), cohort, resamples=50)
    assert metrics["model"]["task"] == "detection"
    detection = metrics["detection"]
    assert {"sensitivity_at_1fp", "cpm", "curve"} <= set(detection)
    assert 0.0 <= detection["cpm"] <= 1.0
    assert set(metrics["by_size"]) and set(metrics["by_density"]) == {
        "solid",
        "part-solid",
        "ground-glass",
    }
    assert all("cpm" in b for b in metrics["by_size"].values() if b.get("nodules"))
    assert metrics["lung_dice"] is None and metrics["masks"] is False
    status = main(
        ["evaluate", "--model", str(package), "--data", str(cohort), "--out", str(tmp_path / "r")]
    )
    assert status in (0, None)
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["detection"]["cpm"] == (
        pytest.approx(detection["cpm"])
    )


BUNDLED = Path(__file__).parent / "assets" / "ct-nodule-detection"


def test_the_committed_trained_detector_finds_the_big_solid_nodules() -> None:
    """The small package trained by the preset (committed, < 5 MB) on unseen phantoms."""
    from overread.imaging import ImageMetadata
    from overread.imaging.series import Volume
    from overread.phantom.ct import make_case

    pipeline = VolumePipeline(load_package(BUNDLED))
    big, hit, marks = 0, 0, 0
    for index in range(6):
        case = make_case(5, index, size=128, missing_rate=0.0)
        geo = case.geometry
        spacing = (geo.slice_thickness, geo.pixel_spacing, geo.pixel_spacing)
        volume = Volume(
            pixels=case.hu.astype(np.float32),
            affine=geo.affine,
            spacing=spacing,
            metadata=ImageMetadata(),
        )
        regions = pipeline.run_volume(volume).prediction.regions
        top = regions
        marks += len(top)
        for nodule in case.nodule_truth():
            if nodule["density"] != "solid" or nodule["diameter_mm"] < 10:
                continue
            big += 1
            centre = np.asarray(nodule["centre_mm"])
            if any(
                np.linalg.norm(np.asarray(r.centre_mm) - centre) <= nodule["diameter_mm"] / 2
                for r in top
            ):
                hit += 1
    assert big >= 3
    assert hit >= big - 1, (hit, big)  # 4 of 4 when committed
