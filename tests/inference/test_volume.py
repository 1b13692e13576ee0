"""The volumetric path: CT series -> sliding windows -> nodules, SEG and TID 1500 SR."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import torch

from overread.errors import ModelPackageError
from overread.inference.nodules import categorise, compare_with_prior, density_of
from overread.inference.pipeline import Pipeline, open_pipeline
from overread.inference.volume import VolumePipeline, resample, sliding_window, upsample_plane
from overread.models import Registry, ct_cad
from overread.models.ct_baseline import NAME, write_baseline_package
from overread.models.manifest import Manifest, Task, VolumeSpec
from overread.models.package import load_package
from overread.results import Prediction, Region
from overread.service.outputs.volume import build_volume_outputs

from .ct_series import NODULES, SHAPE, SPACING, Nodule, chest_volume, write_series

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A phantom-like case folder: the series, and ground truth beside it."""
    case = tmp_path_factory.mktemp("ct") / "case0001"
    write_series(case / "series", chest_volume(SHAPE, SPACING, NODULES), SPACING)
    (case / "nodules.json").write_text(json.dumps({"nodules": 2}))
    (case / "lung.nii.gz").write_bytes(b"\x1f\x8b not really a NIfTI")
    return case


@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> VolumePipeline:
    root = tmp_path_factory.mktemp("pkg")
    return VolumePipeline(load_package(write_baseline_package(root / "seg")))


@pytest.fixture(scope="module")
def analysed(baseline: VolumePipeline, ct_dir: Path) -> Iterator[object]:
    [output] = baseline.predict_series(sorted((ct_dir / "series").glob("*.dcm")))
    yield output


def _sources(output: object) -> list[pydicom.Dataset]:
    return output.source_datasets()  # type: ignore[attr-defined,no-any-return]


def test_old_manifests_stay_valid_and_keep_their_hash() -> None:
    bundled = Registry("unused-registry-root").load("cxr-default")
    manifest = bundled.manifest
    assert manifest.task is Task.MULTI_LABEL_CLASSIFICATION and manifest.volume is None
    assert not manifest.is_volumetric
    assert manifest.signature is not None
    assert manifest.content_sha256() == manifest.signature.manifest_sha256
    assert "volume" not in json.loads((bundled.path / "manifest.json").read_text())


def test_lung_nodule_postprocess_needs_its_labels() -> None:
    data = json.loads(Registry("x").load(NAME).manifest.to_json())
    data.pop("signature")
    data["labels"] = [{"name": "lung"}, {"name": "mass"}]
    data["operating_points"] = {}
    with pytest.raises(ValueError, match="'nodule'"):
        Manifest.model_validate(data)


def test_the_bundled_baseline_is_a_segmentation_package_that_says_it_is_a_baseline() -> None:
    package = Registry("unused-registry-root").load(NAME)
    manifest = package.manifest
    assert manifest.task is Task.SEGMENTATION
    assert manifest.volume == VolumeSpec(lung_refine="classical")
    assert manifest.labels[0].name == "lung" and manifest.labels[1].name == "nodule"
    assert manifest.accepts.modalities == ["CT"]
    assert "baseline" in (package.path / "MODEL_CARD.md").read_text().lower()
    with pytest.raises(ModelPackageError, match="reads whole series"):
        Pipeline.from_name(NAME, registry=Registry("unused-registry-root"))
    assert isinstance(
        open_pipeline(NAME, registry=Registry("unused-registry-root")), VolumePipeline
    )


def test_resample_and_back_keep_geometry() -> None:
    z, _, x = np.meshgrid(np.arange(30), np.arange(40), np.arange(50), indexing="ij")
    ramp = (2.0 * x + 0.5 * z).astype(np.float32)  # linear: survives linear resampling
    low = resample(ramp, (2.5, 1.0, 1.0), (5.0, 2.0, 2.0))
    assert low.shape == (15, 20, 25)
    back = np.stack([upsample_plane(low[None], k, ramp.shape)[0] for k in range(30)])
    inner = (slice(3, -3), slice(3, -3), slice(3, -3))
    assert np.abs(back[inner] - ramp[inner]).max() < 0.6


