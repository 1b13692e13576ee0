"""ONNX export with a class-activation-map output, and static INT8 quantisation.

Why the exported graph computes ``cam`` itself: for a network whose last
convolutional map reaches the classifier only through global average pooling, the
logit of label ``c`` equals the spatial mean of ``sum_k w_ck F_k + b_c``. Applying
the classifier as a 1x1 convolution to the feature map therefore gives the class
activation maps (Zhou et al., CVPR 2016) *and*, by averaging them, the logits: one
forward pass, no gradients, no second path, and the runtime cost of a 1x1
convolution on a 7x7 map. A ``CxrConvNet(pool="lse")`` pools the same map by
log-sum-exp instead of the mean (``logit = (1/r) log mean exp(r * cam)``): the CAM is
still the exact per-location logit, and the pool's few element-wise nodes stay FP32
in the INT8 model (:func:`pool_tail_nodes`), so its logits are exactly the pool of its
own ``cam`` output.

Why these quantisation settings: batch norm is folded into the preceding
convolution before export (so the quantiser sees one conv per unit), activations are
uint8 and weights int8 per output channel, in QDQ format (ONNX Runtime fuses
DQ-Conv-Q into integer convolutions at load). Measured side by side on this design,
QOperator and QDQ ran at the same speed; DenseNets, whose concatenations force
requantisation, got slower in INT8 (see docs/models.md).

Weights use 7 bits (``reduce_range``): on x86 CPUs without VNNI, ONNX Runtime's
uint8 x int8 kernels multiply with VPMADDUBSW, which adds pairs of products into
int16 and saturates when full 8-bit weights meet large activations (255 * 127 * 2
> 32767). On such a CPU the 8-bit build moved probabilities by up to 0.9; 7-bit
weights cannot saturate (255 * 64 * 2 < 32767) and give the same result with and
without VNNI. The convolutions that read the input image stay FP32: with one input
channel they have only a few weights per output channel, and rounding those to 7
bits alone moved probabilities by 0.13 on phantoms (0.02 with the layer in FP32),
at a cost of a few million multiply-adds (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import itertools
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from overread.errors import ModelPackageError

logger = logging.getLogger(__name__)

INPUT_NAME = "image"
LOGITS_NAME = "logits"
CAM_NAME = "cam"
OPSET = 17


def cam_parts(network: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
    """Split a classifier into (feature extractor, linear classifier) for exact CAM.

    Returns None for architectures where the last conv map does not reach the
    classifier through global average pooling alone (use Grad-CAM for those).
    """
    from overread.models.networks import CxrConvNet

    if isinstance(network, CxrConvNet):
        return network.features, network.classifier
    class_layers = getattr(network, "class_layers", None)
    features = getattr(network, "features", None)
    if isinstance(class_layers, nn.Sequential) and isinstance(features, nn.Module):
        out = getattr(class_layers, "out", None)
        relu = getattr(class_layers, "relu", None)
        if isinstance(out, nn.Linear):  # MONAI DenseNet: features -> relu -> pool -> linear
            extractor = nn.Sequential(features, relu) if relu is not None else features
            return extractor, out
    return None


class CamClassifier(nn.Module):
    """``x -> (logits, cam)`` with ``logits`` the network's pool of ``cam``.

    ``cam.mean((2, 3))`` for a global-average-pool network, the log-sum-exp pool of
    :func:`~overread.models.networks.pool_class_map` for a ``CxrConvNet(pool="lse")``:
    either way the logits are a function of the CAM alone, which is exact.
    Wraps a network that :func:`cam_parts` can split; shares its parameters, so it
    can be used for training as well as for export.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        parts = cam_parts(network)
        if parts is None:
            raise ModelPackageError(
                f"{type(network).__name__} has no global-average-pool classifier; CAM needs one"
            )
        self.features, self.classifier = parts
        from overread.models.networks import cam_pool

        self.pool_mode, self.pool_r = cam_pool(network)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from overread.models.networks import pool_class_map

        feature_map = self.features(x)
        weight = self.classifier.weight[:, :, None, None]
        cam = nn.functional.conv2d(feature_map, weight, self.classifier.bias)
        logits = pool_class_map(cam, self.pool_mode, self.pool_r)
        return logits, cam


