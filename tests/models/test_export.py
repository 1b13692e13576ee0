from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from overread.models import CamClassifier, build_network, export_onnx, fold_batchnorm, quantize_int8
from overread.models.calibration import synthetic_batch

TINY = {"widths": [8, 16, 32], "blocks": [1, 1, 1], "stem_width": 8}


def _perturbed_batchnorm(net: torch.nn.Module) -> torch.nn.Module:
    """Give batch norms non-trivial statistics, as training would."""
    generator = torch.Generator().manual_seed(0)
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2, generator=generator)
            module.running_var.uniform_(0.5, 2.0, generator=generator)
            module.weight.data.uniform_(0.5, 1.5, generator=generator)
            module.bias.data.uniform_(-0.1, 0.1, generator=generator)
    return net.eval()


def test_folding_batchnorm_keeps_outputs() -> None:
    torch.manual_seed(0)
    net = _perturbed_batchnorm(build_network("cxr-convnet", num_classes=4, **TINY))
    x = torch.rand(2, 1, 48, 48)
    folded = fold_batchnorm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    with torch.no_grad():
        assert torch.allclose(net(x), folded(x), atol=1e-5)


def test_cam_output_averages_to_the_logits() -> None:
    torch.manual_seed(0)
    net = _perturbed_batchnorm(build_network("cxr-convnet", num_classes=4, **TINY))
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        logits, cam = CamClassifier(net)(x)
        assert cam.shape == (3, 4, 4, 4)  # stride-2 stem and three stride-2 stages: 64 / 16
        assert torch.allclose(logits, net(x), atol=1e-5)
        assert torch.allclose(cam.mean(dim=(2, 3)), logits, atol=1e-5)