def test_sliding_window_blends_overlapping_windows_like_one_pass() -> None:
    network = torch.nn.Conv3d(1, 2, 3, padding=1)
    volume = np.random.default_rng(0).normal(size=(40, 50, 60)).astype(np.float32)
    spec = VolumeSpec(patch_size=(16, 24, 24), overlap=0.5)
    windowed = sliding_window(network, volume, spec)
    with torch.inference_mode():
        whole = network(torch.from_numpy(volume)[None, None])[0].numpy()
    assert windowed.shape == (2, 40, 50, 60)
    # Windows see zero-free context inside; edges of windows differ only by padding.
    inner = (slice(None), slice(4, -4), slice(4, -4), slice(4, -4))
    assert np.corrcoef(windowed[inner].ravel(), whole[inner].ravel())[0, 1] > 0.99


def test_hu_window_maps_hu_to_minus_one_one_before_the_network() -> None:
    volume = np.array([-2000.0, -1000.0, -300.0, 400.0, 3000.0], np.float32).reshape(1, 1, 5)
    volume = np.repeat(np.repeat(volume, 8, axis=0), 8, axis=1)
    spec = VolumeSpec(patch_size=(8, 8, 8), hu_window=(-1000.0, 400.0))
    seen = sliding_window(torch.nn.Identity(), volume, spec)[0, 4, 4]
    assert np.allclose(seen, [-1.0, -1.0, 0.0, 1.0, 1.0], atol=1e-5)
    with pytest.raises(ValueError, match="low < high"):
        VolumeSpec(hu_window=(400.0, -1000.0))


def test_baseline_finds_the_nodules_with_their_size_density_and_place(analysed: object) -> None:
    prediction = analysed.prediction  # type: ignore[attr-defined]
    assert prediction.ok and prediction.task == "segmentation"
    regions = sorted(prediction.regions, key=lambda r: r.centre_mm[0])
    assert len(regions) == 2
    solid, glass = regions
    truth_solid, truth_glass = NODULES
    for region, truth in ((solid, truth_solid), (glass, truth_glass)):
        assert np.linalg.norm(np.subtract(region.centre_mm, truth.centre_mm)) < 2.5
        x0, y0, z0, x1, y1, z1 = region.box_mm
        cx, cy, cz = truth.centre_mm
        assert x0 < cx < x1 and y0 < cy < y1 and z0 < cz < z1
        # Within two source voxels (the 2 mm grid's partial volume) of the truth.
        assert abs(region.longest_diameter_mm - 2 * truth.radius_mm) < 3.5
    assert solid.density == "solid" and solid.category.startswith("4A")
    assert glass.density == "ground-glass" and glass.category.startswith("2")
    assert abs(glass.mean_hu - truth_glass.hu) < 60
    sphere = 4 / 3 * np.pi * truth_solid.radius_mm**3
    assert 0.5 * sphere < solid.volume_mm3 < 2.0 * sphere
    [finding] = prediction.findings
    assert finding.label == "nodule" and finding.positive


def test_a_chest_without_nodules_has_none(baseline: VolumePipeline, tmp_path: Path) -> None:
    paths = write_series(tmp_path / "clean", chest_volume(SHAPE, SPACING, []), SPACING)
    [output] = baseline.predict_series(paths)
    assert output.prediction.ok and output.prediction.regions == []
    assert not output.prediction.findings[0].positive
    lung = (output.label_map == 1).sum()
    truth = (chest_volume(SHAPE, SPACING, []) == -850).sum()
    assert 0.8 * truth < lung < 1.2 * truth


