"""Inference benchmark: torch eager vs ONNX Runtime FP32 vs INT8, side by side in one run.

Measured in one process on the same inputs, one runtime after another, so the
figures are comparable; targets are judged from these numbers, never from timed
tests. Everything here is CPU-bound and sized to finish in about a minute on 2
cores.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from overread.errors import InferenceError
from overread.inference.postprocess import sigmoid
from overread.inference.runtimes import OnnxRuntime, Runtime, TorchRuntime, default_threads
from overread.models.calibration import PHANTOM_SIZE, synthetic_batch, synthetic_chest
from overread.models.package import ModelPackage


def machine_description() -> dict[str, Any]:
    """CPU model, cores and INT8/bf16 flags (AVX-512 VNNI, AMX), and library versions."""
    import onnxruntime

    from overread.models.cpu import cpu_description

    try:
        import openvino

        openvino_version: str | None = openvino.__version__
    except ImportError:
        openvino_version = None
    return {
        **cpu_description(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "openvino": openvino_version,
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def _latencies(call: Callable[[], object], repeats: int, warmup: int = 5) -> np.ndarray:
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return np.asarray(times) * 1000.0


def _interleaved(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int = 5
) -> dict[str, np.ndarray]:
    """Latencies (ms) of several calls measured in alternation.

    Round-robin timing means a burst of load from other processes on a shared
    machine hits every runtime alike, so their ratio stays meaningful.
    """
    for call in calls.values():
        for _ in range(warmup):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            started = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - started)
    return {name: np.asarray(values) * 1000.0 for name, values in times.items()}


def _runtime_rows(
    runs: dict[str, Callable[[np.ndarray], np.ndarray]],
    one: np.ndarray,
    eight: np.ndarray,
    repeats: int,
) -> list[dict[str, Any]]:
    single = _interleaved({n: partial(r, one) for n, r in runs.items()}, repeats)
    batched = _interleaved({n: partial(r, eight) for n, r in runs.items()}, max(5, repeats // 4), 2)
    return [
        {
            "runtime": name,
            "batch1_p50_ms": float(np.percentile(single[name], 50)),
            "batch1_p95_ms": float(np.percentile(single[name], 95)),
            "batch1_min_ms": float(np.min(single[name])),
            "batch8_images_per_s": float(len(eight) / (np.median(batched[name]) / 1000.0)),
        }
        for name in runs
    ]


def _logits_of(runtime: Runtime) -> Callable[[np.ndarray], np.ndarray]:
    def run(x: np.ndarray) -> np.ndarray:
        return runtime.run(x)[0]

    return run


def write_large_cr(path: Path, size: int = 3000, seed: int = 0) -> Path:
    """A ``size x size`` 12-bit CR DICOM (about 18 MB) for preprocessing timings."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

    pixels = (synthetic_chest(size, np.random.default_rng(seed)) * 4000).astype(np.uint16)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.1")
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = "CR", "CHEST", "PA"
    ds.PatientID = "BENCH"
    ds.Rows, ds.Columns = size, size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def preprocessing_cost(
    package: ModelPackage, repeats: int = 15, size: int = 3000
) -> dict[str, Any]:
    """Read and chain cost per image for a ``size x size`` CR, on one core, plus the pipeline.

    The serving read (:meth:`Compose.read_and_apply`, which area-reduces a native
    grey film before its window) and the full-resolution order (read everything,
    then each step) are timed in alternation in the same run, so their ratio holds
    on a loaded machine; ``read_ms`` and ``chain_ms`` split the full-resolution
    order. Torch runs on one thread here, as the target is per core.
    """
    from overread.imaging import read
    from overread.imaging.reader import default_imaging_settings
    from overread.imaging.transforms import build_chain
    from overread.inference.pipeline import Pipeline

    chain = build_chain(package.manifest.input.chain)
    configured = default_imaging_settings()
    reduced = configured.model_copy(update={"reduce_first": True})
    full = configured.model_copy(update={"reduce_first": False})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory(prefix="overread-bench-") as tmp:
            path = write_large_cr(Path(tmp) / "cr.dcm", size)
            fast_run = chain.read_and_apply(path, settings=reduced)
            full_run = chain.read_and_apply(path, settings=full)
            both = _interleaved(
                {
                    "reduced": lambda: chain.read_and_apply(path, settings=reduced),
                    "full": lambda: chain.read_and_apply(path, settings=full),
                },
                repeats,
                warmup=2,
            )
            read_ms = _latencies(lambda: read(path, settings=full), repeats, warmup=1)
            image = read(path, settings=full)
            chain_ms = _latencies(lambda: chain(image), repeats, warmup=1)
            torch.set_num_threads(threads)
            pipeline = Pipeline(
                package, precision="int8" if package.runtime_file("int8") else "fp32"
            )
            end_to_end = _latencies(lambda: pipeline.predict([path]), repeats, warmup=1)
            explained = _latencies(
                lambda: pipeline.predict([path], explain=True), repeats, warmup=1
            )
    finally:
        torch.set_num_threads(threads)
    serving = float(np.median(both["reduced"]))
    full_ms = float(np.median(both["full"]))
    return {
        "image": f"{size}x{size} CR, 12-bit, uncompressed",
        "threads": 1,
        "reduced_first": fast_run.reduced_first and configured.reduce_first,
        "preprocess_ms": serving if configured.reduce_first else full_ms,
        "preprocess_min_ms": float(np.min(both["reduced" if configured.reduce_first else "full"])),
        "full_resolution_ms": full_ms,
        "full_resolution_min_ms": float(np.min(both["full"])),
        "speedup_vs_full_resolution": full_ms / serving,
        "max_input_diff_vs_full_resolution": float(
            np.abs(fast_run.processed.pixels - full_run.processed.pixels).max()
        ),
        "read_ms": float(np.median(read_ms)),
        "chain_ms": float(np.median(chain_ms)),
        "pipeline_ms": float(np.median(end_to_end)),
        "pipeline_explain_ms": float(np.median(explained)),
        "pipeline_precision": pipeline.model.precision,
    }