def fold_batchnorm(network: nn.Module) -> nn.Module:
    """A copy of ``network`` with every Conv2d followed by BatchNorm2d fused into one conv.

    Only pairs that are consecutive children of an ``nn.Sequential`` are fused (the
    layout of :class:`~overread.models.networks.CxrConvNet`); others are left alone.
    """
    folded = copy.deepcopy(network).eval()
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in itertools.pairwise(names):
            conv, norm = module._modules[first], module._modules[second]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
                module._modules[second] = nn.Identity()
    return folded


@dataclass(frozen=True)
class ExportReport:
    """What an export produced and how closely ONNX Runtime matches torch."""

    path: Path
    has_cam: bool
    max_abs_diff: float


def export_onnx(
    network: nn.Module, path: Path | str, example: torch.Tensor, *, fold: bool = True
) -> ExportReport:
    """Export ``network`` to ONNX (opset 17, dynamic batch) and check it against torch.

    The graph has input ``image`` and outputs ``logits`` and, where the architecture
    allows exact CAM, ``cam`` ``(N, labels, h, w)``. The check runs the example
    through torch and ONNX Runtime and reports the largest absolute logit difference.
    ``fold=False`` keeps batch norms as separate nodes (for comparison only).
    """
    out = Path(path)
    network = network.eval()
    folded = fold_batchnorm(network) if fold else network
    has_cam = cam_parts(folded) is not None
    module: nn.Module = CamClassifier(folded) if has_cam else folded
    outputs = [LOGITS_NAME, CAM_NAME] if has_cam else [LOGITS_NAME]
    axes = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module,
            (example,),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT_NAME],
            output_names=outputs,
            dynamic_axes=axes,
        )
    _inline_identity_initializers(out)
    diff = onnx_torch_max_abs_diff(network, out, example)
    if diff > 1e-3:
        raise ModelPackageError(f"{out}: ONNX output differs from torch by {diff:.3g}")
    return ExportReport(path=out, has_cam=has_cam, max_abs_diff=diff)


def _inline_identity_initializers(path: Path) -> None:
    """Replace ``Identity(initializer)`` nodes by copies of the initializer.

    The exporter shares byte-identical constants (e.g. the zero biases of freshly
    folded batch norms) through Identity nodes; the quantiser only quantises biases
    that are initializers, so each conv gets its own copy back.
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    initializers = {init.name: init for init in model.graph.initializer}
    kept = []
    changed = False
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in initializers:
            array = numpy_helper.to_array(initializers[node.input[0]])
            model.graph.initializer.append(numpy_helper.from_array(array.copy(), node.output[0]))
            changed = True
            continue
        kept.append(node)
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(kept)
        onnx.save(model, str(path))


def onnx_torch_max_abs_diff(network: nn.Module, onnx_path: Path, x: torch.Tensor) -> float:
    """Largest absolute logit difference between torch eager and an ONNX model on ``x``."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = network.eval()(x).numpy()
    got = session.run([LOGITS_NAME], {INPUT_NAME: x.numpy().astype(np.float32)})[0]
    return float(np.max(np.abs(np.asarray(got) - expected)))


class _DropMessages(logging.Filter):
    """Drops log records containing any of the given fragments."""

    def __init__(self, *fragments: str) -> None:
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


class _ArrayReader:
    """Feeds calibration images to the ONNX Runtime calibrator one at a time."""

    def __init__(self, images: np.ndarray) -> None:
        self._images = images
        self._iterator: Iterator[np.ndarray] = iter(images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._iterator, None)
        return None if image is None else {INPUT_NAME: image[None].astype(np.float32)}

    def rewind(self) -> None:
        self._iterator = iter(self._images)