def test_seg_and_sr_reference_the_series_and_read_back(analysed: object, tmp_path: Path) -> None:
    prediction = analysed.prediction  # type: ignore[attr-defined]
    sources = _sources(analysed)
    seg, sr = build_volume_outputs(
        prediction,
        sources,
        analysed.label_map,  # type: ignore[attr-defined]
        analysed.labels,  # type: ignore[attr-defined]
        baseline=True,
    )
    seg_path, sr_path = tmp_path / "seg.dcm", tmp_path / "sr.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    sr.save_as(sr_path, enforce_file_format=True)
    read = hd.seg.segread(seg_path)
    assert read.SOPClassUID == SEGMENTATION_STORAGE
    assert read.StudyInstanceUID == sources[0].StudyInstanceUID
    labels = [item.SegmentLabel for item in read.SegmentSequence]
    assert labels == ["lung", "nodule 1", "nodule 2"]
    for item in read.SegmentSequence:
        algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
        assert algorithm.AlgorithmName == prediction.model.name
        assert algorithm.AlgorithmVersion == prediction.model.version
        assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    referenced = {
        ref.ReferencedSOPInstanceUID
        for series in read.ReferencedSeriesSequence
        for ref in series.ReferencedInstanceSequence
    }
    assert referenced <= {str(ds.SOPInstanceUID) for ds in sources}
    assert {str(s.SeriesInstanceUID) for s in read.ReferencedSeriesSequence} == {
        str(sources[0].SeriesInstanceUID)
    }
    mask = read.get_volume(combine_segments=True).array  # (slices, rows, cols) label map
    assert (mask == 2).sum() > 0 and (mask == 1).sum() > 1000

    report = hd.sr.srread(sr_path)
    assert report.SOPClassUID == COMPREHENSIVE_3D_SR
    assert report.VerificationFlag == "UNVERIFIED" and report.PreliminaryFlag == "PRELIMINARY"
    groups = report.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    by_segment = {g.referenced_segment.referenced_segment_numbers[0]: g for g in groups}
    for region in prediction.regions:
        group = by_segment[labels.index(f"nodule {region.index}") + 1]
        values = {m.name.meaning: m.value for m in group.get_measurements()}
        assert values["Volume"] == pytest.approx(region.volume_mm3, rel=1e-6)
        assert values["Diameter"] == pytest.approx(region.longest_diameter_mm, rel=1e-6)
        assert values["Attenuation Coefficient"] == pytest.approx(region.mean_hu, rel=1e-5)
        [box] = [item for item in group[0].ContentSequence if item.ValueType == "SCOORD3D"]
        assert list(np.round(box.GraphicData, 3)) == list(np.round(region.box_mm, 3))
    text = " ".join(
        str(item.TextValue)
        for item in report.ContentSequence[-1].ContentSequence
        if item.ValueType == "TEXT"
    )
    assert "Not verified by a reader" in text and "research use" in text


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed")
def test_seg_and_sr_pass_dciodvfy(analysed: object, tmp_path: Path) -> None:
    objects = build_volume_outputs(
        analysed.prediction,  # type: ignore[attr-defined]
        _sources(analysed),
        analysed.label_map,  # type: ignore[attr-defined]
        analysed.labels,  # type: ignore[attr-defined]
    )
    for index, dataset in enumerate(objects):
        path = tmp_path / f"{index}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [
            line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")
        ]
        assert errors == [], dataset.Modality


def test_detection_variant_sends_boxes_without_a_seg(ct_dir: Path, tmp_path: Path) -> None:
    package = load_package(write_baseline_package(tmp_path / "det", task=Task.DETECTION))
    assert package.manifest.task is Task.DETECTION
    [output] = VolumePipeline(package).predict_series(sorted((ct_dir / "series").glob("*.dcm")))
    assert output.label_map is None and len(output.prediction.regions) == 2
    assert all(0.5 < r.score <= 1.0 for r in output.prediction.regions)
    [sr] = build_volume_outputs(
        output.prediction, output.source_datasets(), output.label_map, output.labels
    )
    sr.save_as(tmp_path / "sr.dcm", enforce_file_format=True)
    groups = hd.sr.srread(tmp_path / "sr.dcm").content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2 and all(g.referenced_segment is None for g in groups)
    assert all(g.roi is not None for g in groups)


