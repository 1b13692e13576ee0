"""The gateway's ports to the model runtime and to the result builders.

Workers depend on two small protocols rather than on concrete classes:
:class:`PipelineProvider` (model alias -> something with ``predict``) and
:class:`ArtifactBuilder` (prediction -> DICOM objects to send). The defaults use
:class:`overread.inference.Pipeline` and :mod:`overread.service.outputs`; both are
imported lazily so the service starts (and reports clearly) without them.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from overread.errors import ConfigError, InferenceError, ServiceError
from overread.results import FindingResult, ModelRef, Prediction

if TYPE_CHECKING:
    from overread.models.package import ModelPackage
    from overread.service.config import ServiceConfig
    from overread.service.outputs.pdf import ReportContext

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelIdentity:
    """The name and version a result is recorded under."""

    name: str
    version: str


@runtime_checkable
class PipelineLike(Protocol):
    """What a worker needs from an inference pipeline (:class:`overread.inference.Pipeline`
    and its micro-batched wrapper are two)."""

    @property
    def model(self) -> ModelRef:
        """The model package the pipeline runs."""
        ...

    @property
    def package(self) -> ModelPackage:
        """The loaded package (its manifest and model card)."""
        ...

    def predict(
        self,
        inputs: Sequence[Any],
        *,
        explain: bool = False,
        trust: bool = False,
        override_gate: bool = False,
    ) -> Sequence[Prediction]:
        """One prediction per input (``ok=False`` for a bad input); ``trust`` attaches
        the explanation trust of the findings decided positive or indeterminate;
        ``override_gate`` analyses images the input gate refuses (outside the intended
        use)."""
        ...


class PipelineProvider(Protocol):
    """Resolves a model alias to its identity and a ready pipeline."""

    def identify(self, alias: str) -> ModelIdentity:
        """The name and version ``alias`` refers to now."""
        ...

    def get(self, alias: str) -> PipelineLike:
        """A (cached) pipeline for ``alias``."""
        ...


class ArtifactBuilder(Protocol):
    """Turns a model's predictions on one study into DICOM objects to store and send."""

    def build_study(
        self,
        readings: Sequence[tuple[Prediction, Any]],
        *,
        cam_segmentation: bool = False,
        pdf_report: ReportContext | None = None,
    ) -> list[Any]:
        """pydicom datasets (one SR for the study, overlays, SEG) from ``(prediction,
        source header or dataset)`` pairs, one per image of the study;
        ``cam_segmentation`` adds a SEG of each image's thresholded CAM regions;
        ``pdf_report`` adds the study's PDF report (Encapsulated PDF) with the overlays
        as thumbnails. A builder may also take ``predecessors`` (headers of SRs the new
        one supersedes, for a study re-read after more of its images arrived) and
        ``calibration`` (which calibration the service applied, stated in the SR and
        the PDF)."""
        ...


def identity_of(pipeline: PipelineLike, alias: str) -> ModelIdentity:
    """The model name and version ``pipeline`` runs (``alias`` when it has no name)."""
    model = pipeline.model
    return ModelIdentity(model.name or alias, model.version or "unversioned")


def read_signing_key(path: Path) -> bytes:
    """The model-package HMAC key stored in ``path`` (surrounding whitespace dropped).

    Raises
    ------
    ConfigError
        If the file cannot be read or is empty.
    """
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError(
            f"model_signing_key_file {path}: cannot read it ({exc.strerror or exc})"
        ) from None
    if not key:
        raise ConfigError(f"model_signing_key_file {path}: the file is empty")
    return key


