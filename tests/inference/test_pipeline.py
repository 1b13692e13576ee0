from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from overread.findings import CHEXPERT_LABELS
from overread.imaging import read
from overread.inference import MicroBatcher, Pipeline
from overread.models import Registry
from overread.models.calibration import synthetic_batch


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Registry:
    return Registry(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="module")
def pipeline(bundled: Registry) -> Pipeline:
    return Pipeline(bundled.load("cxr-default"))


def test_dicom_to_findings_through_onnx_runtime(
    pipeline: Pipeline, cxr_dicom: Callable[..., Path]
) -> None:
    path = cxr_dicom(rows=400, cols=300)
    (prediction,) = pipeline.predict([path])
    assert prediction.ok, prediction.error
    assert [f.label for f in prediction.findings] == list(CHEXPERT_LABELS)
    assert all(0.0 <= f.probability <= 1.0 for f in prediction.findings)
    assert all(f.positive == (f.probability >= f.threshold) for f in prediction.findings)
    assert prediction.model.name == "cxr-default" and len(prediction.model.sha256) == 64
    assert prediction.model.runtime == "onnx" and prediction.model.precision == "int8"
    trained = pipeline.package.manifest.trained
    assert prediction.model.trained is trained
    assert any("untrained placeholder" in w for w in prediction.warnings) is not trained
    assert prediction.metadata is not None and prediction.metadata.modality == "CR"
    assert {"read", "preprocess", "inference", "postprocess"} <= set(prediction.timings)
    assert prediction.heatmaps is None
    codes = {f.label: f.codes for f in prediction.findings}
    assert codes["Pleural Effusion"] == (("SCT", "60046008", "Pleural effusion"),)


def test_explain_gives_heatmaps_aligned_with_the_model_input(
    pipeline: Pipeline, cxr_dicom: Callable[..., Path]
) -> None:
    (prediction,) = pipeline.predict([cxr_dicom(rows=400, cols=300)], explain=True)
    size = pipeline.package.manifest.input.size
    assert prediction.heatmaps is not None
    assert set(prediction.heatmaps) == set(CHEXPERT_LABELS)
    for heatmap in prediction.heatmaps.values():
        assert heatmap.shape == (size, size)
        assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    assert prediction.model_input is not None and prediction.model_input.shape == (size, size)
    box = prediction.letterbox
    cols = round(300 * size / 400)  # 400 x 300 fitted into size x size
    assert box is not None and (box.new_rows, box.new_cols) == (size, cols)
    assert box.left == (size - cols) // 2


def test_bad_inputs_are_reported_and_the_batch_carries_on(
    pipeline: Pipeline, cxr_dicom: Callable[..., Path], tmp_path: Path
) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(cxr_dicom().read_bytes()[:600])
    good = cxr_dicom()
    lateral = cxr_dicom(view="LL")
    ct = Path(__file__).parents[2] / "src" / "overread" / "examples" / "CT_small.dcm"
    results = pipeline.predict([text, good, tmp_path / "absent.dcm", truncated, lateral, ct])
    assert [r.ok for r in results] == [False, True, False, False, False, False]
    assert results[2].error == "no such file"
    assert "view position LL is not accepted" in (results[4].error or "")
    assert "modality CT is not accepted" in (results[5].error or "")
    assert all(r.error and "\n" not in r.error for r in results if not r.ok)
    assert all(r.findings == [] for r in results if not r.ok)


#: Largest probability change the reduced read may bring through the INT8 runtime
#: (tests/inference/test_reduced_read.py states and checks it).
PROBABILITY_TOLERANCE = 2e-2