@pytest.mark.parametrize("arch", ["cxr-convnet", "densenet-tiny"])
def test_fp32_onnx_agrees_with_torch(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    kwargs = TINY if arch == "cxr-convnet" else {}
    net = _perturbed_batchnorm(build_network(arch, num_classes=5, **kwargs))
    x = torch.from_numpy(synthetic_batch(4, 64, seed=3))
    report = export_onnx(net, tmp_path / "m.onnx", x[:1])
    assert report.max_abs_diff < 1e-4
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    with torch.no_grad():
        expected = net(x).numpy()
    got = session.run(["logits"], {"image": x.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4  # dynamic batch: 4 works after exporting with 1
    # CAM is exact only where the last conv map reaches a linear layer through pooling alone;
    # DenseNet also qualifies (features -> ReLU -> pool -> linear).
    assert report.has_cam and outputs == ["logits", "cam"]


def test_int8_export_stays_close_to_fp32(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _perturbed_batchnorm(build_network("cxr-convnet", num_classes=5, **TINY))
    images = synthetic_batch(16, 64, seed=1)
    export_onnx(net, tmp_path / "fp32.onnx", torch.from_numpy(images[:1]))
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", images)
    fp32 = ort.InferenceSession(str(tmp_path / "fp32.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    import onnx

    ops = {node.op_type for node in onnx.load(str(tmp_path / "int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    test = synthetic_batch(4, 64, seed=9)
    a = 1 / (1 + np.exp(-fp32.run(["logits"], {"image": test})[0]))
    b = 1 / (1 + np.exp(-int8.run(["logits"], {"image": test})[0]))
    assert np.abs(a - b).max() < 0.05
    assert int8.run(["cam"], {"image": test})[0].shape == (4, 5, 4, 4)


LSE = {**TINY, "pool": "lse", "pool_r": 5.0}


def test_lse_pool_logits_are_the_smooth_max_of_the_exact_cam() -> None:
    torch.manual_seed(0)
    net = _perturbed_batchnorm(build_network("cxr-convnet", num_classes=4, **LSE))
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        logits, cam = CamClassifier(net)(x)
        assert torch.allclose(logits, net(x), atol=1e-5)
        # The CAM is the classifier at every position of the feature map, the logit
        # (1/r) log mean exp(r * cam): between the map's mean and its maximum.
        feature_map = net.features(x)
        direct = torch.einsum("nkhw,lk->nlhw", feature_map, net.classifier.weight)
        assert torch.allclose(cam, direct + net.classifier.bias[None, :, None, None], atol=1e-5)
        expected = torch.log(torch.exp(5.0 * cam.double()).mean(dim=(2, 3))) / 5.0
        assert torch.allclose(logits.double(), expected, atol=1e-5)
        assert (logits > cam.mean(dim=(2, 3)) + 1e-3).all()
        assert (logits < cam.amax(dim=(2, 3))).all()


def test_lse_pool_does_not_overflow_on_large_maps() -> None:
    from overread.models.networks import pool_class_map

    cam = torch.full((1, 2, 4, 4), 40.0)
    cam[0, 1, 0, 0] = 100.0  # exp(5 * 100) overflows float32 without the max shift
    logits = pool_class_map(cam, "lse", 5.0)
    assert torch.isfinite(logits).all()
    assert logits[0, 0].item() == pytest.approx(40.0, abs=1e-4)
    assert 40.0 < logits[0, 1].item() < 100.0


def test_lse_pool_is_checked() -> None:
    from overread.errors import ModelPackageError

    with pytest.raises(ModelPackageError, match="pool must be one of avg, lse"):
        build_network("cxr-convnet", num_classes=2, **{**TINY, "pool": "max"})
    for bad in (0, -1.0, float("nan"), float("inf"), True, "5"):
        with pytest.raises(ModelPackageError, match="pool_r"):
            build_network("cxr-convnet", num_classes=2, **{**TINY, "pool": "lse", "pool_r": bad})
    from overread.models.networks import pool_class_map

    for r in (0.0, float("nan")):
        with pytest.raises(ValueError, match="r in"):
            pool_class_map(torch.zeros(1, 1, 2, 2), "lse", r)


def test_lse_pool_exports_and_quantises_with_exact_cam(tmp_path: Path) -> None:
    import onnx

    from overread.models.export import pool_tail_nodes

    torch.manual_seed(0)
    net = _perturbed_batchnorm(build_network("cxr-convnet", num_classes=5, **LSE))
    images = synthetic_batch(16, 64, seed=1)
    report = export_onnx(net, tmp_path / "fp32.onnx", torch.from_numpy(images[:1]))
    assert report.has_cam and report.max_abs_diff < 1e-4
    tail = pool_tail_nodes(tmp_path / "fp32.onnx")
    ops = {n.name: n.op_type for n in onnx.load(str(tmp_path / "fp32.onnx")).graph.node}
    assert {"Exp", "Log", "ReduceMax"} <= {ops[name] for name in tail}
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", images)
    fp32 = ort.InferenceSession(str(tmp_path / "fp32.onnx"), providers=["CPUExecutionProvider"])
    int8 = ort.InferenceSession(str(tmp_path / "int8.onnx"), providers=["CPUExecutionProvider"])
    test = synthetic_batch(4, 64, seed=9)
    # Dynamic batch, and the FP32 graph's logits are the LSE pool of its own cam output.
    logits, cam = fp32.run(["logits", "cam"], {"image": test})
    with torch.no_grad():
        assert np.abs(logits - net(torch.from_numpy(test)).numpy()).max() < 1e-4
    expected = np.log(np.exp(5.0 * cam.astype(np.float64)).mean(axis=(2, 3))) / 5.0
    assert np.abs(logits - expected).max() < 1e-4
    # INT8: the pool runs in FP32 on the (quantised) map, so the logits are still exactly
    # the pool of the cam output the runtime explains with.
    quantised = onnx.load(str(tmp_path / "int8.onnx"))
    for node in quantised.graph.node:
        if node.op_type in ("Exp", "Log"):
            producers = {n.output[0]: n.op_type for n in quantised.graph.node if n.output}
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input)
    logits8, cam8 = int8.run(["logits", "cam"], {"image": test})
    expected8 = np.log(np.exp(5.0 * cam8.astype(np.float64)).mean(axis=(2, 3))) / 5.0
    assert np.abs(logits8 - expected8).max() < 1e-4
    a, b = 1 / (1 + np.exp(-logits)), 1 / (1 + np.exp(-logits8))
    assert np.abs(a - b).max() < 0.05


FINE = {**LSE, "last_stride": 1}


def test_last_stride_one_doubles_the_class_map_and_keeps_the_weights() -> None:
    torch.manual_seed(0)
    coarse = _perturbed_batchnorm(build_network("cxr-convnet", num_classes=4, **LSE))
    fine = build_network("cxr-convnet", num_classes=4, **FINE).eval()
    # Same parameter shapes: a stride-2 network's weights load into the stride-1 one.
    fine.load_state_dict(coarse.state_dict())
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        _, cam_coarse = CamClassifier(coarse)(x)
        logits, cam = CamClassifier(fine)(x)
        assert cam_coarse.shape == (2, 4, 4, 4)
        assert cam.shape == (2, 4, 8, 8)  # the last stage no longer halves the map
        assert torch.allclose(logits, fine(x), atol=1e-5)
        direct = torch.einsum("nkhw,lk->nlhw", fine.features(x), fine.classifier.weight)
        assert torch.allclose(cam, direct + fine.classifier.bias[None, :, None, None], atol=1e-5)
        expected = torch.log(torch.exp(5.0 * cam.double()).mean(dim=(2, 3))) / 5.0
        assert torch.allclose(logits.double(), expected, atol=1e-5)
    patch = build_network("cxr-convnet", num_classes=3, **{**FINE, "stem": "patch"}).eval()
    with torch.no_grad():
        assert patch.features(torch.rand(1, 1, 64, 64)).shape[-2:] == (8, 8)


def test_last_stride_is_checked() -> None:
    from overread.errors import ModelPackageError

    for bad in (0, 3, 2.0, True, "1", None):
        with pytest.raises(ModelPackageError, match="last_stride must be 1 or 2"):
            build_network("cxr-convnet", num_classes=2, **{**TINY, "last_stride": bad})


def test_last_stride_one_is_refused_where_it_would_change_or_do_nothing() -> None:
    from overread.errors import ModelPackageError

    # One stage: there is no last-stage downsampling to drop.
    with pytest.raises(ModelPackageError, match="at least two stages"):
        build_network("cxr-convnet", num_classes=2, widths=[8], blocks=[1], last_stride=1)
    # Equal last two widths: the stride-2 block's 1x1 shortcut would disappear, so the
    # stride-2 weights would not load.
    equal = {"widths": [8, 16, 16], "blocks": [1, 1, 1], "stem_width": 8}
    with pytest.raises(ModelPackageError, match="last two widths differ"):
        build_network("cxr-convnet", num_classes=2, **equal, last_stride=1)
    build_network("cxr-convnet", num_classes=2, **equal)  # stride 2 stays allowed


def test_last_stride_one_exports_and_quantises_with_exact_cam(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = _perturbed_batchnorm(build_network("cxr-convnet", num_classes=5, **FINE))
    images = synthetic_batch(16, 64, seed=1)
    report = export_onnx(net, tmp_path / "fp32.onnx", torch.from_numpy(images[:1]))
    assert report.has_cam and report.max_abs_diff < 1e-4
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", images)
    test = synthetic_batch(3, 64, seed=9)
    for name in ("fp32.onnx", "int8.onnx"):
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        logits, cam = session.run(["logits", "cam"], {"image": test})
        assert cam.shape == (3, 5, 8, 8)
        expected = np.log(np.exp(5.0 * cam.astype(np.float64)).mean(axis=(2, 3))) / 5.0
        assert np.abs(logits - expected).max() < 1e-4