def phantom_auc(package: ModelPackage, n: int = 200) -> dict[str, Any]:
    """Macro AUC of FP32 and INT8 on a phantom cohort, or the reason it cannot be measured."""
    if not package.manifest.trained:
        return {"available": False, "reason": "the default model is an untrained placeholder"}
    if package.runtime_file("int8") is None or package.runtime_file("fp32") is None:
        return {"available": False, "reason": "the package lacks an FP32 or INT8 ONNX model"}
    try:
        from overread.phantom import generate_cohort
    except ImportError:
        return {"available": False, "reason": "the phantom generator is not available"}
    import pandas as pd
    from sklearn.metrics import roc_auc_score

    from overread.imaging import read
    from overread.imaging.transforms import build_chain

    chain = build_chain(package.manifest.input.chain)
    with tempfile.TemporaryDirectory(prefix="overread-bench-phantom-") as tmp:
        generate_cohort(tmp, n, 20240, rows=PHANTOM_SIZE, cols=PHANTOM_SIZE)
        truth = pd.read_csv(Path(tmp) / "truth.csv")
        x = np.stack([chain(read(Path(tmp) / p)).pixels for p in truth["Path"]])[:, None]
    x = np.repeat(x.astype(np.float32), package.manifest.input.channels, axis=1)
    scores = {}
    for precision in ("fp32", "int8"):
        runtime_path = package.runtime_file(precision)
        assert runtime_path is not None
        runtime = OnnxRuntime(runtime_path, precision=precision)
        logits = np.concatenate([runtime.run(x[i : i + 8])[0] for i in range(0, len(x), 8)])
        probabilities = sigmoid(logits)
        aucs = []
        for index, label in enumerate(package.labels):
            if label in truth and truth[label].nunique() == 2:
                aucs.append(roc_auc_score(truth[label].to_numpy(), probabilities[:, index]))
        scores[precision] = float(np.mean(aucs)) if aucs else float("nan")
    return {
        "available": True,
        "images": len(x),
        "fp32_auc": scores["fp32"],
        "int8_auc": scores["int8"],
        "int8_auc_loss": scores["fp32"] - scores["int8"],
    }