def test_image_objects_and_monochrome1(pipeline: Pipeline, cxr_dicom: Callable[..., Path]) -> None:
    normal = cxr_dicom("m2.dcm")
    image = read(normal)
    (from_image,) = pipeline.predict([image])
    (from_path,) = pipeline.predict([normal])
    assert from_image.ok and from_image.path == str(normal)
    # A path may be reduced before its window (within 1e-3 of the input, see
    # overread.imaging.transforms.reduced); an Image is run step by step.
    np.testing.assert_allclose(
        [f.probability for f in from_image.findings],
        [f.probability for f in from_path.findings],
        atol=PROBABILITY_TOLERANCE,
    )
    # The same anatomy stored MONOCHROME1 gives the same model input after inversion.
    inverted = cxr_dicom("m1.dcm", photometric="MONOCHROME1", seed=5)
    a = pipeline.preprocess(read(inverted))[0]
    b = pipeline.preprocess(read(cxr_dicom("m2b.dcm", seed=5)))[0]
    size = pipeline.package.manifest.input.size
    assert a.shape == b.shape == (1, size, size)
    assert np.abs(a - b).max() < 0.02


def test_torch_and_onnx_fp32_agree(bundled: Registry, cxr_dicom: Callable[..., Path]) -> None:
    package = bundled.load("cxr-default")
    path = cxr_dicom()
    onnx = Pipeline(package, precision="fp32").predict([path])[0]
    torch_ = Pipeline(package, runtime="torch").predict([path])[0]
    a = np.array([f.probability for f in onnx.findings])
    b = np.array([f.probability for f in torch_.findings])
    assert np.abs(a - b).max() < 1e-4
    x = synthetic_batch(3, package.manifest.input.size)
    fp32 = Pipeline(package, precision="fp32")
    int8 = Pipeline(package, precision="int8")
    assert np.abs(fp32.predict_batch(x) - int8.predict_batch(x)).max() < 0.05
    assert fp32.predict_batch(x).shape == (3, 14)


def test_gradient_cams_through_the_pipeline(
    pipeline: Pipeline, cxr_dicom: Callable[..., Path]
) -> None:
    (prediction,) = pipeline.predict([cxr_dicom()], explain=True, cam_method="gradcam++")
    assert prediction.heatmaps is not None
    size = pipeline.package.manifest.input.size
    assert prediction.heatmaps["Cardiomegaly"].shape == (size, size)


def test_operating_points(pipeline: Pipeline, cxr_dicom: Callable[..., Path]) -> None:
    (prediction,) = pipeline.predict([cxr_dicom()], operating_point="high sensitivity")
    expected = pipeline.package.thresholds("high sensitivity").tolist()
    assert [f.threshold for f in prediction.findings] == pytest.approx(expected)
    assert {f.operating_point for f in prediction.findings} == {"high sensitivity"}
    with pytest.raises(Exception, match="no operating point 'nonsense'"):
        pipeline.predict([cxr_dicom()], operating_point="nonsense")


def test_from_name_caches_and_follows_aliases(bundled: Registry) -> None:
    first = Pipeline.from_name("cxr-default", registry=bundled)
    assert Pipeline.from_name("cxr-default", registry=bundled) is first
    bundled.set_alias("cxr-live", f"cxr-default@{first.package.version}")
    assert Pipeline.from_name("cxr-live", registry=bundled) is first


def test_micro_batcher_over_the_pipeline(pipeline: Pipeline) -> None:
    x = synthetic_batch(5, pipeline.package.manifest.input.size)
    expected = pipeline.predict_batch(x)
    with MicroBatcher(pipeline.predict_batch, max_batch=4, max_wait_ms=20) as batcher:
        rows = [f.result(timeout=30) for f in [batcher.submit(image) for image in x]]
    assert np.abs(np.stack(rows) - expected).max() < 1e-4


def test_nifti_inputs(pipeline: Pipeline, tmp_path: Path) -> None:
    import nibabel as nib

    from overread.models.calibration import synthetic_chest

    plane = (synthetic_chest(180, np.random.default_rng(0)) * 1000).astype(np.int16)
    flat = tmp_path / "chest.nii.gz"
    nib.save(nib.Nifti1Image(plane[:, :, None], np.eye(4)), flat)
    volume = tmp_path / "volume.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 12), np.int16), np.eye(4)), volume)
    single, stack = pipeline.predict([flat, volume])
    assert single.ok and len(single.findings) == 14
    assert not any("frames" in w for w in single.warnings)
    assert stack.ok and any("12 frames; the model read the first only" in w for w in stack.warnings)