def _input_convolutions(path: Path) -> list[str]:
    """Names of the Conv nodes that read the graph input directly."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inputs = {value.name for value in model.graph.input}
    return [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv" and node.input and node.input[0] in inputs
    ]


def pool_tail_nodes(path: Path) -> list[str]:
    """Names of the nodes that pool the ``cam`` output into the logits.

    One ``ReduceMean`` for an average-pool network; for a log-sum-exp pool the max,
    subtraction, scale, exponential, mean, logarithm and addition that follow the map.
    They cost nothing next to the convolutions and stay FP32: an exponential of an
    8-bit input, or a logit rounded to 8 bits, would move probabilities for no gain.
    """
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    reached = {CAM_NAME}
    tail: list[str] = []
    for node in model.graph.node:  # topologically sorted, as ONNX requires
        if any(name in reached for name in node.input):
            tail.append(node.name)
            reached.update(node.output)
    return tail


def quantize_int8(
    fp32_path: Path | str,
    int8_path: Path | str,
    calibration: np.ndarray,
    *,
    per_channel: bool = True,
    method: str = "minmax",
    quant_format: str = "qdq",
    reduce_range: bool = True,
    float_input_layer: bool = True,
    exclude_nodes: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] | None = None,
    calibration_cache: Path | str | None = None,
) -> Path:
    """Static INT8 quantisation of an FP32 ONNX model, calibrated on ``calibration``.

    Parameters
    ----------
    calibration
        float32 ``(N, C, H, W)`` images preprocessed exactly as at inference time.
    method
        ``minmax``, ``entropy`` or ``percentile`` activation-range calibration.
    quant_format
        ``qdq`` (default) or ``qoperator``.
    reduce_range
        7-bit weights (default): no int16 saturation on x86 CPUs without VNNI.
        ``False`` gives the full 8-bit weights of earlier builds (for comparison).
    float_input_layer
        Keep the convolutions that read the input image in FP32 (default).
    exclude_nodes
        Further node names to keep in FP32 (see
        :func:`overread.models.int8_tuning.choose_exclusions`).
    nodes_to_quantize
        Quantise only these nodes (for per-node sensitivity sweeps).
    calibration_cache
        A file where ONNX Runtime keeps the calibrated ranges, reused by later calls
        with the same model, images and method (ignored where unsupported).
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if calibration.ndim != 4 or len(calibration) == 0:
        raise ModelPackageError(
            f"INT8 calibration needs float32 (N, C, H, W) images, got shape {calibration.shape}"
        )
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    formats = {"qdq": QuantFormat.QDQ, "qoperator": QuantFormat.QOperator}

    excluded = _input_convolutions(Path(fp32_path)) if float_input_layer else []
    excluded += [name for name in pool_tail_nodes(Path(fp32_path)) if name not in excluded]
    excluded += [name for name in exclude_nodes if name not in excluded]
    cache: dict[str, str] = {}
    if calibration_cache is not None and "calibration_cache_path" in (
        inspect.signature(quantize_static).parameters
    ):
        cache["calibration_cache_path"] = str(calibration_cache)

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._inner = _ArrayReader(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return self._inner.get_next()

    # The quantiser advises optional pre-processing (BN is folded already), warns about
    # per-channel axes of 1-D tensors it then quantises per tensor, and prints calibration
    # progress to stdout; none of it is for our users.
    quiet = _DropMessages("pre-process", "out-of-range for weight")
    logging.getLogger().addFilter(quiet)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            quantize_static(
                str(fp32_path),
                str(int8_path),
                Reader(),
                quant_format=formats[quant_format],
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
                calibrate_method=methods[method],
                reduce_range=reduce_range,
                nodes_to_exclude=excluded,
                nodes_to_quantize=list(nodes_to_quantize) if nodes_to_quantize else None,
                **cache,
            )
    finally:
        logging.getLogger().removeFilter(quiet)
    return Path(int8_path)


__all__ = [
    "CAM_NAME",
    "INPUT_NAME",
    "LOGITS_NAME",
    "CamClassifier",
    "ExportReport",
    "cam_parts",
    "export_onnx",
    "fold_batchnorm",
    "onnx_torch_max_abs_diff",
    "pool_tail_nodes",
    "quantize_int8",
]