def quantisation_study(
    package: ModelPackage, *, repeats: int = 50, threads: int | None = None
) -> list[dict[str, Any]]:
    """Quantisation variants of the package's network (and of a DenseNet), timed side by side.

    Every variant is exported from the same weights and calibrated on the same
    images, then all are timed in alternation at batch 1. Rows give the latency and
    the largest probability change against FP32 of the same network.
    """
    from overread.models.calibration import calibration_images
    from overread.models.export import export_onnx, quantize_int8
    from overread.models.networks import build_network

    threads = threads or default_threads()
    spec = package.manifest.input
    images, _ = calibration_images(32, spec.size, spec.chain, spec.channels, seed=11)
    test = synthetic_batch(8, spec.size, spec.channels, seed=12)
    example = torch.from_numpy(images[:1])
    torch.manual_seed(0)
    densenet = build_network(
        "densenet-tiny", in_channels=spec.channels, num_classes=len(package.labels)
    ).eval()
    variants: list[tuple[str, str, str, dict[str, Any]]] = [
        # (label, network, base fp32 file, quantisation options or {"fp32": True})
        ("fp32, BN folded", "package", "fold", {"fp32": True}),
        ("int8 QDQ per-channel minmax (default)", "package", "fold", {}),
        ("int8 QDQ per-tensor minmax", "package", "fold", {"per_channel": False}),
        ("int8 QOperator per-channel minmax", "package", "fold", {"quant_format": "qoperator"}),
        ("int8 QDQ per-channel percentile", "package", "fold", {"method": "percentile"}),
        ("int8 QDQ per-channel, BN not folded", "package", "nofold", {}),
        ("int8 QDQ per-channel, basic graph opt", "package", "fold", {"optimization": "basic"}),
        ("densenet-tiny fp32", "densenet", "fold", {"fp32": True}),
        ("densenet-tiny int8 QDQ per-channel", "densenet", "fold", {}),
    ]
    networks = {"package": package.build_network(), "densenet": densenet}
    runtimes: dict[str, OnnxRuntime] = {}
    with tempfile.TemporaryDirectory(prefix="overread-quant-") as tmp:
        bases: dict[tuple[str, str], Path] = {}
        for net_name, network in networks.items():
            for base in ("fold", "nofold"):
                if net_name == "densenet" and base == "nofold":
                    continue
                path = Path(tmp) / f"{net_name}-{base}.onnx"
                export_onnx(network, path, example, fold=base == "fold")
                bases[(net_name, base)] = path
        for index, (label, net_name, base, options) in enumerate(variants):
            options = dict(options)
            optimization = options.pop("optimization", "all")
            model_path = bases[(net_name, base)]
            if not options.pop("fp32", False):
                model_path = quantize_int8(
                    model_path, Path(tmp) / f"v{index}.onnx", images, **options
                )
            runtimes[label] = OnnxRuntime(model_path, threads=threads, optimization=optimization)
        reference = {
            "package": sigmoid(runtimes["fp32, BN folded"].run(test)[0]),
            "densenet": sigmoid(runtimes["densenet-tiny fp32"].run(test)[0]),
        }
        one = test[:1].copy()
        times = _interleaved({k: partial(_logits_of(r), one) for k, r in runtimes.items()}, repeats)
        rows = []
        for label, net_name, _, _ in variants:
            drift = np.abs(sigmoid(runtimes[label].run(test)[0]) - reference[net_name]).max()
            fp32_label = "fp32, BN folded" if net_name == "package" else "densenet-tiny fp32"
            rows.append(
                {
                    "variant": label,
                    "batch1_p50_ms": float(np.median(times[label])),
                    "batch1_min_ms": float(np.min(times[label])),
                    "speedup_vs_fp32": float(
                        np.median(times[fp32_label]) / np.median(times[label])
                    ),
                    "max_prob_diff_vs_fp32": float(drift),
                }
            )
    return rows


