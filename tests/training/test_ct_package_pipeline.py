"""A trained CT package runs through the volumetric pipeline exactly as training predicted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from overread.cli import main
from overread.errors import ConfigError
from overread.imaging.reader import read
from overread.imaging.series import assemble_volume
from overread.inference.volume import VolumePipeline, resample, sliding_window
from overread.models.package import load_package
from overread.training.ct import (
    HU_WINDOW,
    load_ct_package,
    parse_ct_config,
    predict_ct,
    resampled_shape,
    resize,
    train_ct,
    write_ct_package,
)

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ctpkg")
    cfg = parse_ct_config(
        {
            "kind": "ct-segmentation",
            "output": str(root / "run"),
            "data": {"train_n": 1, "test_n": 1, "size": 64},
            "model": {"channels": [4, 8, 16], "patch": [32, 32, 32], "target_spacing": 5.0},
            "optim": {"iterations": 2, "batch_size": 1},
            "inference": {"clean_components": True},
        }
    )
    net, _ = train_ct(cfg, echo=lambda _line: None)
    package = write_ct_package(net, cfg, root / "pkg")
    assert (
        main(
            [
                "phantom",
                "ct",
                "--n",
                "1",
                "--seed",
                "3",
                "--size",
                "64",
                "--out",
                str(root / "ct"),
                "-q",
            ]
        )
        == 0
    )
    [series] = sorted((root / "ct").glob("*/series"))
    return package, series


def test_the_package_carries_the_volume_section_training_used(
    trained: tuple[Path, Path],
) -> None:
    package, _ = trained
    volume = json.loads((package / "manifest.json").read_text())["volume"]
    assert volume["spacing_mm"] == [5.0, 5.0, 5.0]
    assert volume["patch_size"] == [32, 32, 32]
    assert volume["overlap"] == 0.25
    assert volume["hu_window"] == list(HU_WINDOW)
    assert volume["resample"] == "trilinear"
    assert volume["lung_output"] == "probability" and "nodule_score" not in volume  # mean
    assert (volume["lung_label"], volume["nodule_label"]) == ("lung", "nodule")
    assert volume["clean_components"] is True  # as the config (and the preset) asks


def test_pipeline_reads_the_series_as_predict_ct_does(trained: tuple[Path, Path]) -> None:
    package, series = trained
    pipeline = VolumePipeline(load_package(package))
    volume = assemble_volume([read(p) for p in sorted(series.glob("*.dcm"))])
    net, cfg = load_ct_package(package)
    expected = predict_ct(net, volume.pixels, volume.spacing, cfg)
    assert expected.probabilities is not None
    spec = pipeline.spec
    low = resample(volume.pixels, volume.spacing, spec.spacing_mm, antialias=False)
    shape = resampled_shape(volume.pixels.shape, volume.spacing, cfg.model.target_spacing)
    assert low.shape == shape
    np.testing.assert_allclose(low, resize(volume.pixels, shape), atol=1e-2)
    probabilities = 1.0 / (1.0 + np.exp(-sliding_window(pipeline.network, low, spec)))
    np.testing.assert_allclose(probabilities, expected.probabilities, atol=1e-4)
    [output] = pipeline.predict_series(sorted(series.glob("*.dcm")))
    assert output.prediction.ok, output.prediction.error
    assert output.label_map is not None and output.label_map.shape == volume.pixels.shape


def test_predict_writes_seg_and_sr_with_the_trained_package(
    trained: tuple[Path, Path], tmp_path: Path
) -> None:
    package, series = trained
    out = tmp_path / "out"
    assert main(["predict", str(series), "--model", str(package), "--out", str(out)]) == 0
    kinds = sorted(str(pydicom.dcmread(p).SOPClassUID) for p in out.rglob("*.dcm"))
    assert kinds == sorted([SEGMENTATION_STORAGE, COMPREHENSIVE_3D_SR])


def test_a_nodule_volume_floor_without_clean_up_is_refused() -> None:
    base = {"kind": "ct-segmentation", "inference": {"nodule_min_volume_mm3": 20.0}}
    with pytest.raises(ConfigError, match="nodule_min_volume_mm3 applies only with"):
        parse_ct_config(base)
    both = {"kind": "ct-segmentation", "inference": {"nodule_min_volume_mm3": 20.0}}
    both["inference"]["clean_components"] = True
    assert parse_ct_config(both).inference.nodule_min_volume_mm3 == 20.0
