"""Model runtimes: ONNX Runtime (serving default) and torch (training, gradient CAMs).

Both take preprocessed float32 ``(N, C, H, W)`` batches and return logits ``(N, L)``
and, when the network supports it, class activation maps ``(N, L, h, w)`` from the
same forward pass. Like pydicom's pixel decoders, each runtime can say whether it is
usable here and why not (:func:`runtime_unavailable_reason`).
"""

from __future__ import annotations

import copy
import logging
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from overread.errors import InferenceError, ModelPackageError
from overread.models.export import CAM_NAME, INPUT_NAME, LOGITS_NAME, CamClassifier, cam_parts
from overread.models.int8_tuning import INT8_TOLERANCE as _INT8_TOLERANCE
from overread.models.package import ModelPackage

logger = logging.getLogger(__name__)

#: Threads per inference: the target node has 2 cores.
DEFAULT_THREADS = 2
_MAX_SESSIONS = 8


def default_threads() -> int:
    """``DEFAULT_THREADS``, or fewer on a smaller machine."""
    return max(1, min(DEFAULT_THREADS, os.cpu_count() or 1))


def padded_size(count: int, max_batch: int) -> int:
    """The session batch size a batch of ``count`` runs at: the next power of two.

    ONNX Runtime keeps one session per fixed batch size; padding to 1, 2, 4, 8 bounds
    the sessions to warm up at start to four instead of one per possible count.
    """
    size = 1
    while size < count:
        size *= 2
    return max(count, min(size, max_batch))


def runtime_unavailable_reason(name: str) -> str | None:
    """None when runtime ``name`` can be used here, else why not."""
    if name == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as exc:  # pragma: no cover - installed with overread
            return f"onnxruntime is not installed ({exc})"
        if "CPUExecutionProvider" not in ort.get_available_providers():
            return "onnxruntime has no CPU execution provider"
        return None
    if name == "torch":
        return None
    return f"unknown runtime {name!r} (known: onnx, torch)"


#: Device names a runtime accepts: ``auto`` (a GPU when one is usable, else the CPU),
#: ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE_PATTERN = r"^(auto|cpu|cuda(:[0-9]+)?)$"

_CUDA_EP = "CUDAExecutionProvider"
_CPU_EP = "CPUExecutionProvider"


def check_device(device: str) -> str:
    """``device`` when it is a known device name, else an InferenceError."""
    import re

    if not re.match(DEVICE_PATTERN, device):
        raise InferenceError(f"unknown device {device!r} (auto, cpu, cuda or cuda:N)")
    return device


def onnx_providers(device: str, available: list[str] | None = None) -> list[Any]:
    """ONNX Runtime execution providers for ``device``, best first.

    ``auto`` puts the CUDA execution provider first when this onnxruntime build has
    it (the ``onnxruntime-gpu`` wheel) and keeps the CPU provider as the fallback;
    ``cpu`` uses the CPU only; ``cuda``/``cuda:N`` needs the CUDA provider and says
    so when it is missing. ``available`` defaults to
    ``onnxruntime.get_available_providers()``.
    """
    check_device(device)
    if available is None:
        import onnxruntime as ort

        available = list(ort.get_available_providers())
    has_cuda = _CUDA_EP in available
    if device == "cpu" or (device == "auto" and not has_cuda):
        return [_CPU_EP]
    if not has_cuda:
        raise InferenceError(
            f"device {device!r} asked for, but this onnxruntime has no {_CUDA_EP} "
            "(install onnxruntime-gpu, or use device 'auto' or 'cpu')"
        )
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return [(_CUDA_EP, {"device_id": index}), _CPU_EP]


def torch_device(device: str) -> torch.device:
    """The torch device for ``device``: ``auto`` is the first GPU when torch sees one."""
    check_device(device)
    if device == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    chosen = torch.device(device)
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(
            f"device {device!r} asked for, but torch sees no CUDA GPU "
            "(a CPU build of torch, or no driver); use device 'auto' or 'cpu'"
        )
    if chosen.type == "cuda" and (chosen.index or 0) >= torch.cuda.device_count():
        raise InferenceError(
            f"device {device!r} asked for, but torch sees {torch.cuda.device_count()} CUDA GPU(s)"
        )
    return chosen