def _region(diameter: float, centre: tuple[float, float, float], volume: float = 100.0) -> Region:
    return Region(
        label="nodule",
        index=1,
        score=0.9,
        volume_mm3=volume,
        longest_diameter_mm=diameter,
        mean_hu=20.0,
        solid_fraction=1.0,
        density="solid",
        category=categorise("solid", diameter),
        centre_mm=centre,
        box_mm=(0, 0, 0, 1, 1, 1),
        box_voxels=(0, 0, 0, 1, 1, 1),
    )


@pytest.mark.parametrize(
    ("density", "diameter", "solid", "category"),
    [
        ("solid", 5.9, 0.0, "2"),
        ("solid", 6.0, 0.0, "3"),
        ("solid", 7.9, 0.0, "3"),
        ("solid", 8.0, 0.0, "4A"),
        ("solid", 14.9, 0.0, "4A"),
        ("solid", 15.0, 0.0, "4B"),
        ("part-solid", 5.0, 2.0, "2"),
        ("part-solid", 9.0, 5.0, "3"),
        ("part-solid", 12.0, 6.5, "4A"),
        ("part-solid", 14.0, 8.0, "4B"),
        ("ground-glass", 29.0, 0.0, "2"),
        ("ground-glass", 30.0, 0.0, "3"),
    ],
)
def test_lung_rads_style_categories(
    density: str, diameter: float, solid: float, category: str
) -> None:
    assert categorise(density, diameter, solid).split(" ")[0] == category


def test_density_from_the_solid_fraction() -> None:
    assert density_of(0.9) == "solid"
    assert density_of(0.3) == "part-solid"
    assert density_of(0.0) == "ground-glass"


def test_growth_against_the_prior_matches_by_position() -> None:
    now = [_region(9.0, (10.0, 10.0, 10.0), 380.0), _region(5.0, (80.0, 0.0, 0.0))]
    prior = [_region(6.5, (12.0, 9.0, 10.0), 140.0), _region(4.0, (-60.0, 0.0, 0.0))]
    grown, new = compare_with_prior(now, prior, prior_study="1.2.3")
    assert grown.growth is not None and grown.growth["status"] == "growing"
    assert grown.growth["change_mm"] == pytest.approx(2.5)
    assert grown.growth["prior_study"] == "1.2.3"
    assert new.growth is not None and new.growth["status"] == "new"
    [stable] = compare_with_prior([_region(7.0, (0.0, 0.0, 0.0))], [_region(6.0, (1, 1, 1))])
    assert stable.growth is not None and stable.growth["status"] == "stable"


def test_regions_survive_the_stored_summary(analysed: object) -> None:
    prediction = analysed.prediction  # type: ignore[attr-defined]
    stored = Prediction.from_summary_dict(json.loads(json.dumps(prediction.to_summary_dict())))
    assert stored.task == "segmentation"
    assert [r.to_dict() for r in stored.regions or []] == [r.to_dict() for r in prediction.regions]
    classifier = Prediction.from_summary_dict({"ok": True, "findings": []})
    assert classifier.regions is None and "regions" not in classifier.to_summary_dict()


