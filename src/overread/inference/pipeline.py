"""The one pipeline object: study image in, findings (and explanations) out.

The CLI, the service and evaluation all call :class:`Pipeline`, so a finding is
computed the same way everywhere: the imaging core's chain recorded in the model
package (preprocess), a runtime (ONNX Runtime by default), calibration, thresholds
and referral (postprocess), and class activation maps from the same forward pass
(explain). A bad input becomes a :class:`Prediction` with ``ok=False`` and the
reason; the rest of the batch carries on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from overread.errors import InferenceError, ModelPackageError, OverreadError
from overread.explain.cam import cam_to_heatmaps
from overread.explain.maps import ExplainMethod, explain_maps
from overread.explain.trust import ExplanationTrust, explanation_trust
from overread.imaging import Image, read
from overread.imaging.transforms import Compose, Letterbox, Resize, build_chain
from overread.inference.postprocess import calibrate, decide
from overread.inference.result import FindingResult, ModelRef, Prediction
from overread.inference.runtimes import OnnxRuntime, TorchRuntime, open_runtime
from overread.models.package import ModelPackage
from overread.models.registry import Registry
from overread.results import Decision

logger = logging.getLogger(__name__)

_CACHE: dict[tuple[str, str, str, str, int | None], Pipeline] = {}
_CACHE_LOCK = threading.Lock()


_REGISTRIES: dict[tuple[Path, bytes | None], Registry] = {}


def _shared_registry(fresh: Registry) -> Registry:
    """One registry per (root, key) per process, so verified packages stay cached."""
    key = (fresh.root.resolve(), fresh.key)
    with _CACHE_LOCK:
        return _REGISTRIES.setdefault(key, fresh)


def _problem(path: str | None, exc: BaseException) -> str:
    """The error text without a leading ``path: `` (callers print ``path: problem``)."""
    message = str(exc) or type(exc).__name__
    if path and message.startswith(f"{path}: "):
        return message[len(path) + 2 :]
    return message


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
    """

    def __init__(
        self,
        package: ModelPackage,
        *,
        runtime: str = "onnx",
        precision: str = "auto",
        threads: int | None = None,
        warmup: bool = True,
    ) -> None:
        self.package = package
        manifest = package.manifest
        if not manifest.input.chain:
            raise ModelPackageError(f"{package.path}: manifest records no preprocessing chain")
        self.chain: Compose = build_chain(manifest.input.chain)
        self.runtime: OnnxRuntime | TorchRuntime = open_runtime(
            package, runtime, precision=precision, threads=threads
        )
        self.labels = package.labels
        self.model = ModelRef(
            name=package.name,
            version=package.version,
            sha256=package.sha256,
            runtime=self.runtime.name,
            precision=self.runtime.precision,
            trained=manifest.trained,
        )
        self._resize = next((t for t in self.chain if isinstance(t, Resize)), None)
        self._torch: TorchRuntime | None = (
            self.runtime if isinstance(self.runtime, TorchRuntime) else None
        )
        self._lock = threading.Lock()
        if not manifest.trained:
            logger.info(
                "model %s %s is an untrained placeholder: its findings carry no meaning",
                package.name,
                package.version,
            )
        if warmup:
            self.runtime.warmup((1,))

    @classmethod
    def from_name(
        cls,
        name: str | None = None,
        *,
        registry: Registry | None = None,
        runtime: str = "onnx",
        precision: str = "auto",
        threads: int | None = None,
    ) -> Pipeline:
        """The pipeline for an alias, ``name@version``, name or package path.

        Pipelines are cached per process and package hash: a model is loaded and
        warmed up once, and an alias switched in the registry takes effect at the
        next call without a restart.
        """
        if registry is None or name is None:
            from overread.config import load_settings

            settings = load_settings()
            registry = registry or _shared_registry(Registry.from_settings(settings))
            name = name or settings.default_model
        package = registry.load(name)
        key = (str(package.path), package.sha256, runtime, precision, threads)
        with _CACHE_LOCK:
            cached = _CACHE.get(key)
        if cached is not None:
            return cached
        pipeline = cls(package, runtime=runtime, precision=precision, threads=threads)
        with _CACHE_LOCK:
            _CACHE[key] = pipeline
        return pipeline

    # -- stages -----------------------------------------------------------------
    def accepts_problem(self, image: Image) -> str | None:
        """Why the package's ``accepts`` filter refuses this image, or None."""
        accepts = self.package.manifest.accepts
        meta = image.metadata
        checks = [
            ("modality", meta.modality, accepts.modalities),
            ("body part", meta.body_part, accepts.body_parts),
            ("view position", meta.view_position, accepts.view_positions),
            ("SOP class", meta.sop_class_uid, accepts.sop_class_uids),
        ]
        for what, value, allowed in checks:
            # Unknown values (PNG, NIfTI, missing attributes) are let through.
            if allowed and value and value.upper() not in {a.upper() for a in allowed}:
                return (
                    f"{what} {value} is not accepted by {self.model.name} {self.model.version}"
                    f" (accepts {', '.join(allowed)})"
                )
        return None

    def preprocess(self, image: Image) -> tuple[np.ndarray, Image]:
        """The package's chain applied to ``image``: ``(C, H, W)`` float32 and the processed image."""
        processed = self.chain(image)
        pixels = np.asarray(processed.pixels, dtype=np.float32)
        size = self.package.manifest.input.size
        if pixels.shape != (size, size):
            raise InferenceError(
                f"preprocessing gave pixels of shape {pixels.shape}, the model needs ({size}, {size})"
            )
        channels = self.package.manifest.input.channels
        return np.repeat(pixels[None], channels, axis=0), processed

    def letterbox(self, image: Image) -> Letterbox | None:
        """Where the model input sits relative to the stored image (for heatmaps)."""
        if self._resize is None:
            return None
        rows, cols = image.pixels.shape[-2:] if not image.is_color else image.pixels.shape[-3:-1]
        return self._resize.geometry(int(rows), int(cols))

    def run(self, x: np.ndarray, *, with_cam: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw runtime call: logits and optional CAMs for a preprocessed batch."""
        with self._lock:
            return self.runtime.run(x, with_cam=with_cam)

    def predict_batch(self, x: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``(N, L)`` for preprocessed float32 ``(N, C, H, W)``."""
        logits, _ = self.run(np.asarray(x, dtype=np.float32))
        return calibrate(logits, self.package.manifest.calibration, self.labels)

    def findings(
        self, probabilities: np.ndarray, operating_point: str | None = None
    ) -> list[FindingResult]:
        """Decisions for one row of probabilities at an operating point."""
        manifest = self.package.manifest
        point = operating_point or manifest.default_operating_point
        thresholds = self.package.thresholds(operating_point)
        positive, uncertainty, decisions = decide(
            probabilities, thresholds, manifest.refer_uncertainty
        )
        codes = {
            label.name: tuple((c.scheme, c.value, c.meaning) for c in label.codes)
            for label in manifest.labels
        }
        return [
            FindingResult(
                label=label,
                probability=float(probabilities[i]),
                positive=bool(positive[i]),
                uncertainty=float(uncertainty[i]),
                threshold=float(thresholds[i]),
                decision=Decision.parse(decisions[i]),
                operating_point=point,
                codes=codes[label],
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

    def explanation_trust(self, x: np.ndarray, heatmap: np.ndarray, label: str) -> ExplanationTrust:
        """How far ``heatmap`` can be trusted as the explanation of ``label`` on ``x``.

        See :mod:`overread.explain.trust`: the map's concentration and the fall of
        the label's (uncalibrated) probability when its top region is removed, by
        the serving runtime: two forward passes.
        """
        return explanation_trust(self.runtime_logits, x, heatmap, self.labels.index(label))

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
    ) -> list[Prediction]:
        """Predict for files or images; one :class:`Prediction` per input, in order."""
        if operating_point is not None:
            self.package.thresholds(operating_point)  # unknown operating point: refuse up front
        predictions: list[Prediction] = []
        ready: list[tuple[int, np.ndarray]] = []
        for item in inputs:
            prediction, x = self._prepare(item, explain)
            if x is not None:
                ready.append((len(predictions), x))
            predictions.append(prediction)
        for start in range(0, len(ready), max(1, batch_size)):
            chunk = ready[start : start + batch_size]
            batch = np.stack([x for _, x in chunk])
            try:
                self._infer(
                    batch, [predictions[i] for i, _ in chunk], explain, cam_method, operating_point
                )
            except OverreadError as exc:
                for i, _ in chunk:
                    predictions[i].ok = False
                    predictions[i].error = _problem(predictions[i].path, exc)
        return predictions

    def _prepare(
        self, item: str | Path | Image, explain: bool
    ) -> tuple[Prediction, np.ndarray | None]:
        path = None if isinstance(item, Image) else str(item)
        prediction = Prediction(path=path, ok=False, model=self.model)
        if not self.package.manifest.trained:
            prediction.warnings.append(
                f"model {self.model.name} {self.model.version} is an untrained placeholder"
            )
        started = time.perf_counter()
        try:
            image = item if isinstance(item, Image) else read(item)
            if path is None:
                prediction.path = image.metadata.source_path
            prediction.metadata = image.metadata
            prediction.warnings.extend(image.warnings)
            if image.frame_count > 1:
                prediction.warnings.append(
                    f"image has {image.frame_count} frames; the model read the first only"
                )
            read_done = time.perf_counter()
            prediction.timings["read"] = read_done - started
            problem = self.accepts_problem(image)
            if problem:
                prediction.error = problem
                return prediction, None
            x, _ = self.preprocess(image)
            prediction.timings["preprocess"] = time.perf_counter() - read_done
            if explain:
                prediction.model_input = x[0]
                prediction.letterbox = self.letterbox(image)
        except OverreadError as exc:
            prediction.error = _problem(prediction.path, exc)
            return prediction, None
        except Exception as exc:  # a corrupt file must not stop the batch
            logger.debug("unexpected error on %s", prediction.path, exc_info=True)
            prediction.error = f"{type(exc).__name__}: {_problem(prediction.path, exc)}"
            return prediction, None
        prediction.ok = True
        return prediction, x

    def _infer(
        self,
        batch: np.ndarray,
        targets: list[Prediction],
        explain: bool,
        cam_method: ExplainMethod,
        operating_point: str | None,
    ) -> None:
        started = time.perf_counter()
        with_cam = explain and cam_method == "cam" and self.runtime.has_cam
        logits, cam = self.run(batch, with_cam=with_cam)
        inferred = time.perf_counter()
        probabilities = calibrate(logits, self.package.manifest.calibration, self.labels)
        for row, prediction in enumerate(targets):
            prediction.findings = self.findings(probabilities[row], operating_point)
            prediction.timings["inference"] = (inferred - started) / len(targets)
        post_done = time.perf_counter()
        for prediction in targets:
            prediction.timings["postprocess"] = (post_done - inferred) / len(targets)
        if not explain:
            return
        size = (batch.shape[-2], batch.shape[-1])
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


def clear_pipeline_cache() -> None:
    """Forget cached pipelines (tests; a service reloading all models)."""
    with _CACHE_LOCK:
        _CACHE.clear()
        _REGISTRIES.clear()


__all__ = ["Pipeline", "clear_pipeline_cache"]