class Runtime(Protocol):
    """What the pipeline needs from a runtime."""

    name: str
    precision: str
    has_cam: bool

    def run(self, x: np.ndarray, *, with_cam: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Logits ``(N, L)`` and, if asked and available, CAMs ``(N, L, h, w)``."""
        ...


class OnnxRuntime:
    """ONNX Runtime with one session per fixed batch size.

    Each session is created with the batch dimension pinned
    (``add_free_dimension_override_by_name``), so ONNX Runtime plans memory and
    kernels for a fixed input shape; sessions are created lazily and kept (up to
    eight shapes). ``device`` chooses the execution providers (:func:`onnx_providers`);
    with ``auto``, a CUDA session that cannot be created (no driver, a library
    missing) falls back to the CPU with a warning. ``provider`` is the provider the
    session actually runs on.
    """

    name = "onnx"

    def __init__(
        self,
        model_path: Path,
        *,
        precision: str = "fp32",
        threads: int | None = None,
        optimization: str = "all",
        device: str = "cpu",
    ) -> None:
        import onnxruntime as ort

        self.device = check_device(device)
        self._providers = onnx_providers(device)
        self.model_path = Path(model_path)
        self.precision = precision
        self.threads = threads or default_threads()
        self._ort = ort
        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        if optimization not in levels:
            raise InferenceError(f"unknown graph optimisation level {optimization!r}")
        self._level = levels[optimization]
        self._sessions: OrderedDict[int, Any] = OrderedDict()
        self._lock = threading.Lock()
        probe = self._session(1)
        self.provider: str = probe.get_providers()[0]
        self.output_names = [o.name for o in probe.get_outputs()]
        self.has_cam = CAM_NAME in self.output_names
        self.input_shape = tuple(probe.get_inputs()[0].shape)

    def _options(self, batch: int) -> Any:
        options = self._ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = self._ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = self._level
        options.add_free_dimension_override_by_name("batch", batch)
        options.log_severity_level = 3
        return options

    def _session(self, batch: int) -> Any:
        with self._lock:
            session = self._sessions.get(batch)
            if session is not None:
                self._sessions.move_to_end(batch)
                return session
            try:
                session = self._ort.InferenceSession(
                    str(self.model_path), self._options(batch), providers=self._providers
                )
            except Exception as exc:
                if self.device != "auto" or self._providers == [_CPU_EP]:
                    raise ModelPackageError(
                        f"{self.model_path}: ONNX Runtime cannot load it: {exc}"
                    ) from None
                logger.warning(
                    "%s: the CUDA execution provider failed (%s); using the CPU",
                    self.model_path.name,
                    str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
                )
                self._providers = [_CPU_EP]
                self._sessions.clear()
                session = self._new_cpu_session(batch)
            self._sessions[batch] = session
            while len(self._sessions) > _MAX_SESSIONS:
                self._sessions.popitem(last=False)
            return session

    def _new_cpu_session(self, batch: int) -> Any:
        try:
            return self._ort.InferenceSession(
                str(self.model_path), self._options(batch), providers=[_CPU_EP]
            )
        except Exception as exc:
            raise ModelPackageError(
                f"{self.model_path}: ONNX Runtime cannot load it: {exc}"
            ) from None

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Create the sessions for ``batch_sizes`` and run each once."""
        shape = [d if isinstance(d, int) else 1 for d in self.input_shape[1:]]
        for batch in batch_sizes:
            self.run(np.zeros((batch, *shape), dtype=np.float32), with_cam=self.has_cam)

    def run(self, x: np.ndarray, *, with_cam: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        batch = np.ascontiguousarray(x, dtype=np.float32)
        outputs = [LOGITS_NAME, CAM_NAME] if with_cam and self.has_cam else [LOGITS_NAME]
        try:
            result = self._session(len(batch)).run(outputs, {INPUT_NAME: batch})
        except ModelPackageError:
            raise
        except Exception as exc:
            raise InferenceError(f"{self.model_path.name}: inference failed: {exc}") from None
        logits = np.asarray(result[0], dtype=np.float32)
        cam = np.asarray(result[1], dtype=np.float32) if len(result) > 1 else None
        return logits, cam


class OpenVinoRuntime:
    """OpenVINO on CPU, compiled from the package's ONNX file (the optional ``openvino`` extra).

    The same FP32 or INT8 (QDQ) ONNX model as :class:`OnnxRuntime`; OpenVINO
    reads the quantise/dequantise pairs and runs INT8 kernels (AVX-512 VNNI or
    AMX where the CPU has them). One compiled model serves every batch size.
    ``inference_precision`` ``"bf16"`` lets OpenVINO run FP32 layers in bf16 on
    a CPU with AVX-512 BF16 or AMX.
    """

    name = "openvino"

    def __init__(
        self,
        model_path: Path,
        *,
        precision: str = "fp32",
        threads: int | None = None,
        inference_precision: str | None = None,
    ) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise InferenceError(f"openvino is not installed ({exc})") from None
        self.model_path = Path(model_path)
        self.precision = precision
        self.threads = threads or default_threads()
        config: dict[str, Any] = {
            "INFERENCE_NUM_THREADS": self.threads,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if inference_precision is not None:
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        try:
            core = ov.Core()
            model = core.read_model(str(self.model_path))
            self._compiled = core.compile_model(model, "CPU", config)
        except Exception as exc:
            raise ModelPackageError(f"{self.model_path}: OpenVINO cannot load it: {exc}") from None
        names = [next(iter(o.get_names()), "") for o in self._compiled.outputs]
        self.output_names = names
        self.has_cam = CAM_NAME in names
        self._lock = threading.Lock()
        self._request = self._compiled.create_infer_request()

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Run each batch size once (OpenVINO compiles shape-specific kernels on first use)."""
        shape = [int(d) for d in self._compiled.input(0).get_partial_shape()[1:].to_shape()]
        for batch in batch_sizes:
            self.run(np.zeros((batch, *shape), dtype=np.float32), with_cam=self.has_cam)

    def run(self, x: np.ndarray, *, with_cam: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        batch = np.ascontiguousarray(x, dtype=np.float32)
        try:
            with self._lock:
                result = self._request.infer({0: batch})
                logits = np.array(result[self._compiled.output(LOGITS_NAME)], dtype=np.float32)
                cam = (
                    np.array(result[self._compiled.output(CAM_NAME)], dtype=np.float32)
                    if with_cam and self.has_cam
                    else None
                )
        except Exception as exc:
            raise InferenceError(f"{self.model_path.name}: inference failed: {exc}") from None
        return logits, cam


class TorchRuntime:
    """The package's torch network in eval mode; CAM through the same wrapper as ONNX.

    ``device`` (:func:`torch_device`) is where :meth:`run` computes, in FP32 (on a
    GPU in channels-last memory format); ``network`` stays on the CPU for the
    explanation and Monte Carlo dropout paths, which take CPU tensors.
    """

    name = "torch"
    precision = "fp32"

    def __init__(
        self, package: ModelPackage, *, threads: int | None = None, device: str = "cpu"
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = torch_device(device)
        self.network = package.build_network()
        self.has_cam = cam_parts(self.network) is not None
        self._cam_model = CamClassifier(self.network).eval() if self.has_cam else None
        self._run_network = self.network
        self._run_cam = self._cam_model
        if self.device.type != "cpu":
            on_device = copy.deepcopy(self.network).to(self.device)
            self._run_network = on_device.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
            self._run_cam = (
                CamClassifier(self._run_network).eval() if self._cam_model is not None else None
            )

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """No sessions to build; nothing to do beyond what loading did."""

    def run(self, x: np.ndarray, *, with_cam: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if self.device.type != "cpu":
            tensor = tensor.to(self.device).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if with_cam and self._run_cam is not None:
                logits, cam = self._run_cam(tensor)
                return logits.float().cpu().numpy(), cam.float().cpu().numpy()
            return self._run_network(tensor).float().cpu().numpy(), None


def open_runtime(
    package: ModelPackage,
    runtime: str = "onnx",
    *,
    precision: str = "auto",
    threads: int | None = None,
    device: str = "cpu",
) -> OnnxRuntime | TorchRuntime:
    """Open the runtime ``runtime`` for a package on ``device`` (auto, cpu, cuda, cuda:N).

    ``precision`` ``auto`` uses the INT8 model when the package has one, else FP32;
    on a GPU (the CUDA execution provider) ``auto`` means FP32, since the INT8 models
    are quantised for CPU integer kernels. An INT8 model is first checked against FP32
    (:func:`int8_disagreement`): beyond ``INT8_TOLERANCE`` ``auto`` warns and uses
    FP32, ``int8`` warns and keeps it.
    """
    reason = runtime_unavailable_reason(runtime)
    if reason:
        raise InferenceError(reason)
    check_device(device)
    if runtime == "torch":
        return TorchRuntime(package, threads=threads, device=device)
    if precision not in ("auto", "fp32", "int8"):
        raise InferenceError(f"unknown precision {precision!r} (auto, fp32, int8)")
    chosen = precision
    if precision == "auto":
        on_gpu = onnx_providers(device)[0] != _CPU_EP
        has_int8 = package.runtime_file("int8") is not None
        chosen = "int8" if has_int8 and not on_gpu else "fp32"
    path = package.runtime_file(chosen)
    if path is None:
        raise ModelPackageError(f"{package.name} {package.version} has no {chosen} ONNX model")
    opened = OnnxRuntime(path, precision=chosen, threads=threads, device=device)
    fp32_path = package.runtime_file("fp32")
    if chosen != "int8" or fp32_path is None:
        return opened
    fp32 = OnnxRuntime(fp32_path, precision="fp32", threads=threads, device=device)
    diff = int8_disagreement(package, opened, fp32)
    if diff <= INT8_TOLERANCE:
        return opened
    what = f"{package.name} {package.version}: INT8 probabilities differ from FP32 by {diff:.3f}"
    if precision == "int8":
        logger.warning(
            "%s on this CPU (tolerance %.2f); keeping INT8 as requested", what, INT8_TOLERANCE
        )
        return opened
    logger.warning(
        "%s on this CPU (tolerance %.2f); using the FP32 model instead", what, INT8_TOLERANCE
    )
    return fp32


#: The runtime check's tolerance (defined beside the export that records the same figure).
INT8_TOLERANCE = _INT8_TOLERANCE

_INT8_CHECKS: dict[tuple[str, str], float] = {}


def int8_disagreement(package: ModelPackage, int8: OnnxRuntime, fp32: OnnxRuntime) -> float:
    """Max |calibrated probability difference| of INT8 vs FP32 on two fixed synthetic chests.

    Computed once per package (and model files) per process; on this CPU, since the
    integer kernels ONNX Runtime picks depend on it.
    """
    from overread.inference.postprocess import calibrate
    from overread.models.calibration import synthetic_batch

    key = (package.sha256, str(int8.model_path))
    cached = _INT8_CHECKS.get(key)
    if cached is not None:
        return cached
    spec = package.manifest.input
    x = synthetic_batch(2, spec.size, spec.channels, seed=0)
    calibration, labels = package.manifest.calibration, package.labels
    a = calibrate(int8.run(x)[0], calibration, labels)
    b = calibrate(fp32.run(x)[0], calibration, labels)
    diff = float(np.max(np.abs(a - b)))
    _INT8_CHECKS[key] = diff
    logger.debug("%s: INT8 vs FP32 max probability difference %.4f", package.name, diff)
    return diff


__all__ = [
    "DEFAULT_THREADS",
    "DEVICE_PATTERN",
    "INT8_TOLERANCE",
    "OnnxRuntime",
    "Runtime",
    "TorchRuntime",
    "check_device",
    "default_threads",
    "int8_disagreement",
    "onnx_providers",
    "open_runtime",
    "padded_size",
    "runtime_unavailable_reason",
    "torch_device",
]