def test_predict_routes_a_ct_folder_and_writes_seg_and_sr(
    run_cli,  # type: ignore[no-untyped-def]
    ct_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    out = tmp_path / "out"
    status, stdout, stderr = run_cli("predict", ct_dir.parent, "--out", out)
    assert status == 0, stderr
    # The default CT route names the nodule CAD.
    cad = f"{ct_cad.NAME} {ct_cad.VERSION} segmentation"
    assert cad in stdout and "nodules: 2" in stdout
    written = sorted(out.rglob("*.dcm"))
    assert [p.name for p in written] == [f"{ct_cad.NAME}-SEG.dcm", f"{ct_cad.NAME}-SR.dcm"]
    kinds = {str(pydicom.dcmread(p).SOPClassUID) for p in written}
    assert kinds == {SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR}
    [record] = json.loads((out / "results.json").read_text())
    assert record["ok"] and len(record["regions"]) == 2 and len(record["outputs"]) == 2


def test_predict_on_one_series_dir_with_the_model_named(
    run_cli,  # type: ignore[no-untyped-def]
    ct_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    out = tmp_path / "out"
    status, stdout, stderr = run_cli(
        "predict", ct_dir / "series", "--model", NAME, "--out", out, "--json"
    )
    assert status == 0, stderr
    [record] = [json.loads(line) for line in stdout.splitlines()]
    assert record["task"] == "segmentation" and len(record["regions"]) == 2
    assert len(list(out.rglob("*.dcm"))) == 2


def test_a_ct_series_not_ct_is_refused_in_one_line(
    baseline: VolumePipeline, tmp_path: Path
) -> None:
    paths = write_series(tmp_path / "mr", chest_volume((6, 32, 32), SPACING, []), SPACING)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.Modality = "MR"
        ds.save_as(path)
    [output] = baseline.predict_series(paths)
    assert not output.prediction.ok
    assert "outside the model's intended use" in (output.prediction.error or "")


def test_ground_glass_nodule_is_measured_near_its_hu(
    baseline: VolumePipeline, tmp_path: Path
) -> None:
    nodule = Nodule((24.0, 38.0, 50.0), 6.0, -500.0)
    paths = write_series(tmp_path / "ggo", chest_volume(SHAPE, SPACING, [nodule]), SPACING)
    [output] = baseline.predict_series(paths)
    [region] = output.prediction.regions
    assert region.density == "ground-glass" and abs(region.mean_hu + 500.0) < 80


def test_a_monai_unet_package_runs_through_the_same_pipeline(ct_dir: Path, tmp_path: Path) -> None:
    """How a trained 3-D network is packaged: task, labels (its output channels in
    order), operating points and the ``volume`` section; the pipeline, SEG and SR do
    not change. An untrained UNet stands in for the trained one."""
    from overread.models.networks import build_network
    from overread.models.package import write_package

    torch.manual_seed(0)
    labels = ["lung", "nodule", "nodule-centre"]
    network = build_network("ct-unet3d", in_channels=1, num_classes=3, channels=[4, 8, 16])
    path = write_package(
        tmp_path / "unet",
        network=network,
        architecture="ct-unet3d",
        arch_kwargs={"channels": [4, 8, 16]},
        labels=labels,
        input_spec={"size": 32, "channels": 1, "chain": []},
        name="ct-unet-test",
        version="0.0.1",
        intended_use="test only",
        task=Task.SEGMENTATION,
        accepts={"modalities": ["CT"]},
        operating_points={label: {"balanced": 0.5} for label in labels},
        export_onnx=False,
        volume=VolumeSpec(
            spacing_mm=(2.5, 2.5, 2.5),
            patch_size=(16, 32, 32),
            overlap=0.5,
            hu_window=(-1000.0, 400.0),
        ),
    )
    pipeline = VolumePipeline(load_package(path))
    [output] = pipeline.predict_series(sorted((ct_dir / "series").glob("*.dcm")))
    assert output.prediction.ok, output.prediction.error
    assert output.label_map is not None and output.label_map.shape == SHAPE
    objects = build_volume_outputs(
        output.prediction, output.source_datasets(), output.label_map, output.labels
    )
    assert [str(d.Modality) for d in objects][-1] == "SR"


def test_nodule_score_is_the_mean_or_the_max_and_the_default_keeps_the_hash() -> None:
    from overread.inference.volume import nodule_score

    probs = np.array([0.5, 0.6, 0.9], np.float32)
    assert nodule_score(probs, "mean") == pytest.approx(2.0 / 3.0)
    assert nodule_score(probs, "max") == pytest.approx(0.9)
    assert nodule_score(np.zeros(0, np.float32), "max") == 0.0
    bundled = Registry("unused-registry-root").load(NAME).manifest
    assert bundled.volume is not None and bundled.volume.nodule_score == "mean"
    assert bundled.signature is not None
    assert bundled.content_sha256() == bundled.signature.manifest_sha256  # hash unchanged
    as_max = bundled.model_copy(
        update={"volume": bundled.volume.model_copy(update={"nodule_score": "max"})}
    )
    assert b'"nodule_score":"max"' in as_max.canonical_bytes()
    assert b"nodule_score" not in bundled.canonical_bytes()
    assert b"clean_components" not in bundled.canonical_bytes()  # off: hash unchanged
    cleaned = bundled.model_copy(
        update={"volume": bundled.volume.model_copy(update={"clean_components": True})}
    )
    assert b'"clean_components":true' in cleaned.canonical_bytes()
    assert b'"lung_keep_fraction":0.1' in cleaned.canonical_bytes()


def test_the_probability_lung_output_does_not_fill_the_diaphragm_dome() -> None:
    from overread.inference.volume import lung_and_nodules, lung_output

    probabilities = np.zeros((2, 12, 40, 40), np.float32)
    probabilities[0, 2:10, 8:32, 8:32] = 0.9  # the lung
    probabilities[0, 2:5, 14:26, 14:26] = 0.1  # the dome: soft tissue ringed by lung
    probabilities[0, 2:10, 8:32, 8] = 0.6  # a soft edge
    filled, _, _ = lung_and_nodules(probabilities, [0.5, 0.5], 0, 1, (2.0, 2.0, 2.0), VolumeSpec())
    assert filled[3, 20, 20]  # slice-wise filling calls the dome lung
    mask, level = lung_output(probabilities[0], 0.5, filled, "filled-mask")
    assert level == 0.5 and mask[3, 20, 20] == 1.0
    prob, level = lung_output(probabilities[0], 0.5, filled, "probability")
    assert level == 0.5 and prob[3, 20, 20] < level  # not lung once brought back
    assert prob[3, 10, 10] == pytest.approx(0.9) and prob[3, 10, 8] == pytest.approx(0.6)
    assert prob[3, 10, 7] == 0.0 and prob[0, 10, 10] == 0.0  # kept components, one voxel wider


def test_clean_components_drops_stray_lung_and_nodules_outside_the_lungs() -> None:
    from overread.inference.volume import lung_and_nodules

    probabilities = np.zeros((2, 30, 60, 60), np.float32)
    probabilities[0, 4:26, 10:50, 8:28] = 0.9  # right lung (8,800 voxels)
    probabilities[0, 4:26, 10:50, 32:52] = 0.9  # left lung
    probabilities[0, 12:18, 52:58, 27:33] = 0.9  # stray "lung" below them (216 voxels)
    probabilities[0, 20:22, 8:10, 28:30] = 0.9  # meets the right lung at an edge only
    probabilities[1, 10:14, 20:24, 14:18] = 0.9  # a nodule inside the lung (64 voxels)
    probabilities[1, 10:14, 20:24, 28:31] = 0.9  # on the pleura, just outside the lung
    probabilities[1, 10:14, 20:24, 52:55] = 0.9  # outside the left lung, 1-3 voxels off
    probabilities[1, 4:8, 2:6, 2:6] = 0.9  # far outside the lungs
    probabilities[1, 20, 30, 20] = 0.9  # a one-voxel speck in the lung (8 mm^3)
    probabilities[1, 18:22, 30:34, 36:40] = 0.9  # a nodule in the left lung ...
    probabilities[1, 22, 34:50, 40] = 0.9  # ... that a long vessel meets at an edge
    spacing = (2.0, 2.0, 2.0)
    old_lung, old_nodules, old_count = lung_and_nodules(
        probabilities, [0.5, 0.5], 0, 1, spacing, VolumeSpec(min_nodule_mm=0.0, max_nodule_mm=30.0)
    )
    assert old_lung[13, 53, 29]  # before: the stray component is lung (>= 1% of the largest)
    assert not old_lung[20, 9, 28]  # and the edge-joined piece a component of its own (< 1%)
    spec = VolumeSpec(
        min_nodule_mm=0.0,
        max_nodule_mm=30.0,
        clean_components=True,
        lung_keep_fraction=0.1,
        nodule_min_volume_mm3=20.0,
        nodule_lung_margin_mm=4.0,
    )
    lung, nodules, count = lung_and_nodules(probabilities, [0.5, 0.5], 0, 1, spacing, spec)
    assert not lung[13, 53, 29]  # dropped: 216 voxels < 10% of a lung
    assert lung[10, 30, 20] and lung[10, 30, 40]  # both lungs kept
    assert lung[20, 9, 28]  # joined to the lung by an edge (26-connectivity)
    kept = {int(nodules[12, 22, x]) > 0 for x in (15, 28, 29, 30)}
    assert kept == {True}  # inside, and on the pleura whole (not cut at the lung's edge)
    assert nodules[12, 22, 53] > 0 and nodules[12, 22, 54] == 0  # cut at the 4 mm margin
    assert nodules[6, 4, 4] == 0 and nodules[20, 30, 20] == 0  # far outside; too small
    # Face-connected nodules: the vessel (32 mm, too long) does not take the nodule along.
    assert nodules[20, 32, 38] > 0 and nodules[22, 40, 40] == 0
    assert count == 4 and old_count == 3  # before: the two inside and the speck
    assert old_nodules[12, 22, 29] == 0  # before: the pleural nodule was cut away


def test_too_many_candidates_keep_the_largest() -> None:
    from overread.inference.volume import MAX_NODULES, lung_and_nodules

    probabilities = np.zeros((2, 40, 80, 80), np.float32)
    probabilities[0, 2:-2, 2:-2, 2:-2] = 1.0  # lung, away from the sides
    blobs = [(z, y, x) for z in range(4, 36, 4) for y in range(4, 76, 4) for x in range(4, 76, 8)]
    assert len(blobs) > MAX_NODULES
    for i, (z, y, x) in enumerate(blobs):
        size = 3 if i % 7 == 0 else 2  # every seventh blob is larger
        probabilities[1, z : z + size, y : y + size, x : x + size] = 1.0
        probabilities[0, z : z + size, y : y + size, x : x + size] = 0.0
    _, labels, count = lung_and_nodules(
        probabilities, [0.5, 0.5], 0, 1, (2.0, 2.0, 2.0), VolumeSpec()
    )
    assert count == MAX_NODULES and labels.max() == MAX_NODULES
    sizes = np.bincount(labels.ravel())[1:]
    assert (sizes == 27).sum() == len(blobs[::7])  # every larger blob was kept


def test_a_segmentation_package_without_a_volume_section_is_refused_with_the_reason(
    tmp_path: Path,
) -> None:
    from overread.models.networks import build_network
    from overread.models.package import write_package

    path = write_package(
        tmp_path / "flat",
        network=build_network("ct-unet3d", in_channels=1, num_classes=2, channels=[4, 8]),
        architecture="ct-unet3d",
        arch_kwargs={"channels": [4, 8]},
        labels=["lung", "nodule"],
        input_spec={"size": 32, "channels": 1, "chain": []},
        name="flat",
        version="1",
        intended_use="test only",
        task=Task.SEGMENTATION,
        export_onnx=False,
    )
    with pytest.raises(ModelPackageError, match="needs a 'volume' section"):
        open_pipeline(str(path), registry=Registry(tmp_path / "registry"))


def test_predict_on_the_phantom_ct_folder_exits_0_and_writes_seg_and_sr(
    run_cli,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OVERREAD_MODEL_REGISTRY", str(tmp_path / "registry"))
    cases = tmp_path / "cases"
    status, _, stderr = run_cli("phantom", "ct", "--n", "2", "--seed", "3", "--out", cases, "-q")
    assert status == 0, stderr
    assert list(cases.rglob("*.nii.gz")) and list(cases.rglob("*.json"))
    out = tmp_path / "out"
    status, stdout, stderr = run_cli("predict", cases, "--out", out)
    assert status == 0, stderr
    assert stdout.count(f"[{ct_cad.NAME} {ct_cad.VERSION} segmentation]") == 2
    written = sorted(out.rglob("*.dcm"))
    assert len(written) == 4
    for path in written:
        if path.name.endswith("-SEG.dcm"):
            seg = hd.seg.segread(path)
            assert seg.SegmentSequence[0].SegmentLabel == "lung"
        else:
            assert hd.sr.srread(path).VerificationFlag == "UNVERIFIED"


def test_prediction_warnings_reach_the_sr(analysed: object, tmp_path: Path) -> None:
    import dataclasses

    warning = "the large airways found are 28.9% of the lung and airways (expected under 10.0%)"
    prediction = dataclasses.replace(
        analysed.prediction,  # type: ignore[attr-defined]
        warnings=[warning, "too many candidates: the 200 largest kept"],
    )
    objects = build_volume_outputs(
        prediction,
        _sources(analysed),
        analysed.label_map,  # type: ignore[attr-defined]
        analysed.labels,  # type: ignore[attr-defined]
    )
    path = tmp_path / "sr.dcm"
    objects[-1].save_as(path, enforce_file_format=True)
    report = hd.sr.srread(path)
    comments = [
        str(item.TextValue)
        for item in report.ContentSequence[-1].ContentSequence
        if item.ValueType == "TEXT" and item.ConceptNameCodeSequence[0].CodeValue == "121106"
    ]
    assert comments == [f"Warning: {w}" for w in prediction.warnings]
    if shutil.which("dciodvfy") is not None:
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        errors = [
            line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")
        ]
        assert errors == []


def test_ascii_text_folds_accents_and_compatibility_forms() -> None:
    from overread.service.outputs.volume import ascii_text

    assert ascii_text("Poumon émphysémateux ≥ 10 mm² — bulle") == (
        "Poumon emphysemateux ? 10 mm2 ? bulle"
    )
    assert ascii_text("plain 2.5 mm") == "plain 2.5 mm"
    assert ascii_text("Zürich ﬁle") == "Zurich file"


def test_a_warning_beyond_ascii_is_folded_in_the_sr(analysed: object, tmp_path: Path) -> None:
    prediction = copy.deepcopy(analysed.prediction)  # type: ignore[attr-defined]
    prediction.warnings = ["Poumon émphysémateux ≥ 10 mm² — bulle"]
    sources = _sources(analysed)
    assert "SpecificCharacterSet" not in sources[0]
    [_, sr] = build_volume_outputs(
        prediction,
        sources,
        analysed.label_map,  # type: ignore[attr-defined]
        analysed.labels,  # type: ignore[attr-defined]
    )
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    if shutil.which("dciodvfy") is not None:
        done = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True)
        output = (done.stdout + done.stderr).splitlines()
        assert [line for line in output if line.startswith("Error")] == []
    report = pydicom.dcmread(path).ContentSequence
    texts = [
        str(item.TextValue)
        for group in report
        if group.ValueType == "CONTAINER" and "ContentSequence" in group
        for item in group.ContentSequence
        if item.ValueType == "TEXT"
    ]
    assert "Warning: Poumon emphysemateux ? 10 mm2 ? bulle" in texts, texts
