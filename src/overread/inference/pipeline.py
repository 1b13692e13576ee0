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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from overread.errors import InferenceError, ModelPackageError, OverreadError
from overread.explain.cam import CamMethod, GradCam, ScoreCam, cam_to_heatmaps
from overread.imaging import Image, read
from overread.imaging.transforms import Compose, Letterbox, Resize, build_chain
from overread.inference.gate import REFUSE, HeaderCheck, InputGate
from overread.inference.postprocess import calibrate, decide
from overread.inference.result import FindingResult, ModelRef, Prediction
from overread.inference.runtimes import OnnxRuntime, TorchRuntime, open_runtime
from overread.models.package import ModelPackage
from overread.models.registry import Registry
from overread.results import Decision, GateVerdict

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
        self.gate = InputGate.of(package)
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
        positive, proximity, decisions = decide(
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
                threshold_proximity=float(proximity[i]),
                threshold=float(thresholds[i]),
                decision=Decision.parse(decisions[i]),
                operating_point=point,
                codes=codes[label],
            )
            for i, label in enumerate(self.labels)
        ]

    def gradient_cams(self, x: np.ndarray, method: CamMethod) -> np.ndarray:
        """Grad-CAM, Grad-CAM++ or Score-CAM maps ``(N, L, H, W)`` from the torch network."""
        if self._torch is None:
            self._torch = TorchRuntime(self.package)
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if method == "scorecam":
            return ScoreCam(self._torch.network)(tensor)
        return GradCam(self._torch.network, plus_plus=method == "gradcam++")(tensor)

    # -- the whole path -----------------------------------------------------------
    def predict(
        self,
        inputs: Sequence[str | Path | Image],
        *,
        explain: bool = False,
        cam_method: CamMethod = "cam",
        operating_point: str | None = None,
        batch_size: int = 8,
        override_gate: bool = False,
    ) -> list[Prediction]:
        """Predict for files or images; one :class:`Prediction` per input, in order.

        Each input passes the input gate first (:meth:`admit`); a refused image is
        not analysed (``ok`` false, ``gate.status`` ``refuse``) unless
        ``override_gate``, which analyses it and marks the result outside the
        model's intended use.
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
                    batch, [predictions[i] for i, _ in chunk], explain, cam_method, operating_point
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
            if header is not None and header.missing and verdict.status != REFUSE:
                prediction.warnings.append(
                    f"{', '.join(header.missing)} not in the header: decided by the image"
                )
            if verdict.status == REFUSE:
                if override_gate:
                    verdict = GateVerdict(verdict.status, verdict.reasons, verdict.ood_score, True)
                    prediction.outside_intended_use = True
                else:
                    prediction.ok = False
                    prediction.error = f"not analysed: {verdict.reason}"
                    x = None
            prediction.gate = verdict
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
            header = self.gate.check_header(image)
            x, _ = self.preprocess(image)
            box = self.letterbox(image)
            prediction.timings["preprocess"] = time.perf_counter() - read_done
            if explain:
                prediction.model_input = x[0]
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
        cam_method: CamMethod,
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