def openvino_available() -> bool:
    """True when the optional ``openvino`` package imports."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def network_runtimes(
    network: torch.nn.Module,
    channels: int,
    size: int,
    chain: Sequence[dict[str, Any]],
    *,
    repeats: int,
    threads: int,
) -> list[dict[str, Any]]:
    """One network under every runtime here, batch 1, timed in alternation.

    The network is exported to ONNX (FP32) and quantised to static INT8 (QDQ,
    per-channel, calibrated on phantom films through ``chain``), then run by
    torch eager, ONNX Runtime FP32 and INT8 and, when installed, OpenVINO FP32
    (f32 precision pinned), bf16 and INT8. Rows give latency and the largest
    probability difference against torch eager on 8 test images.
    """
    from overread.models.calibration import calibration_images
    from overread.models.export import export_onnx, quantize_int8

    images, _ = calibration_images(32, size, chain, channels, seed=11)
    test = synthetic_batch(8, size, channels, seed=12)
    one = test[:1].copy()
    network = network.eval()

    def eager(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = network(torch.from_numpy(x)).numpy()
        return out

    runs: dict[str, Callable[[np.ndarray], np.ndarray]] = {"torch eager fp32": eager}
    with tempfile.TemporaryDirectory(prefix="overread-runtimes-") as tmp:
        fp32_path = Path(tmp) / "fp32.onnx"
        export_onnx(network, fp32_path, torch.from_numpy(images[:1]))
        int8_path = quantize_int8(fp32_path, Path(tmp) / "int8.onnx", images)
        for precision, path in (("fp32", fp32_path), ("int8", int8_path)):
            runs[f"onnxruntime {precision}"] = _logits_of(
                OnnxRuntime(path, precision=precision, threads=threads)
            )
        if openvino_available():
            from overread.inference.runtimes import OpenVinoRuntime

            for label, path, hint in (
                ("openvino fp32", fp32_path, "f32"),
                ("openvino bf16", fp32_path, "bf16"),
                ("openvino int8", int8_path, None),
            ):
                runs[label] = _logits_of(
                    OpenVinoRuntime(path, threads=threads, inference_precision=hint)
                )
        reference = sigmoid(eager(test))
        drift = {
            name: float(np.abs(sigmoid(run(test)) - reference).max()) for name, run in runs.items()
        }
        times = _interleaved({name: partial(run, one) for name, run in runs.items()}, repeats)
    eager_p50 = float(np.median(times["torch eager fp32"]))
    return [
        {
            "runtime": name,
            "batch1_p50_ms": float(np.median(times[name])),
            "batch1_p95_ms": float(np.percentile(times[name], 95)),
            "batch1_min_ms": float(np.min(times[name])),
            "speedup_vs_torch_eager": eager_p50 / float(np.median(times[name])),
            "max_prob_diff_vs_torch_eager": drift[name],
        }
        for name in runs
    ]


def densenet121_runtimes(
    package: ModelPackage, *, repeats: int = 20, threads: int | None = None
) -> dict[str, Any]:
    """:func:`network_runtimes` for a DenseNet-121 (MONAI, CheXpert's architecture).

    Random weights with the package's input and labels: latency does not depend
    on the weights, and INT8's probability drift is shown for what it is on an
    untrained network (an upper bound, not the trained model's).
    """
    from overread.models.networks import build_network

    threads = threads or default_threads()
    spec = package.manifest.input
    torch.manual_seed(0)
    network = build_network(
        "densenet121", in_channels=spec.channels, num_classes=len(package.labels)
    )
    rows = network_runtimes(
        network, spec.channels, spec.size, spec.chain, repeats=repeats, threads=threads
    )
    return {
        "architecture": "densenet121 (MONAI DenseNet121, random weights)",
        "input": f"{spec.channels}x{spec.size}x{spec.size}",
        "threads": threads,
        "repeats": repeats,
        "runtimes": rows,
    }


@dataclass
class _GpuRuns:
    runs: dict[str, Callable[[np.ndarray], np.ndarray]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def _gpu_runs(package: ModelPackage, device: str) -> _GpuRuns:
    """The GPU runtimes ``device`` asks for and this machine has (none for ``cpu``)."""
    from overread.inference.runtimes import check_device, torch_device

    found = _GpuRuns()
    if check_device(device) == "cpu":
        return found
    if torch_device(device).type == "cuda":
        found.runs[f"torch {device} fp32"] = _logits_of(TorchRuntime(package, device=device))
    else:
        found.skipped.append("torch: no CUDA GPU")
    _add_onnx_cuda(package, device, found)
    return found


def _add_onnx_cuda(package: ModelPackage, device: str, found: _GpuRuns) -> None:
    """The package's FP32 ONNX model under ONNX Runtime's CUDA provider, or why not."""
    from overread.inference.runtimes import onnx_providers

    path = package.runtime_file("fp32")
    first = onnx_providers("auto")[0]  # whether this build has the provider at all
    if path is None:
        found.skipped.append("onnxruntime: the package has no FP32 ONNX model")
    elif first == "CPUExecutionProvider":
        found.skipped.append("onnxruntime: no CUDAExecutionProvider in this build")
    else:
        runtime = OnnxRuntime(path, precision="fp32", device=device)
        if runtime.provider == "CPUExecutionProvider":
            found.skipped.append("onnxruntime: the CUDA session fell back to the CPU")
        else:
            found.runs["onnxruntime cuda fp32"] = _logits_of(runtime)


def int8_side_by_side(
    packages: Sequence[ModelPackage], *, repeats: int = 300, threads: int | None = None
) -> dict[str, Any]:
    """Batch-1 latency of several packages' INT8 models, timed in alternation in one process.

    Each package runs its own INT8 ONNX model (FP32 where it has none) on one
    synthetic chest at its own input size; alternating the calls lets a burst of load
    from other processes hit every package alike, so the ratios against the first
    package are the figures to compare (a 2x budget against the current default).
    """
    threads = threads or default_threads()
    runs: dict[str, Callable[[], object]] = {}
    names: list[str] = []
    for package in packages:
        spec = package.manifest.input
        precision = "int8" if package.runtime_file("int8") is not None else "fp32"
        path = package.runtime_file(precision)
        if path is None:
            raise InferenceError(f"{package.name} {package.version}: no ONNX model to time")
        x = synthetic_batch(1, spec.size, spec.channels, seed=7)
        name = f"{package.name} {package.version} ({precision}, {spec.size} px)"
        if name in runs:
            raise InferenceError(f"{name} is named twice")
        runtime = OnnxRuntime(path, precision=precision, threads=threads)
        runs[name] = partial(runtime.run, x)
        names.append(name)
    times = _interleaved(runs, repeats, warmup=20)
    first = times[names[0]]
    return {
        "machine": machine_description(),
        "threads": threads,
        "repeats": repeats,
        "packages": [
            {
                "package": name,
                "min_ms": float(times[name].min()),
                "p10_ms": float(np.percentile(times[name], 10)),
                "p50_ms": float(np.median(times[name])),
                "ratio_min": float(times[name].min() / first.min()),
                "ratio_p50": float(np.median(times[name]) / np.median(first)),
            }
            for name in names
        ],
    }


def _torch_gpu_calls(
    network: torch.nn.Module, device: torch.device
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """``network`` on ``device`` in channels-last memory format, FP32 and bf16 autocast.

    Each call takes a host array and returns host logits (FP32), as served: the
    copies both ways are in the time, and reading the result back synchronises.
    """
    on_device = network.eval().to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def call(x: np.ndarray, dtype: torch.dtype | None) -> np.ndarray:
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device)
        tensor = tensor.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if dtype is None:
                out = on_device(tensor)
            else:
                with torch.autocast(device_type=device.type, dtype=dtype):
                    out = on_device(tensor)
        result: np.ndarray = out.float().cpu().numpy()
        return result

    return {
        "torch fp32": partial(call, dtype=None),
        "torch bf16": partial(call, dtype=torch.bfloat16),
    }


def _batch_rows(
    runs: dict[str, Callable[[np.ndarray], np.ndarray]],
    batch: np.ndarray,
    repeats: int,
) -> list[dict[str, Any]]:
    """Batch 1 latency and batch-N throughput per run, timed in alternation.

    ``max_prob_diff_vs_fp32``: the largest probability difference on the batch
    against the first run (FP32).
    """
    one = batch[:1].copy()
    single = _interleaved({n: partial(r, one) for n, r in runs.items()}, repeats)
    many = _interleaved({n: partial(r, batch) for n, r in runs.items()}, max(5, repeats // 2), 3)
    reference = sigmoid(next(iter(runs.values()))(batch))
    return [
        {
            "runtime": name,
            "batch1_p50_ms": float(np.median(single[name])),
            "batch1_min_ms": float(np.min(single[name])),
            f"batch{len(batch)}_p50_ms": float(np.median(many[name])),
            f"batch{len(batch)}_images_per_s": float(len(batch) / (np.median(many[name]) / 1e3)),
            "max_prob_diff_vs_fp32": float(np.abs(sigmoid(run(batch)) - reference).max()),
        }
        for name, run in runs.items()
    ]


def training_throughput(
    network: torch.nn.Module,
    device: torch.device,
    batch: np.ndarray,
    *,
    steps: int = 20,
    warmup: int = 5,
    amp: torch.dtype | None = torch.bfloat16,
) -> dict[str, Any]:
    """Training images per second: forward, BCE loss, backward and an AdamW step.

    As the trainer runs on a GPU (channels-last, bf16 autocast; ``amp`` None for
    FP32), on one fixed batch already on the device, so the figure is the
    network's and not the data loader's. The network's own weights are trained
    (pass a copy to keep them).
    """
    network = network.train().to(device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    optimiser = torch.optim.AdamW(network.parameters(), lr=1e-4)
    x = torch.from_numpy(batch).to(device).contiguous(memory_format=torch.channels_last)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    with torch.no_grad():
        shape = network(x[:1]).shape[1:]
    rng = torch.Generator().manual_seed(0)
    target = (torch.rand((len(batch), *shape), generator=rng) > 0.8).float().to(device)

    def step() -> None:
        optimiser.zero_grad(set_to_none=True)
        dtype = amp or torch.float32
        with torch.autocast(device_type=device.type, dtype=dtype, enabled=amp is not None):
            loss = loss_fn(network(x).float(), target)
        loss.backward()
        optimiser.step()

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    network.eval()
    return {
        "batch": len(batch),
        "steps": steps,
        "precision": "bf16 autocast" if amp is not None else "fp32",
        "images_per_s": float(steps * len(batch) / seconds),
    }


def gpu_benchmark(
    package: ModelPackage,
    *,
    device: str = "cuda",
    repeats: int = 50,
    batch: int = 32,
    densenet121: bool = True,
    densenet_size: int = 320,
    train_batch: int = 16,
) -> dict[str, Any]:
    """Batch-1 latency and batch-``batch`` throughput on ``device``, per network and precision.

    The package's network, and (``densenet121``) a DenseNet-121 at the CheXpert
    recipe's input (1 x ``densenet_size``^2, 14 labels, random weights: time does
    not depend on the weights), each in torch FP32 and bf16 autocast (channels-last)
    and, where the ``onnxruntime-gpu`` build is installed, the package's FP32 ONNX
    model under ONNX Runtime's CUDA execution provider. ``device`` ``cpu`` times the
    same rows on the CPU, for comparison. ``training``: training images per second
    (:func:`training_throughput`) at ``batch`` for the package's network and at
    ``train_batch`` (the CheXpert recipe's 16) for the DenseNet-121.
    """
    from overread.inference.runtimes import check_device, torch_device
    from overread.models.networks import build_network

    chosen = torch_device(check_device(device))
    spec = package.manifest.input
    networks: list[dict[str, Any]] = []
    data = synthetic_batch(batch, spec.size, spec.channels, seed=7)
    runs = _torch_gpu_calls(package.build_network(), chosen)
    onnx = _GpuRuns()
    if chosen.type == "cuda":
        _add_onnx_cuda(package, device, onnx)
        runs.update(onnx.runs)
    networks.append(
        {
            "network": f"{package.name} {package.version} ({package.manifest.architecture})",
            "input": f"{spec.channels}x{spec.size}x{spec.size}",
            "rows": _batch_rows(runs, data, repeats),
            "training": training_throughput(package.build_network(), chosen, data),
        }
    )
    if densenet121:
        torch.manual_seed(0)
        dense = build_network("densenet121", in_channels=1, num_classes=14)
        data = synthetic_batch(batch, densenet_size, 1, seed=8)
        networks.append(
            {
                "network": "densenet121 (MONAI DenseNet121, random weights)",
                "input": f"1x{densenet_size}x{densenet_size}",
                "rows": _batch_rows(_torch_gpu_calls(dense, chosen), data, repeats),
                "training": training_throughput(dense, chosen, data[:train_batch]),
            }
        )
    gpu: dict[str, Any] = {"device": str(chosen)}
    if chosen.type == "cuda":
        props = torch.cuda.get_device_properties(chosen)
        gpu.update(
            name=props.name,
            memory_gib=round(props.total_memory / 2**30, 1),
            cuda=torch.version.cuda,
            max_memory_allocated_mib=round(torch.cuda.max_memory_allocated(chosen) / 2**20, 1),
        )
    return {
        "machine": machine_description(),
        "gpu": gpu,
        "repeats": repeats,
        "batch": batch,
        "networks": networks,
        "skipped": onnx.skipped,
    }


def benchmark_inference(
    package: ModelPackage,
    *,
    repeats: int = 50,
    threads: int | None = None,
    quantisation: bool = False,
    densenet121: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """The whole inference benchmark as a JSON-able dictionary.

    ``device`` other than ``cpu`` adds GPU rows (torch on CUDA, ONNX Runtime's CUDA
    execution provider, FP32) where this machine can run them; ``gpu_rows`` lists
    the ones added and ``gpu_skipped`` says why others were not.
    """
    gpu = _gpu_runs(package, device)  # first: a GPU demanded but absent is refused at once
    threads = threads or default_threads()
    torch.set_num_threads(threads)
    spec = package.manifest.input
    eight = synthetic_batch(8, spec.size, spec.channels, seed=7)
    one = eight[:1].copy()
    runs: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "torch eager fp32": _logits_of(TorchRuntime(package))
    }
    outputs: dict[str, np.ndarray] = {}
    extra: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    for precision in ("fp32", "int8"):
        path = package.runtime_file(precision)
        if path is None:
            continue
        runtime = OnnxRuntime(path, precision=precision, threads=threads)
        runs[f"onnxruntime {precision}"] = _logits_of(runtime)
        outputs[precision] = sigmoid(runtime.run(eight)[0])
        if openvino_available():
            from overread.inference.runtimes import OpenVinoRuntime

            hint = "f32" if precision == "fp32" else None
            extra[f"openvino {precision}"] = _logits_of(
                OpenVinoRuntime(
                    path, precision=precision, threads=threads, inference_precision=hint
                )
            )
    runs.update(extra)  # OpenVINO's rows after ONNX Runtime's
    runs.update(gpu.runs)
    rows = _runtime_rows(runs, one, eight, repeats)
    by_name = {row["runtime"]: row for row in rows}
    fp32 = by_name.get("onnxruntime fp32")
    int8 = by_name.get("onnxruntime int8")
    speedup = fp32["batch1_p50_ms"] / int8["batch1_p50_ms"] if fp32 and int8 else None
    speedup_min = fp32["batch1_min_ms"] / int8["batch1_min_ms"] if fp32 and int8 else None
    agreement = (
        float(np.max(np.abs(outputs["fp32"] - outputs["int8"]))) if len(outputs) == 2 else None
    )
    auc = phantom_auc(package)
    return {
        "model": {
            "name": package.name,
            "version": package.version,
            "sha256": package.sha256,
            "architecture": package.manifest.architecture,
            "trained": package.manifest.trained,
            "input": f"{spec.channels}x{spec.size}x{spec.size}",
        },
        "machine": machine_description(),
        "threads": threads,
        "repeats": repeats,
        "device": device,
        "gpu_rows": sorted(gpu.runs),
        "gpu_skipped": gpu.skipped,
        "runtimes": rows,
        "int8_speedup": speedup,
        "int8_speedup_best": speedup_min,
        "int8_max_prob_diff": agreement,
        "preprocessing": preprocessing_cost(package),
        "phantom_auc": auc,
        "int8_auc_loss": auc.get("int8_auc_loss"),
        "quantisation_study": quantisation_study(package, repeats=repeats, threads=threads)
        if quantisation
        else None,
        "densenet121": densenet121_runtimes(package, repeats=max(5, repeats // 2), threads=threads)
        if densenet121
        else None,
    }


__all__ = [
    "benchmark_inference",
    "densenet121_runtimes",
    "gpu_benchmark",
    "int8_side_by_side",
    "machine_description",
    "network_runtimes",
    "phantom_auc",
    "preprocessing_cost",
    "quantisation_study",
    "training_throughput",
    "write_large_cr",
]
