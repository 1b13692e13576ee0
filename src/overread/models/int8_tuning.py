"""Which nodes make an INT8 model drift from its FP32 model, and which to keep in FP32.

Static INT8 quantisation rounds every quantised node's weights and output to 7 or 8
bits; in a small network a few nodes usually carry most of the resulting error (a
layer whose output range is dominated by a few large values, the class map whose one
scale is shared by all labels). :func:`int8_sensitivity` finds them by measurement,
not by guess: it quantises the model once per candidate node, either with that one
node left in FP32 (``mode="exclude"``: how much drift goes away without it) or with
only that node quantised (``mode="only"``: how much drift it causes alone), and
measures the largest probability difference to the FP32 model on a set of images.
:func:`choose_exclusions` then keeps the most sensitive nodes in FP32, one at a time,
until the drift is within a target. Calibration runs once per sweep (ONNX Runtime's
calibration cache), so a sweep costs one quantisation and one evaluation per node.
"""

from __future__ import annotations

import inspect
import logging
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from overread.errors import ModelPackageError
from overread.models.export import INPUT_NAME, LOGITS_NAME, quantize_int8
from overread.models.manifest import Int8Section

logger = logging.getLogger(__name__)

#: Largest INT8-vs-FP32 probability difference on the calibration images that an
#: export accepts before it searches for nodes to keep in FP32. The package tests allow
#: 0.05 on the same images; the margin covers images outside the calibration set.
DEFAULT_TARGET = 0.03
#: Largest calibrated-probability difference between a package's INT8 and FP32 models,
#: on the runtime check's two fixed synthetic chests, that ``precision="auto"``
#: accepts (:func:`overread.inference.runtimes.int8_disagreement`). On an AVX2 CPU
#: without VNNI, cxr-default 1.1.0's INT8 differs there by 0.047 with 7-bit weights
#: and by 0.090 with the earlier 8-bit weights, whose int16 sums saturate (0.98 on
#: phantoms); see docs/benchmarks.md.
INT8_TOLERANCE = 0.06

#: Op types the sweep considers: those the ONNX Runtime quantiser quantises in models
#: exported by :func:`overread.models.export.export_onnx`.
SWEEP_OP_TYPES = ("Conv", "Add", "MatMul", "Gemm", "Concat", "ReduceMean", "GlobalAveragePool")


