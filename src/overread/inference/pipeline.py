"""The one pipeline object: study image in, findings (and explanations) out.

The CLI, the service and evaluation all call :class:`Pipeline`, so a finding is
computed the same way everywhere: the imaging core's chain recorded in the model
package (preprocess), a runtime (ONNX Runtime by default), calibration, thresholds
and referral (postprocess), and class activation maps from the same forward pass
(explain). With ``trust=True`` every finding decided positive or indeterminate also
gets its explanation trust (:mod:`overread.explain.trust`): the CAM of that same pass
and one extra forward pass per image with each such map's top region removed. A bad
input becomes a :class:`Prediction` with ``ok=False`` and the
reason; the rest of the batch carries on.

Uncertainty: each image yields calibrated probability *samples* - one per
test-time augmentation view, Monte Carlo dropout pass and ensemble member (one in
all by default). Their mean is the probability decided on; each finding carries its
predictive entropy, its mutual information (only when there is more than one
sample: a single pass measures no disagreement, so it is ``None``, not 0) and,
where the package carries a conformal calibration made the same way, its
conformal prediction set. An ambiguous set (``both`` or ``empty``) makes the
finding INDETERMINATE, as does the threshold-proximity rule: the two join.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from overread.config import InferenceSettings
from overread.errors import InferenceError, ModelPackageError, OverreadError
from overread.evaluation.conformal import (
    ConformalMethod,
    LabelQuantiles,
    prediction_sets,
    set_names,
)
from overread.explain.cam import cam_to_heatmaps
from overread.explain.maps import ExplainMethod, explain_maps
from overread.explain.uncertainty import binary_entropy, mutual_information
from overread.imaging import Image
from overread.imaging.transforms import ChainRun, Compose, Letterbox, Resize, build_chain
from overread.inference.evidence import attach_trust, attach_trust_from_cam
from overread.inference.gate import (
    REFUSE,
    HeaderCheck,
    InputGate,
    check_header,
    record_verdict,
)
from overread.inference.postprocess import calibrate, decide
from overread.inference.result import FindingResult, ModelRef, Prediction
from overread.inference.runtimes import OnnxRuntime, TorchRuntime, open_runtime, padded_size
from overread.inference.uncertainty import SampleSettings, mc_dropout_logits, mc_dropout_refusal
from overread.models.manifest import Task
from overread.models.package import ModelPackage
from overread.models.registry import Registry
from overread.results import Decision, GateVerdict

if TYPE_CHECKING:
    from overread.inference.planar import PlanarPipeline
    from overread.inference.volume import VolumePipeline

logger = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str, str, str, int | None, int | None, int | None, str], Pipeline] = {}
_CACHE_LOCK = threading.Lock()


_REGISTRIES: dict[tuple[Path, bytes | None], Registry] = {}


def _shared_registry(fresh: Registry) -> Registry:
    """One registry per (root, key) per process, so verified packages stay cached."""
    key = (fresh.root.resolve(), fresh.key)
    with _CACHE_LOCK:
        return _REGISTRIES.setdefault(key, fresh)


_INFERENCE_SETTINGS: dict[tuple[object, ...], InferenceSettings] = {}


def configured_inference() -> InferenceSettings:
    """The ``[inference]`` settings, re-loaded only when their sources change.

    A worker asks for its pipeline once per study; parsing the settings each
    time would cost a millisecond, so they are cached on the ``OVERREAD_*``
    variables and the configuration file's mtime (as the imaging settings are).
    """
    import os

    from overread.config import load_settings

    config = Path(os.environ.get("OVERREAD_CONFIG", "overread.toml"))
    try:
        stamp: object = config.resolve().stat().st_mtime_ns
    except OSError:
        stamp = None
    env = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("OVERREAD_")))
    key = (str(config), stamp, env)
    cached = _INFERENCE_SETTINGS.get(key)
    if cached is None:
        cached = load_settings().inference
        _INFERENCE_SETTINGS.clear()
        _INFERENCE_SETTINGS[key] = cached
    return cached


def _plane_shape(image: Image) -> tuple[int, int]:
    """Rows and columns of one frame of ``image``."""
    shape = image.pixels.shape[-3:-1] if image.is_color else image.pixels.shape[-2:]
    return int(shape[0]), int(shape[1])


def _problem(path: str | None, exc: BaseException) -> str:
    """The error text without a leading ``path: `` (callers print ``path: problem``)."""
    message = str(exc) or type(exc).__name__
    if path and message.startswith(f"{path}: "):
        return message[len(path) + 2 :]
    return message


@dataclass
class _Prepared:
    """One input read and preprocessed: the header check is ``None`` when unreadable."""

    prediction: Prediction
    x: np.ndarray | None
    header: HeaderCheck | None
    box: Letterbox | None


class Pipeline:
    """Preprocess -> runtime -> postprocess -> explain for one model package.

    Parameters
    ----------
    package
        A verified :class:`~overread.models.ModelPackage`.
    runtime
        ``onnx`` (default; serving) or ``torch``.
    precision
        For ONNX: ``auto`` (INT8 when the package has it), ``fp32`` or ``int8``.
    threads
        Intra-op threads (default 2, the target node's cores).
    tta_views
        Test-time augmentation views per image (1: none); default: the package's
        ``uncertainty.tta_views``, else 1.
    mc_dropout
        Monte Carlo dropout passes (0: none; torch network); default: the package's
        ``uncertainty.mc_dropout_passes``, else 0. Refused for a network without
        dropout.
    registry
        Where an ensemble's members are found by hash (default: the settings').
    """

    def __init__(
        self,
        package: ModelPackage,
        *,
        runtime: str = "onnx",
        precision: str = "auto",
        threads: int | None = None,
        warmup: bool = True,
        tta_views: int | None = None,
        mc_dropout: int | None = None,
        registry: Registry | None = None,
        device: str | None = None,
    ) -> None:
        self.package = package
        if device is None:
            device = configured_inference().device
        self.device = device
        manifest = package.manifest
        if not manifest.input.chain:
            raise ModelPackageError(f"{package.path}: manifest records no preprocessing chain")
        self.chain: Compose = build_chain(manifest.input.chain)
        self.sampling = SampleSettings.for_package(
            manifest, tta_views=tta_views, mc_dropout=mc_dropout
        )
        self.members: list[Pipeline] = []
        if manifest.is_ensemble:
            found = (registry or Registry.from_settings()).ensemble_members(package)
            self.members = [
                Pipeline(
                    member,
                    runtime=runtime,
                    precision=precision,
                    threads=threads,
                    warmup=warmup,
                    tta_views=1,
                    mc_dropout=self.sampling.mc_dropout_passes,
                    device=device,
                )
                for member in found
            ]
            self.runtime: OnnxRuntime | TorchRuntime = self.members[0].runtime
        else:
            self.runtime = open_runtime(
                package, runtime, precision=precision, threads=threads, device=device
            )
        self.labels = package.labels
        self.model = ModelRef(
            name=package.name,
            version=package.version,
            sha256=package.sha256,
            runtime=self.runtime.name,
            precision=self.runtime.precision,
            trained=manifest.trained,
            calibrated=manifest.calibrated,
        )
        self._resize = next((t for t in self.chain if isinstance(t, Resize)), None)
        self._torch: TorchRuntime | None = (
            self.runtime if isinstance(self.runtime, TorchRuntime) else None
        )
        self._lock = threading.Lock()
        if self.sampling.mc_dropout_passes and not self.members:
            if self._torch is None:
                self._torch = TorchRuntime(package, threads=threads)
            refusal = mc_dropout_refusal(
                self._torch.network, f"{package.name} {package.version} ({manifest.architecture})"
            )
            if refusal:
                raise InferenceError(refusal)
        self._conformal = self._conformal_quantiles()
        self.gate = InputGate.of(package)
        if not manifest.trained:
            logger.info(
                "model %s %s is an untrained placeholder: its findings carry no meaning",
                package.name,
                package.version,
            )
        if warmup and not self.members:
            self.runtime.warmup((1,))

    def _conformal_quantiles(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Per-label (class 0, class 1) quantiles, if the package's calibration applies."""
        section = self.package.manifest.conformal
        if section is None:
            return None
        if not self.sampling.matches(section.scores):
            logger.warning(
                "%s %s: conformal sets were calibrated on probabilities made with %s, "
                "this pipeline makes them with %s; no conformal sets",
                self.package.name,
                self.package.version,
                section.scores,
                self.sampling.describe(),
            )
            return None
        method = ConformalMethod(section.method)
        pairs = []
        for label in self.labels:
            data = section.quantiles.get(label)
            # A label without a calibration always includes both classes.
            quantiles = LabelQuantiles.from_dict(data) if data else None
            pairs.append(quantiles.pair(method) if quantiles else (np.inf, np.inf))
        q = np.asarray(pairs, dtype=np.float64)
        return q[:, 0], q[:, 1]

    def warmup(self, batch_sizes: tuple[int, ...] = (1,)) -> None:
        """Create and run the runtime sessions (every member's) for ``batch_sizes``."""
        for pipeline in self.members or [self]:
            warm = getattr(pipeline.runtime, "warmup", None)
            if warm is not None:
                warm(batch_sizes)

    @property
    def conformal_applies(self) -> bool:
        """True when the package's conformal calibration was made as this pipeline
        makes its probabilities (so its sets carry the guarantee)."""
        return self._conformal is not None

    @property
    def single_pass(self) -> bool:
        """True when each image takes one forward pass of one network."""
        return self.sampling.single_pass and not self.members

    @classmethod
    def from_name(
        cls,
        name: str | None = None,
        *,
        registry: Registry | None = None,
        runtime: str | None = None,
        precision: str | None = None,
        threads: int | None = None,
        tta_views: int | None = None,
        mc_dropout: int | None = None,
        device: str | None = None,
    ) -> Pipeline:
        """The pipeline for an alias, ``name@version``, name or package path.

        Pipelines are cached per process and package hash: a model is loaded and
        warmed up once, and an alias switched in the registry takes effect at the
        next call without a restart. ``runtime`` and ``precision`` default to the
        ``[inference]`` settings (ONNX Runtime, ``auto``), and so does ``device``.
        """
        if registry is None or name is None:
            from overread.config import load_settings

            settings = load_settings()
            registry = registry or _shared_registry(Registry.from_settings(settings))
            name = name or settings.default_model
        if runtime is None or precision is None:
            configured = configured_inference()
            runtime = runtime or configured.runtime
            precision = precision or configured.precision
        device = device or configured_inference().device
        package = registry.load(name)
        if package.manifest.task is not Task.MULTI_LABEL_CLASSIFICATION and (
            not package.manifest.is_volumetric
        ):
            raise ModelPackageError(
                f"{package.name} {package.version}: a {package.manifest.task.value} package "
                "needs a 'volume' section (spacing, windows, postprocess; see docs/ct.md)"
            )
        if package.manifest.is_volumetric:
            raise ModelPackageError(
                f"{package.name} {package.version} is a {package.manifest.task.value} package "
                "that reads whole series (overread.inference.open_pipeline opens it)"
            )
        key = (
            str(package.path),
            package.sha256,
            runtime,
            precision,
            threads,
            tta_views,
            mc_dropout,
            device,
        )
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
        if cached is not None:
            return cached
        pipeline = cls(
            package,
            runtime=runtime,
            precision=precision,
            threads=threads,
            tta_views=tta_views,
            mc_dropout=mc_dropout,
            registry=registry,
            device=device,
        )
        with _CACHE_LOCK:
            _CACHE[key] = pipeline
        return pipeline

    # -- stages -----------------------------------------------------------------
    def accepts_problem(self, image: Image) -> str | None:
        """Why the package's header rules refuse this image, or None.

        Only the header: a missing value is not a problem here (the input gate's
        pixel check decides it; see :mod:`overread.inference.gate`).
        """
        refused = self.gate.check_header(image).refuse
        if not refused:
            return None
        return f"{'; '.join(refused)} by {self.model.name} {self.model.version}"

    def preprocess(self, image: Image) -> tuple[np.ndarray, Image]:
        """The package's chain applied to ``image``: ``(C, H, W)`` float32 and the processed image."""
        processed = self.chain(image)
        return self._model_input(processed), processed

    def _model_input(self, processed: Image) -> np.ndarray:
        """``(C, H, W)`` float32 from the chain's output, checked against the model's size."""
        pixels = np.asarray(processed.pixels, dtype=np.float32)
        size = self.package.manifest.input.size
        if pixels.shape != (size, size):
            raise InferenceError(
                f"preprocessing gave pixels of shape {pixels.shape}, the model needs ({size}, {size})"
            )
        channels = self.package.manifest.input.channels
        return np.repeat(pixels[None], channels, axis=0)

    def letterbox(self, image: Image) -> Letterbox | None:
        """Where the model input sits relative to the stored image (for heatmaps)."""
        if self._resize is None:
            return None
        rows, cols = image.pixels.shape[-2:] if not image.is_color else image.pixels.shape[-3:-1]
        return self._resize.geometry(int(rows), int(cols))

    def run(self, x: np.ndarray, *, with_cam: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw runtime call: logits and optional CAMs for a preprocessed batch."""
        if self.members:
            raise InferenceError(
                f"{self.model.name} {self.model.version} is an ensemble: it has no logits "
                "of its own; use probability_samples"
            )
        with self._lock:
            return self.runtime.run(x, with_cam=with_cam)

    def _pass_samples(
        self, x: np.ndarray, with_cam: bool
    ) -> tuple[list[np.ndarray], np.ndarray | None]:
        """Calibrated probabilities of one input batch: one ``(N, L)`` array per
        dropout pass and member, and the (members' mean) CAM when asked."""
        if self.members:
            samples: list[np.ndarray] = []
            cams = []
            for member in self.members:
                member_samples, cam = member._pass_samples(x, with_cam)
                samples.extend(member_samples)
                if cam is not None:
                    cams.append(cam)
            return samples, (np.mean(cams, axis=0) if with_cam and cams else None)
        calibration = self.package.manifest.calibration
        passes = self.sampling.mc_dropout_passes
        if passes == 0:
            logits, cam = self.run(x, with_cam=with_cam)
            return [calibrate(logits, calibration, self.labels)], cam
        cam = self.run(x, with_cam=True)[1] if with_cam else None
        assert self._torch is not None
        with self._lock:
            stack = mc_dropout_logits(
                self._torch.network, x, passes, seed=self.sampling.mc_dropout_seed
            )
        return [calibrate(logits, calibration, self.labels) for logits in stack], cam

    def probability_samples(
        self, x: np.ndarray, *, with_cam: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Calibrated probability samples ``(S, N, L)`` for a preprocessed batch, and the
        CAMs of the unaugmented images when asked (``S`` is 1 for a single pass)."""
        batch = np.asarray(x, dtype=np.float32)
        tta = self.sampling.tta
        views = tta.views_of(batch) if tta is not None else batch[None]
        samples: list[np.ndarray] = []
        cam = None
        for index, view in enumerate(views):
            view_samples, view_cam = self._pass_samples(view, with_cam and index == 0)
            samples.extend(view_samples)
            if index == 0:
                cam = view_cam
        return np.stack(samples).astype(np.float32), cam

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, L)`` (the samples' mean) for preprocessed
        float32 ``(N, C, H, W)``."""
        samples, _ = self.probability_samples(x)
        mean: np.ndarray = samples.mean(axis=0)
        return mean

    def conformal_sets(self, probabilities: np.ndarray) -> np.ndarray | None:
        """Conformal set names for one row (or rows) of probabilities, or None when
        the package has no calibration that applies to this pipeline."""
        if self._conformal is None:
            return None
        has_negative, has_positive = prediction_sets(probabilities, *self._conformal)
        return set_names(has_negative, has_positive)

    def deleted_probabilities(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, L)`` for any number of inputs, run in chunks
        padded to the session batch sizes warm-up creates (1, 2, 4, 8)."""
        batch = np.asarray(x, dtype=np.float32)
        rows: list[np.ndarray] = []
        for start in range(0, len(batch), _TRUST_CHUNK):
            chunk = batch[start : start + _TRUST_CHUNK]
            size = padded_size(len(chunk), _TRUST_CHUNK)
            padded = np.concatenate(
                [chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)]
            )
            rows.append(self.predict_batch(padded)[: len(chunk)])
        return np.concatenate(rows) if rows else np.zeros((0, len(self.labels)), np.float32)

    def findings(
        self,
        probabilities: np.ndarray,
        operating_point: str | None = None,
        *,
        samples: np.ndarray | None = None,
    ) -> list[FindingResult]:
        """Decisions for one row of probabilities at an operating point.

        ``samples`` (``(S, L)``, the draws ``probabilities`` is the mean of) give the
        mutual information when ``S > 1``.
        """
        manifest = self.package.manifest
        point = operating_point or manifest.default_operating_point
        thresholds = self.package.thresholds(operating_point)
        positive, proximity, decisions = decide(
            probabilities, thresholds, manifest.refer_uncertainty
        )
        entropy = binary_entropy(probabilities)
        information = (
            mutual_information(samples) if samples is not None and len(samples) > 1 else None
        )
        sets = self.conformal_sets(probabilities)
        if sets is not None:
            ambiguous = np.array([str(name) in ("both", "empty") for name in sets])
            decisions[ambiguous] = Decision.INDETERMINATE
        codes = {
            label.name: tuple((c.scheme, c.value, c.meaning) for c in label.codes)
            for label in manifest.labels
        }
        return [
            FindingResult(
                label=label,
                probability=float(probabilities[i]),
                positive=bool(positive[i]),
                threshold_proximity=float(proximity[i]),
                threshold=float(thresholds[i]),
                decision=Decision.parse(decisions[i]),
                operating_point=point,
                codes=codes[label],
                entropy=float(entropy[i]),
                mutual_information=None if information is None else float(information[i]),
                conformal_set=None if sets is None else str(sets[i]),
            )
            for i, label in enumerate(self.labels)
        ]

    def gradient_cams(
        self,
        x: np.ndarray,
        method: ExplainMethod,
        *,
        label_indices: list[int] | None = None,
        target_layer: str | None = None,
    ) -> np.ndarray:
        """Maps ``(N, L, H, W)`` of any method, from the package's torch network.

        Every method of :data:`overread.explain.EXPLAIN_METHODS` works here (``cam``
        too, through the torch network); serving takes ``cam`` from the ONNX pass.
        """
        if self._torch is None:
            self._torch = TorchRuntime(self.package)
        return explain_maps(
            self._torch.network, x, method, label_indices, target_layer=target_layer
        )

    def runtime_logits(self, batch: torch.Tensor) -> torch.Tensor:
        """Logits of the serving runtime for a preprocessed batch, as a torch tensor.

        The model as :mod:`overread.explain.faithfulness` and
        :func:`overread.explain.explanation_trust` take it (a ``Classifier``).
        """
        logits, _ = self.run(np.ascontiguousarray(batch.detach().numpy(), dtype=np.float32))
        return torch.from_numpy(np.asarray(logits, dtype=np.float32))

    @property
    def network(self) -> torch.nn.Module:
        """The package's torch network (built on first use), for explanations."""
        if self._torch is None:
            self._torch = TorchRuntime(self.package)
        return self._torch.network

    # -- the whole path -----------------------------------------------------------
    def predict(
        self,
        inputs: Sequence[str | Path | Image],
        *,
        explain: bool = False,
        cam_method: ExplainMethod = "cam",
        operating_point: str | None = None,
        batch_size: int = 8,
        trust: bool = False,
        override_gate: bool = False,
    ) -> list[Prediction]:
        """Predict for files or images; one :class:`Prediction` per input, in order.

        Each input passes the input gate first (:meth:`admit`); a refused image is
        not analysed (``ok`` false, ``gate.status`` ``refuse``) unless
        ``override_gate``, which analyses it and marks the result outside the
        model's intended use. ``explain`` attaches heatmaps; ``trust`` attaches the
        explanation trust of each finding decided positive or indeterminate (from the
        CAM, or from the maps of ``cam_method`` when explaining; left ``None`` when
        the runtime has no CAM).
        """
        if operating_point is not None:
            self.package.thresholds(operating_point)  # unknown operating point: refuse up front
        admitted = self.admit(inputs, explain, override_gate=override_gate)
        predictions = [prediction for prediction, _ in admitted]
        ready = [(i, x) for i, (_, x) in enumerate(admitted) if x is not None]
        for start in range(0, len(ready), max(1, batch_size)):
            chunk = ready[start : start + batch_size]
            batch = np.stack([x for _, x in chunk])
            try:
                self._infer(
                    batch,
                    [predictions[i] for i, _ in chunk],
                    explain,
                    cam_method,
                    operating_point,
                    trust,
                )
            except OverreadError as exc:
                for i, _ in chunk:
                    predictions[i].ok = False
                    predictions[i].error = _problem(predictions[i].path, exc)
        return predictions

    def admit(
        self,
        inputs: Sequence[str | Path | Image],
        explain: bool,
        *,
        override_gate: bool = False,
    ) -> list[tuple[Prediction, np.ndarray | None]]:
        """Read, check and preprocess each input: ``(prediction, model input or None)``.

        The input gate's header rules and pixel check give each readable image a
        verdict (``prediction.gate``); an unreadable one is refused with the reason.
        A refused image gets no model input unless ``override_gate``.
        """
        prepared = [self._prepare(item, explain) for item in inputs]
        ready = [(i, p.x, p.header, p.box) for i, p in enumerate(prepared)]
        ready = [(i, x, h, box) for i, x, h, box in ready if x is not None and h is not None]
        verdicts: dict[int, GateVerdict] = {}
        if ready:
            started = time.perf_counter()
            pixel = self.gate.verdicts(
                [h for _, _, h, _ in ready if h is not None],
                np.stack([x for _, x, _, _ in ready if x is not None]),
                [box for _, _, _, box in ready],
            )
            seconds = (time.perf_counter() - started) / len(ready)
            for (i, _, _, _), found in zip(ready, pixel, strict=True):
                verdicts[i] = found
                prepared[i].prediction.timings["gate"] = seconds
        out: list[tuple[Prediction, np.ndarray | None]] = []
        for i, item in enumerate(prepared):
            prediction, x, header = item.prediction, item.x, item.header
            verdict = verdicts.get(i)
            if verdict is None:  # unreadable: nothing for the model to analyse
                earlier = header.refuse if header is not None else ()
                prediction.gate = GateVerdict(
                    REFUSE, (*earlier, f"cannot be read: {prediction.error}")
                )
                out.append((prediction, None))
                continue
            if record_verdict(prediction, header, verdict, override_gate):
                prediction.ok = False
                x = None
            if x is None:
                prediction.model_input = None
                prediction.letterbox = None
            out.append((prediction, x))
        return out

    def _prepare(self, item: str | Path | Image, explain: bool) -> _Prepared:
        path = None if isinstance(item, Image) else str(item)
        prediction = Prediction(path=path, ok=False, model=self.model)
        if not self.package.manifest.trained:
            prediction.warnings.append(
                f"model {self.model.name} {self.model.version} is an untrained placeholder"
            )
        started = time.perf_counter()
        header: HeaderCheck | None = None
        box: Letterbox | None = None
        try:
            if isinstance(item, Image):
                run = ChainRun(
                    item.metadata, _plane_shape(item), item.frame_count, item, reduced_first=False
                )
                read_done = time.perf_counter()
            else:
                run = self.chain.read_and_apply(item)
                read_done = time.perf_counter()
            if path is None:
                prediction.path = run.source.source_path
            prediction.metadata = run.source
            prediction.warnings.extend(run.processed.warnings)
            if run.frames > 1:
                prediction.warnings.append(
                    f"image has {run.frames} frames; the model read the first only"
                )
            header = check_header(run.source, self.gate.accepts, self.gate.spec)
            if isinstance(item, Image):
                x, _ = self.preprocess(item)
            else:
                x = self._model_input(run.processed)
            box = self._resize.geometry(*run.source_shape) if self._resize is not None else None
            # Read and chain run as one (the film may be reduced before its window), so
            # "read" is the whole of it and "preprocess" what is left: the model input.
            prediction.timings["read"] = read_done - started
            prediction.timings["preprocess"] = time.perf_counter() - read_done
            # Kept whether explaining or not: monitoring summarises the image the
            # model saw (overread.monitoring.observe); it is dropped with the prediction.
            prediction.model_input = x[0]
            if explain:
                prediction.letterbox = box
        except OverreadError as exc:
            prediction.error = _problem(prediction.path, exc)
            return _Prepared(prediction, None, header, box)
        except Exception as exc:  # a corrupt file must not stop the batch
            logger.debug("unexpected error on %s", prediction.path, exc_info=True)
            prediction.error = f"{type(exc).__name__}: {_problem(prediction.path, exc)}"
            return _Prepared(prediction, None, header, box)
        prediction.ok = True
        return _Prepared(prediction, x, header, box)

    def _infer(
        self,
        batch: np.ndarray,
        targets: list[Prediction],
        explain: bool,
        cam_method: ExplainMethod,
        operating_point: str | None,
        trust: bool = False,
    ) -> None:
        started = time.perf_counter()
        with_cam = self.runtime.has_cam and ((explain and cam_method == "cam") or trust)
        samples, cam = self.probability_samples(batch, with_cam=with_cam)
        inferred = time.perf_counter()
        probabilities = samples.mean(axis=0)
        for row, prediction in enumerate(targets):
            prediction.findings = self.findings(
                probabilities[row], operating_point, samples=samples[:, row]
            )
            prediction.timings["inference"] = (inferred - started) / len(targets)
        post_done = time.perf_counter()
        for prediction in targets:
            prediction.timings["postprocess"] = (post_done - inferred) / len(targets)
        size = (batch.shape[-2], batch.shape[-1])
        if not explain:
            if trust and cam is not None:
                for row, prediction in enumerate(targets):
                    trusted = time.perf_counter()
                    attach_trust_from_cam(
                        prediction, batch[row], cam[row], self.deleted_probabilities
                    )
                    prediction.timings["trust"] = time.perf_counter() - trusted
            return
        if cam_method == "cam":
            if cam is None:
                raise InferenceError(
                    f"{self.model.name} {self.model.version}: no CAM output; use gradcam or gradcam++"
                )
            maps = cam_to_heatmaps(cam, size)
        else:
            maps = self.gradient_cams(batch, cam_method)
        explained = time.perf_counter()
        for row, prediction in enumerate(targets):
            prediction.heatmaps = {label: maps[row, i] for i, label in enumerate(self.labels)}
            prediction.timings["explain"] = (explained - post_done) / len(targets)
        if trust:
            self._attach_trust(batch, targets, maps)

    def _attach_trust(self, batch: np.ndarray, targets: list[Prediction], maps: np.ndarray) -> None:
        """Explanation trust for each image's acted-on findings (one extra pass each)."""
        for row, prediction in enumerate(targets):
            started = time.perf_counter()
            attach_trust(prediction, batch[row], maps[row], self.deleted_probabilities)
            prediction.timings["trust"] = time.perf_counter() - started


#: Largest batch of region-deleted inputs run at once (the warm-up's largest session).
_TRUST_CHUNK = 8


_VOLUME_CACHE: dict[tuple[str, str, int | None, str], VolumePipeline | PlanarPipeline] = {}


def open_pipeline(
    name: str | None = None,
    *,
    registry: Registry | None = None,
    threads: int | None = None,
    **options: object,
) -> Pipeline | VolumePipeline | PlanarPipeline:
    """The pipeline for a model, dispatched on its package: a :class:`Pipeline` for a
    classifier, a :class:`~overread.inference.volume.VolumePipeline` for a package
    with a ``volume`` section (segmentation, detection), and a
    :class:`~overread.inference.planar.PlanarPipeline` when that section is planar
    (2-D segmentation of radiographs). All are cached.

    A volumetric pipeline takes only the ``device`` option (default: the
    ``[inference]`` setting; a planar one runs on the CPU): the other options are a
    classifier's."""
    from overread.inference.planar import PlanarPipeline
    from overread.inference.volume import VolumePipeline

    if registry is None:
        from overread.config import load_settings

        settings = load_settings()
        registry = _shared_registry(Registry.from_settings(settings))
        name = name or settings.default_model
    package = registry.load(name or "")
    if not package.manifest.is_volumetric:  # a classifier (or a package that says why not)
        # By the package's path: the reference is resolved once per call, not twice.
        return Pipeline.from_name(str(package.path), registry=registry, threads=threads, **options)  # type: ignore[arg-type]
    device = str(options.get("device") or configured_inference().device)
    key = (str(package.path), package.sha256, threads, device)
    with _CACHE_LOCK:
        cached = _VOLUME_CACHE.get(key)
        if cached is None:
            planar = package.manifest.volume is not None and package.manifest.volume.planar
            cached = _VOLUME_CACHE[key] = (
                PlanarPipeline(package, threads=threads)
                if planar
                else VolumePipeline(package, threads=threads, device=device)
            )
    return cached


def clear_pipeline_cache() -> None:
    """Forget cached pipelines (tests; a service reloading all models)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _VOLUME_CACHE.clear()
        _REGISTRIES.clear()


__all__ = ["Pipeline", "clear_pipeline_cache", "configured_inference", "open_pipeline"]