def session_threads(sessions: int, cores: int | None = None) -> int:
    """Intra-op threads per model session when ``sessions`` models serve at once.

    The cores are split between the loaded models (each has one batching thread that
    calls its runtime), so two models on two cores get one thread each instead of
    four threads fighting over two cores.
    """
    if cores is None:
        affinity = getattr(os, "sched_getaffinity", None)
        cores = len(affinity(0)) if affinity is not None else (os.cpu_count() or 1)
    return max(1, cores // max(1, sessions))


class RegistryPipelineProvider:
    """Pipelines from the model registry, shared by every worker of the process.

    Each alias resolves (through :meth:`overread.inference.Pipeline.from_name`) to a
    pipeline loaded once per package hash; the provider wraps it in one
    :class:`~overread.inference.batching.BatchedPipeline`, so concurrent workers'
    requests for the same model are micro-batched into shared forward passes. Every
    call asks the registry again, so an alias switched in the registry applies to the
    next study routed, without a restart.

    Parameters
    ----------
    registry
        The registry to resolve aliases in (default: the one the settings name, with
        the signing key from ``signing_key_file`` or the environment).
    signing_key_file
        A file holding the HMAC key every package must be signed with.
    batching
        Micro-batch the runtime calls (``False``: each worker calls the pipeline).
    max_batch, max_wait_ms
        The micro-batcher's bounds.
    sessions
        How many models are expected to serve at once (splits the cores between them).
    """

    def __init__(
        self,
        *,
        registry: Any | None = None,
        signing_key_file: Path | None = None,
        batching: bool = True,
        max_batch: int = 8,
        max_wait_ms: float = 5.0,
        sessions: int = 1,
    ) -> None:
        self._registry = registry
        self.signing_key_file = signing_key_file
        self.batching = batching
        self.max_batch = max_batch
        self.max_wait_ms = max_wait_ms
        self.threads = session_threads(sessions)
        self._lock = threading.Lock()
        self._warm_lock = threading.Lock()
        self._batched: dict[int, Any] = {}
        self._warm: set[str] = set()
        self._configured = False

    @classmethod
    def from_config(cls, config: ServiceConfig) -> RegistryPipelineProvider:
        """The provider ``config`` asks for: key file, batching bounds, one session per
        model alias the routes name."""
        aliases = {m for route in config.routes for m in route.models}
        provider = cls(
            signing_key_file=config.model_signing_key_file,
            batching=config.batch_max_size > 1,
            max_batch=config.batch_max_size,
            max_wait_ms=config.batch_max_wait_ms,
            sessions=len(aliases),
        )
        provider._configured = True
        return provider

    def configure(self, config: ServiceConfig) -> None:
        """Take the key file, batching bounds and thread split from ``config``.

        Workers call this with their configuration; the first call applies it (a
        provider built by :meth:`from_config` already has it), later calls are no-ops.
        """
        with self._lock:
            if self._configured:
                return
            self._configured = True
            aliases = {m for route in config.routes for m in route.models}
            if config.model_signing_key_file != self.signing_key_file:
                self.signing_key_file = config.model_signing_key_file
                self._registry = None
            self.batching = config.batch_max_size > 1
            self.max_batch = config.batch_max_size
            self.max_wait_ms = config.batch_max_wait_ms
            self.threads = session_threads(len(aliases))

    @property
    def registry(self) -> Any:
        """The registry aliases are resolved in (created on first use)."""
        with self._lock:
            if self._registry is None:
                from overread.config import load_settings
                from overread.models.registry import Registry

                registry = Registry.from_settings(load_settings())
                if self.signing_key_file is not None:
                    registry = Registry(
                        registry.root,
                        include_bundled=registry.include_bundled,
                        key=read_signing_key(self.signing_key_file),
                    )
                self._registry = registry
            return self._registry

    def pipeline(self, alias: str) -> Any:
        """The plain (unbatched) pipeline of ``alias``, loaded and warmed up once."""
        try:
            from overread.inference import open_pipeline
        except ImportError as exc:
            raise ServiceError(f"the inference pipeline is not available: {exc}") from None
        return open_pipeline(alias, registry=self.registry, threads=self.threads)

    def get(self, alias: str) -> PipelineLike:
        pipeline = self.pipeline(alias)
        # A volumetric pipeline reads a whole series at once: nothing to micro-batch.
        if not self.batching or getattr(pipeline, "volumetric", False):
            plain: PipelineLike = pipeline
            return plain
        from overread.inference.batching import BatchedPipeline

        with self._lock:
            batched = self._batched.get(id(pipeline))
            if batched is None or batched.pipeline is not pipeline:
                batched = BatchedPipeline(
                    pipeline, max_batch=self.max_batch, max_wait_ms=self.max_wait_ms
                )
                self._batched[id(pipeline)] = batched
        result: PipelineLike = batched
        return result

    def identify(self, alias: str) -> ModelIdentity:
        return identity_of(self.pipeline(alias), alias)

    def warmup(self, aliases: Sequence[str]) -> None:
        """Load every alias now and run each batch size once, so the first study does
        not pay for loading the model or creating runtime sessions.

        An alias that cannot be loaded is logged and left for its jobs to report.
        """
        # Held throughout: a second worker waits for the models rather than loading
        # them a second time.
        with self._warm_lock:
            for alias in aliases:
                if alias in self._warm:
                    continue
                self._warm.add(alias)
                started = time.perf_counter()
                try:
                    pipeline = self.get(alias)
                    warm = getattr(pipeline, "warmup", None)
                    if warm is not None:
                        warm()
                except Exception as exc:
                    logger.warning("model %s could not be warmed up: %s", alias, exc)
                    continue
                logger.info(
                    "model %s loaded and warmed up in %.2f s",
                    alias,
                    time.perf_counter() - started,
                )

    def close(self) -> None:
        """Stop the micro-batchers."""
        with self._lock:
            batched = list(self._batched.values())
            self._batched.clear()
        for item in batched:
            item.close()


class OutputsArtifactBuilder:
    """Builds, for a model's predictions on one study, one TID 1500 Structured Report
    for the whole study with :func:`~overread.service.outputs.build_study_sr` (a
    findings group per image and finding), per image one Secondary Capture overlay per
    positive or referred finding when the prediction carries heatmaps (``--explain``),
    per image a DICOM SEG when the prediction carries segmentation masks, and, when
    asked (``--pdf-report``), one PDF report of the study as Encapsulated PDF with the
    overlays as thumbnails.
    """

    def __init__(self) -> None:
        try:
            from overread.service import outputs
        except ImportError as exc:
            raise ServiceError(f"result builders are not available: {exc}") from None
        self._outputs = outputs

    def warmup(self) -> None:
        """Build one SR for a made-up study, so highdicom's one-off costs (loading its
        tables of the standard, about 0.1 s) are not paid by the first real study."""
        from pydicom.dataset import Dataset
        from pydicom.uid import DigitalXRayImageStorageForPresentation, generate_uid

        header = Dataset()
        header.SOPClassUID = DigitalXRayImageStorageForPresentation
        header.SOPInstanceUID = generate_uid()
        header.StudyInstanceUID = generate_uid()
        header.SeriesInstanceUID = generate_uid()
        header.PatientID = "WARMUP"
        header.PatientName = "Warm^Up"
        header.PatientBirthDate = header.PatientSex = header.AccessionNumber = ""
        header.StudyID = header.StudyDate = header.StudyTime = header.ReferringPhysicianName = ""
        header.Modality = "DX"
        header.Rows = header.Columns = 8
        header.SamplesPerPixel, header.PhotometricInterpretation = 1, "MONOCHROME2"
        header.BitsAllocated, header.BitsStored, header.HighBit = 16, 12, 11
        header.PixelRepresentation = 0
        header.PatientOrientation = ["L", "F"]
        header.ViewPosition = "PA"
        header.ImagerPixelSpacing = header.PixelSpacing = [0.5, 0.5]
        prediction = Prediction(
            path=None,
            ok=True,
            model=ModelRef("warm-up", "0"),
            findings=[FindingResult("Pneumothorax", 0.5, True, 0.0, 0.5)],
        )
        self._outputs.build_study_sr([(prediction, header)])

    def build_study(
        self,
        readings: Sequence[tuple[Prediction, Any]],
        *,
        cam_segmentation: bool = False,
        pdf_report: ReportContext | None = None,
        predecessors: Sequence[Any] = (),
        calibration: Mapping[str, Any] | None = None,
    ) -> list[Any]:
        usable = [(p, ds) for p, ds in readings if p.ok]
        superseding: dict[str, Any] = {"predecessors": list(predecessors)} if predecessors else {}
        refused = [
            (p, ds) for p, ds in readings if not p.ok and p.gate is not None and p.gate.refused
        ]
        if not usable:
            # A study the input gate refused still gets a report saying so.
            if not refused:
                return []
            built: list[Any] = [self._outputs.build_not_analysed_sr(refused, **superseding)]
            if pdf_report is not None:
                built.append(self._outputs.build_pdf_report(refused, pdf_report))
            return built
        left_out = [p for p, _ in refused]
        built = [
            self._outputs.build_study_sr(
                usable, not_analysed=left_out, calibration=calibration, **superseding
            )
        ]
        thumbnails: list[Any] = []
        for index, (prediction, source) in enumerate(usable):
            if prediction.heatmaps and "PixelData" in source:
                labels = self._outputs.overlay_labels(prediction)
                overlays = self._outputs.build_overlays(prediction, source, labels)
                built.extend(overlays)
                if pdf_report is not None:
                    view = self._outputs.image_label(source, index, len(usable))
                    thumbnails += self._outputs.overlay_thumbnails(
                        prediction, overlays, labels, view
                    )
            model = self._outputs.model_identity(prediction)
            if prediction.masks:
                built.append(self._outputs.build_seg(prediction.masks, [source], model))
            if cam_segmentation:
                regions = self._outputs.cam_region_masks(prediction, source)
                if regions:
                    built.append(
                        self._outputs.build_seg(
                            regions,
                            [source],
                            model,
                            content_description=self._outputs.CAM_REGION_DESCRIPTION,
                        )
                    )
        if pdf_report is not None:
            context = replace(
                pdf_report,
                thumbnails=[*pdf_report.thumbnails, *thumbnails],
                calibration=calibration if calibration is not None else pdf_report.calibration,
            )
            built.append(self._outputs.build_pdf_report([*usable, *refused], context))
        return built


def default_artifact_builder() -> ArtifactBuilder | None:
    """The SR builder, or ``None`` (with a warning) when it cannot be imported."""
    try:
        return OutputsArtifactBuilder()
    except ServiceError as exc:
        logger.warning("%s; results are stored but no SR is built or sent", exc)
        return None


def not_analysed(predictions: Sequence[Prediction]) -> bool:
    """Whether the input gate refused every image of a study (none was analysed).

    Such a study is stored, reported and put on the worklist as not analysed, with
    the reasons, rather than failed: running it again would refuse it again.
    """
    return bool(predictions) and all(
        not p.ok and p.gate is not None and p.gate.refused for p in predictions
    )


def require_ok(predictions: Sequence[Prediction], paths: Sequence[Path]) -> None:
    """Raise when no input of a study could be run at all (and the gate did not refuse
    them all: see :func:`not_analysed`)."""
    if not_analysed(predictions):
        return
    if predictions and not any(p.ok for p in predictions):
        errors = "; ".join(str(p.error or "?") for p in predictions[:3])
        raise InferenceError(f"no instance of the study could be read by the model: {errors}")
    if not predictions and paths:
        raise InferenceError("the pipeline returned no predictions")


__all__ = [
    "ArtifactBuilder",
    "ModelIdentity",
    "OutputsArtifactBuilder",
    "PipelineLike",
    "PipelineProvider",
    "RegistryPipelineProvider",
    "default_artifact_builder",
    "identity_of",
    "not_analysed",
    "read_signing_key",
    "require_ok",
    "session_threads",
]