@dataclass(frozen=True)
class Int8Options:
    """Settings of one static INT8 quantisation (see :func:`quantize_int8`)."""

    per_channel: bool = True
    method: str = "minmax"
    quant_format: str = "qdq"
    reduce_range: bool = True
    float_input_layer: bool = True
    exclude: tuple[str, ...] = ()

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`quantize_int8`."""
        return {
            "per_channel": self.per_channel,
            "method": self.method,
            "quant_format": self.quant_format,
            "reduce_range": self.reduce_range,
            "float_input_layer": self.float_input_layer,
            "exclude_nodes": list(self.exclude),
        }


@dataclass(frozen=True)
class NodeSensitivity:
    """The drift of the INT8 model with one node changed (see :func:`int8_sensitivity`)."""

    node: str
    op_type: str
    drift: float


@dataclass(frozen=True)
class SensitivityReport:
    """Per-node drifts, most sensitive first, and the drift with every node quantised."""

    mode: str
    baseline_drift: float
    nodes: list[NodeSensitivity] = field(default_factory=list)

    def ranked(self) -> list[str]:
        """Node names, most sensitive first."""
        return [row.node for row in self.nodes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "baseline_drift": self.baseline_drift,
            "nodes": [
                {"node": row.node, "op_type": row.op_type, "drift": row.drift} for row in self.nodes
            ],
        }


def candidate_nodes(
    fp32_path: Path | str, options: Int8Options | None = None
) -> list[tuple[str, str]]:
    """``(name, op_type)`` of the nodes a sweep varies, in graph order.

    Nodes already kept in FP32 by ``options`` (its ``exclude`` list and, with
    ``float_input_layer``, the convolutions reading the input) are left out, and so
    are the nodes that pool the ``cam`` output into logits, which always stay FP32
    (:func:`~overread.models.export.pool_tail_nodes`).
    """
    import onnx

    from overread.models.export import _input_convolutions, pool_tail_nodes

    opts = options or Int8Options()
    model = onnx.load(str(fp32_path), load_external_data=False)
    skipped = set(opts.exclude) | set(pool_tail_nodes(Path(fp32_path)))
    if opts.float_input_layer:
        skipped.update(_input_convolutions(Path(fp32_path)))
    return [
        (node.name, node.op_type)
        for node in model.graph.node
        if node.op_type in SWEEP_OP_TYPES and node.name and node.name not in skipped
    ]


#: Ops the quantiser leaves to their neighbours (their tensors are quantised, or not, by
#: the nodes around them): a group follows a node's output through them.
PASS_THROUGH_OPS = ("Relu", "Identity", "Flatten", "Reshape", "MaxPool")


def fp32_group(fp32_path: Path | str, node: str) -> list[str]:
    """``node`` and the quantisable nodes that read its output: what keeps it in FP32.

    In a QDQ model a tensor is quantised when either the node writing it or a node
    reading it is quantised, so leaving one convolution in FP32 alone still rounds its
    output for the next one. The group follows the output through pass-through ops
    (:data:`PASS_THROUGH_OPS`, e.g. the ReLU after a convolution).
    """
    import onnx

    from overread.models.export import pool_tail_nodes

    model = onnx.load(str(fp32_path), load_external_data=False)
    tail = set(pool_tail_nodes(Path(fp32_path)))  # FP32 always: not part of a group
    readers: dict[str, list[onnx.NodeProto]] = {}
    for item in model.graph.node:
        for name in item.input:
            readers.setdefault(name, []).append(item)
    by_name = {item.name: item for item in model.graph.node}
    if node not in by_name:
        raise ModelPackageError(f"{Path(fp32_path).name} has no node {node!r}")
    group = [node]
    pending = list(by_name[node].output)
    while pending:
        for reader in readers.get(pending.pop(), []):
            if reader.op_type in PASS_THROUGH_OPS:
                pending.extend(reader.output)
            elif (
                reader.op_type in SWEEP_OP_TYPES
                and reader.name not in group
                and reader.name not in tail
            ):
                group.append(reader.name)
    return group


class _Session:
    """An FP32 or INT8 ONNX model on the CPU, returning probabilities."""

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 2
        options.log_severity_level = 3
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        logits = np.concatenate(
            [
                np.asarray(self._session.run([LOGITS_NAME], {INPUT_NAME: chunk})[0])
                for chunk in np.array_split(images.astype(np.float32), max(1, len(images) // 16))
            ]
        )
        return np.asarray(1.0 / (1.0 + np.exp(-logits.astype(np.float64))))


def probability_drift(fp32_path: Path | str, int8_path: Path | str, images: np.ndarray) -> float:
    """Largest absolute difference of sigmoid probabilities, INT8 vs FP32, on ``images``."""
    a = _Session(Path(fp32_path)).probabilities(images)
    b = _Session(Path(int8_path)).probabilities(images)
    return float(np.max(np.abs(a - b)))


class _Quantiser:
    """Quantises one FP32 model repeatedly with one calibration (cached where supported)."""

    def __init__(self, fp32_path: Path, calibration: np.ndarray, workdir: Path) -> None:
        self.fp32_path = fp32_path
        self.calibration = calibration
        self.workdir = workdir
        self._count = 0
        self._caches: dict[str, Path] = {}
        self._reference: np.ndarray | None = None

    def reference(self, images: np.ndarray) -> np.ndarray:
        if self._reference is None:
            self._reference = _Session(self.fp32_path).probabilities(images)
        return self._reference

    def drift(
        self, options: Int8Options, images: np.ndarray, *, reference: bool = True, **extra: Any
    ) -> float:
        """Drift on ``images``; ``reference=False``: images other than the cached set."""
        self._count += 1
        out = self.workdir / f"int8-{self._count}.onnx"
        cache = self._caches.setdefault(options.method, self.workdir / f"ranges-{options.method}")
        quantize_int8(
            self.fp32_path,
            out,
            self.calibration,
            calibration_cache=cache,
            **options.kwargs(),
            **extra,
        )
        got = _Session(out).probabilities(images)
        out.unlink(missing_ok=True)
        expected = (
            self.reference(images) if reference else _Session(self.fp32_path).probabilities(images)
        )
        return float(np.max(np.abs(got - expected)))


def int8_sensitivity(
    fp32_path: Path | str,
    calibration: np.ndarray,
    images: np.ndarray | None = None,
    *,
    options: Int8Options | None = None,
    mode: Literal["exclude", "only"] = "exclude",
    nodes: Sequence[str] | None = None,
) -> SensitivityReport:
    """Measure how much each node's quantisation moves the probabilities.

    Parameters
    ----------
    fp32_path
        The FP32 ONNX model (input ``image``, output ``logits``).
    calibration
        float32 ``(N, C, H, W)`` images to calibrate activation ranges on.
    images
        Images to measure the drift on (default: the calibration images).
    options
        The quantisation settings under test; nodes they exclude stay excluded.
    mode
        ``exclude``: each node in turn is left in FP32 with its output (its
        :func:`fp32_group`) and the rest quantised, and the nodes are ranked by how
        low the drift gets (the node whose removal helps most first). ``only``: each node alone is quantised, ranked by the
        drift it causes (highest first).
    nodes
        Node names to sweep (default: every :func:`candidate_nodes` node).
    """
    if mode not in ("exclude", "only"):
        raise ModelPackageError(f"unknown sensitivity mode {mode!r} (exclude, only)")
    fp32 = Path(fp32_path)
    opts = options or Int8Options()
    evaluation = calibration if images is None else images
    candidates = candidate_nodes(fp32, opts)
    op_types = dict(candidates)
    names = list(nodes) if nodes is not None else [name for name, _ in candidates]
    unknown = [name for name in names if name not in op_types]
    if unknown:
        raise ModelPackageError(f"not quantisable nodes of {fp32.name}: {', '.join(unknown)}")
    with tempfile.TemporaryDirectory(prefix="overread-int8-") as tmp:
        quantiser = _Quantiser(fp32, calibration, Path(tmp))
        baseline = quantiser.drift(opts, evaluation)
        rows = []
        for name in names:
            if mode == "exclude":
                extra = [n for n in fp32_group(fp32, name) if n not in opts.exclude]
                drift = quantiser.drift(replace(opts, exclude=(*opts.exclude, *extra)), evaluation)
            else:
                drift = quantiser.drift(opts, evaluation, nodes_to_quantize=[name])
            rows.append(NodeSensitivity(node=name, op_type=op_types[name], drift=drift))
    rows.sort(key=lambda row: row.drift, reverse=mode == "only")
    return SensitivityReport(mode=mode, baseline_drift=baseline, nodes=rows)


@dataclass(frozen=True)
class ExclusionChoice:
    """The settings :func:`choose_exclusions` settled on and what they measured."""

    options: Int8Options
    drift: float
    baseline_drift: float
    steps: list[tuple[str, float]]
    sensitivity: SensitivityReport | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "exclude": list(self.options.exclude),
            "drift": self.drift,
            "baseline_drift": self.baseline_drift,
            "steps": [{"node": node, "drift": drift} for node, drift in self.steps],
            "sensitivity": None if self.sensitivity is None else self.sensitivity.to_dict(),
        }


def choose_exclusions(
    fp32_path: Path | str,
    calibration: np.ndarray,
    images: np.ndarray | None = None,
    *,
    options: Int8Options | None = None,
    target: float = DEFAULT_TARGET,
    max_nodes: int = 3,
    rank: Literal["exclude", "only"] = "only",
    guard: np.ndarray | Sequence[np.ndarray] | None = None,
) -> ExclusionChoice:
    """Keep the most drift-sensitive nodes in FP32 until the drift is within ``target``.

    Quantises with ``options`` first; if the drift exceeds ``target``, ranks the
    nodes by :func:`int8_sensitivity` (``rank`` mode) and adds them to the FP32 set
    in that order, each with its output (:func:`fp32_group`), re-measuring after
    each, until the drift is within ``target`` or ``max_nodes`` groups were kept. A node that does not lower the drift is not kept; at most
    ``2 * max_nodes`` nodes are tried. With ``guard`` (other image sets, e.g. those the
    runtime checks INT8 with), a group is kept only if it does not raise the drift on
    any of them (each set on its own, so one set's maximum cannot hide another's): the
    search is in-sample, and a group that helps the calibration images can hurt others.
    """
    fp32 = Path(fp32_path)
    opts = options or Int8Options()
    evaluation = calibration if images is None else images
    with tempfile.TemporaryDirectory(prefix="overread-int8-") as tmp:
        quantiser = _Quantiser(fp32, calibration, Path(tmp))
        baseline = quantiser.drift(opts, evaluation)
        if baseline <= target or max_nodes <= 0:
            return ExclusionChoice(opts, baseline, baseline, [], None)
        report = int8_sensitivity(fp32, calibration, evaluation, options=opts, mode=rank)
        chosen, drift = opts, baseline
        guards = [] if guard is None else [guard] if isinstance(guard, np.ndarray) else list(guard)
        guard_drift = [quantiser.drift(opts, images, reference=False) for images in guards]
        steps: list[tuple[str, float]] = []
        for row in report.nodes[: 2 * max_nodes]:
            if len(steps) >= max_nodes or drift <= target:
                break
            extra = [n for n in fp32_group(fp32, row.node) if n not in chosen.exclude]
            if not extra:
                continue
            trial = replace(chosen, exclude=(*chosen.exclude, *extra))
            trial_drift = quantiser.drift(trial, evaluation)
            if trial_drift >= drift:
                continue
            trial_guard = []
            for images, before in zip(guards, guard_drift, strict=True):
                trial_guard.append(quantiser.drift(trial, images, reference=False))
                if trial_guard[-1] > before:
                    break
            if len(trial_guard) < len(guards) or any(
                after > before for after, before in zip(trial_guard, guard_drift, strict=True)
            ):
                continue
            guard_drift = trial_guard
            chosen, drift = trial, trial_drift
            steps.append((row.node, trial_drift))
    return ExclusionChoice(chosen, drift, baseline, steps, report)


def quantize_tuned(
    fp32_path: Path | str,
    int8_path: Path | str,
    calibration: np.ndarray,
    *,
    options: Int8Options | None = None,
    target: float | None = DEFAULT_TARGET,
    max_nodes: int = 3,
    origin: str = "",
    guard: np.ndarray
    | Sequence[np.ndarray]
    | Callable[[], np.ndarray | Sequence[np.ndarray]]
    | None = None,
) -> tuple[Path, Int8Section]:
    """Quantise ``fp32_path`` to ``int8_path``; with a ``target``, search exclusions first.

    The export default: the settings of ``options`` (default :class:`Int8Options`),
    plus the nodes :func:`choose_exclusions` keeps in FP32 when the drift on the
    calibration images exceeds ``target`` (``None``: no search), each group kept only
    if it does not raise the drift on ``guard`` (see :func:`choose_exclusions`;
    :func:`export_guard` gives the exports' guard, made only when a search runs).
    Returns the INT8
    path and the manifest section recording what was done and measured.
    """
    from overread.models.export import pool_tail_nodes

    opts = options or Int8Options()
    names = {name for name, _ in candidate_nodes(fp32_path, replace(opts, exclude=()))}
    # The pooling tail is FP32 anyway: an exclusion list naming it (as recorded by
    # earlier exports) is still accepted.
    names.update(pool_tail_nodes(Path(fp32_path)))
    unknown = [name for name in opts.exclude if name not in names]
    if unknown:
        raise ModelPackageError(
            f"cannot keep {', '.join(unknown)} in FP32: not a quantisable node of the model"
        )
    baseline: float | None = None
    if target is not None:
        choice = choose_exclusions(
            fp32_path,
            calibration,
            options=opts,
            target=target,
            max_nodes=max_nodes,
            guard=guard() if callable(guard) else guard,
        )
        opts, baseline = choice.options, choice.baseline_drift
    out = quantize_int8(fp32_path, int8_path, calibration, **opts.kwargs())
    drift = probability_drift(fp32_path, out, calibration)
    # What the runtime check will see (its two synthetic chests; uncalibrated here, the
    # package's calibration is fitted later): beyond its tolerance, "auto" serves FP32.
    channels, size = int(calibration.shape[1]), int(calibration.shape[-1])
    runtime_drift = probability_drift(fp32_path, out, runtime_guard(size, channels)[:2])
    if runtime_drift > INT8_TOLERANCE:
        logger.warning(
            "%s: INT8 differs from FP32 by %.3f on the runtime check's images before "
            "calibration (the check's tolerance %.2f, on calibrated probabilities): "
            "precision 'auto' will likely serve the FP32 model",
            Path(int8_path).name,
            runtime_drift,
            INT8_TOLERANCE,
        )
    section = Int8Section(
        quant_format=opts.quant_format,
        per_channel=opts.per_channel,
        reduce_range=opts.reduce_range,
        method=opts.method,
        float_input_layer=opts.float_input_layer,
        exclude=list(opts.exclude),
        target=target,
        calibration=origin or f"{len(calibration)} images",
        max_prob_diff=drift,
        baseline_max_prob_diff=baseline,
        runtime_check_max_prob_diff=runtime_drift,
    )
    return out, section


def runtime_guard(size: int, channels: int = 1) -> np.ndarray:
    """Synthetic chests like those :func:`overread.inference.runtimes.int8_disagreement`
    checks an INT8 model on (eight, the first two the same as its two)."""
    from overread.models.calibration import synthetic_batch

    return synthetic_batch(8, size, channels, seed=0)


def export_guard(
    size: int, chain: Sequence[dict[str, Any]], channels: int = 1
) -> Callable[[], list[np.ndarray]]:
    """The images an export's search must not make worse: the runtime check's synthetic
    chests and 64 phantoms (seed 1) outside the calibration set (seed 0)."""

    def make() -> list[np.ndarray]:
        from overread.models.calibration import calibration_images

        held_out, _ = calibration_images(64, size, chain, channels, seed=1)
        return [runtime_guard(size, channels), held_out.astype(np.float32)]

    return make


def options_from_section(section: Int8Section) -> Int8Options:
    """The :class:`Int8Options` a manifest's ``int8`` section records."""
    return Int8Options(
        per_channel=section.per_channel,
        method=section.method,
        quant_format=section.quant_format,
        reduce_range=section.reduce_range,
        float_input_layer=section.float_input_layer,
        exclude=tuple(section.exclude),
    )


def supports_calibration_cache() -> bool:
    """True when this ONNX Runtime's ``quantize_static`` can reuse calibrated ranges."""
    from onnxruntime.quantization import quantize_static

    return "calibration_cache_path" in inspect.signature(quantize_static).parameters


__all__ = [
    "DEFAULT_TARGET",
    "PASS_THROUGH_OPS",
    "SWEEP_OP_TYPES",
    "ExclusionChoice",
    "Int8Options",
    "NodeSensitivity",
    "SensitivityReport",
    "candidate_nodes",
    "choose_exclusions",
    "export_guard",
    "fp32_group",
    "int8_sensitivity",
    "options_from_section",
    "probability_drift",
    "quantize_tuned",
    "runtime_guard",
    "supports_calibration_cache",
]
