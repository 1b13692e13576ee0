"""The planar segmentation pipeline: a projection radiograph in, a pixel mask out.

A package whose ``volume`` section says ``planar`` (2-D segmentation of chest
radiographs, CR or DX) reads each image on its own, through the package's
``input.chain`` (the classifiers' chain: window, MONOCHROME1 inversion, letterbox
to ``input.size``). The network maps ``(1, 1, S, S)`` to one logit per label and
pixel; the ``lung-field`` postprocess keeps the two largest components of the
lung-field mask, holes filled, on the model grid. The probabilities (outside the
kept components set to 0, inside the filled holes to 1) are cropped to the
letterbox's content and brought back to the source image's grid (bilinear), where
the threshold gives the ``uint8`` label map of the SEG (one frame, referencing the
source image).

It speaks the volumetric pipeline's interface (``predict_series`` giving
:class:`~overread.inference.volume.VolumeOutput`), so ``overread predict``, the
service's infer job and ``overread evaluate`` treat both alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage

from overread.errors import InferenceError, ModelPackageError, OverreadError
from overread.imaging import ImageMetadata
from overread.imaging.series import Volume
from overread.imaging.transforms import Letterbox, Resize, build_chain
from overread.inference.gate import REFUSE, InputGate, check_header, record_verdict
from overread.inference.result import ModelRef, Prediction
from overread.inference.volume import VolumeOutput, failed_output
from overread.models.manifest import VolumeSpec
from overread.models.package import ModelPackage
from overread.results import Decision, FindingResult, GateVerdict


def lung_field(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The two largest components of ``mask`` (the two lungs), holes filled.

    A second component smaller than a tenth of the largest is dropped (a stray
    blob, not a lung).
    """
    labels, count = ndimage.label(mask)
    if count == 0:
        return np.zeros_like(mask, dtype=bool)
    sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
    order = np.argsort(sizes)[::-1][:2]
    keep = [int(i) + 1 for i in order if sizes[i] >= 0.1 * sizes[order[0]]]
    return np.asarray(ndimage.binary_fill_holes(np.isin(labels, keep)), dtype=bool)


def to_source_grid(
    probabilities: npt.NDArray[np.float32], box: Letterbox, shape: tuple[int, int]
) -> npt.NDArray[np.float32]:
    """``(L, S, S)`` model-grid maps cropped to the letterbox content, resized to ``shape``."""
    content = probabilities[:, box.top : box.top + box.new_rows, box.left : box.left + box.new_cols]
    tensor = torch.from_numpy(np.ascontiguousarray(content, dtype=np.float32))[None]
    up = F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False)
    return np.asarray(up[0].numpy(), dtype=np.float32)


class PlanarPipeline:
    """Image -> chain -> 2-D network -> mask on the source grid (see the module)."""

    volumetric = True
    planar = True

    def __init__(self, package: ModelPackage, *, threads: int | None = None) -> None:
        manifest = package.manifest
        if manifest.volume is None or not manifest.volume.planar:
            raise ModelPackageError(f"{package.path}: not a planar segmentation package")
        self.package = package
        self.spec: VolumeSpec = manifest.volume
        self.task = manifest.task
        self.labels = package.labels
        self.chain = build_chain(manifest.input.chain)
        self._resize = next((t for t in self.chain if isinstance(t, Resize)), None)
        self.network = package.build_network()
        self.network.eval()
        # The classifiers' input gate: the manifest's header rules (modality, body
        # part, view, SOP class, age) and its pixel check where the package has one.
        self.gate = InputGate.of(package)
        self.threads = threads
        self._lock = threading.Lock()
        self.model = ModelRef(
            name=package.name,
            version=package.version,
            sha256=package.sha256,
            runtime="torch",
            precision="fp32",
            trained=manifest.trained,
            calibrated=manifest.calibrated,
        )

    def warmup(self) -> None:
        """Nothing to warm: the network is built on load."""

    def _probabilities(self, x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
        with self._lock, torch.inference_mode():
            if self.threads:
                torch.set_num_threads(self.threads)
            logits = self.network(tensor)[0].numpy()
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float32)

    def run_image(
        self,
        path: str | Path,
        *,
        override_gate: bool = False,
        operating_point: str | None = None,
    ) -> VolumeOutput:
        """Analyse one image file (see the module).

        The input gate decides first, as for the classifiers
        (:meth:`overread.inference.pipeline.Pipeline.admit`): its verdict is kept in
        ``prediction.gate``; an image it refuses is not analysed (``ok`` false, the
        error ``not analysed: REASON``, no mask) unless ``override_gate``, when it is
        analysed and marked outside the intended use."""
        manifest = self.package.manifest
        prediction = Prediction(
            path=str(path), ok=False, model=self.model, task=manifest.task.value
        )
        started = time.perf_counter()
        run = self.chain.read_and_apply(path)
        meta = run.source
        prediction.metadata = meta
        prediction.warnings.extend(run.processed.warnings)
        x = np.asarray(run.processed.pixels, dtype=np.float32)
        size = manifest.input.size
        if x.shape != (size, size):
            raise InferenceError(
                f"preprocessing gave pixels of shape {x.shape}, the model needs ({size}, {size})"
            )
        rows, cols = run.source_shape
        box = (
            self._resize.geometry(rows, cols)
            if self._resize is not None
            else Letterbox(size / rows, size / cols, size, size, 0, 0)
        )
        gated = time.perf_counter()
        header = check_header(meta, self.gate.accepts, self.gate.spec)
        channels = manifest.input.channels
        [verdict] = self.gate.verdicts([header], np.repeat(x[None, None], channels, axis=1), [box])
        prediction.timings["gate"] = time.perf_counter() - gated
        if record_verdict(prediction, header, verdict, override_gate):
            return self._refused(prediction)
        read = time.perf_counter()
        probabilities = self._probabilities(x)
        inferred = time.perf_counter()
        thresholds = [float(t) for t in self.package.thresholds(operating_point)]
        if self.spec.postprocess == "lung-field":
            index = self.labels.index(self.spec.lung_label)
            kept = lung_field(probabilities[index] >= thresholds[index])
            near = ndimage.binary_dilation(kept, iterations=2)
            holes = kept & (probabilities[index] < thresholds[index])
            probabilities[index] = np.where(near, probabilities[index], 0.0)
            probabilities[index][holes] = 1.0
        source = to_source_grid(probabilities, box, (rows, cols))
        label_map = np.zeros((1, rows, cols), dtype=np.uint8)
        findings = []
        codes = {
            label.name: tuple((c.scheme, c.value, c.meaning) for c in label.codes)
            for label in manifest.labels
        }
        for i, label in enumerate(self.labels):
            mask = source[i] >= thresholds[i]
            label_map[0][mask] = i + 1
            inside = probabilities[i][probabilities[i] >= thresholds[i]]
            positive = bool(mask.any())
            findings.append(
                FindingResult(
                    label=label,
                    probability=float(inside.mean()) if inside.size else 0.0,
                    positive=positive,
                    threshold=thresholds[i],
                    decision=Decision.POSITIVE if positive else Decision.NEGATIVE,
                    operating_point=operating_point or manifest.default_operating_point,
                    codes=codes[label],
                )
            )
        prediction.findings = findings
        prediction.regions = []
        prediction.timings.update(
            {
                "read": read - started,
                "inference": inferred - read,
                "postprocess": time.perf_counter() - inferred,
            }
        )
        prediction.ok = True
        spacing = meta.pixel_spacing or (1.0, 1.0)
        volume = Volume(
            pixels=np.zeros((1, 0, 0), dtype=np.float32),  # the source pixels are not kept
            affine=np.eye(4),
            spacing=(1.0, float(spacing[0]), float(spacing[1])),
            metadata=meta,
            sop_instance_uids=[meta.sop_instance_uid or ""],
        )
        labels = {i + 1: label for i, label in enumerate(self.labels)}
        return VolumeOutput(prediction, volume, label_map, labels, source_paths=[str(path)])

    def predict_series(
        self,
        paths: Sequence[str | Path],
        *,
        override_gate: bool = False,
        operating_point: str | None = None,
    ) -> list[VolumeOutput]:
        """One output per image (a projection series is a set of images, each its own
        plane); an image that cannot be read or is refused gives ``ok`` false and why,
        and the input gate's refusal (as the classifiers' unreadable images get). An
        unknown ``operating_point`` is refused before any image is read."""
        if operating_point is not None:
            self.package.thresholds(operating_point)
        outputs = []
        for path in paths:
            try:
                outputs.append(
                    self.run_image(
                        path, override_gate=override_gate, operating_point=operating_point
                    )
                )
            except OverreadError as exc:
                failed = self._failed(str(path), str(exc))
                problem = str(exc).removeprefix(f"{path}: ")
                failed.prediction.gate = GateVerdict(
                    REFUSE, (f"{path}: cannot be read: {problem}",)
                )
                outputs.append(failed)
        return outputs

    def _failed(self, path: str, error: str) -> VolumeOutput:
        return failed_output(path, error, self.model, self.task.value)

    def _refused(self, prediction: Prediction) -> VolumeOutput:
        """The output of an image the gate refused: its header kept, no mask."""
        meta = prediction.metadata or ImageMetadata()
        prediction.regions = []
        volume = Volume(
            pixels=np.zeros((0, 0, 0), dtype=np.float32),
            affine=np.eye(4),
            spacing=(1.0, 1.0, 1.0),
            metadata=meta,
            sop_instance_uids=[meta.sop_instance_uid or ""],
        )
        return VolumeOutput(prediction, volume, None, {}, source_paths=[str(prediction.path)])

    def predict(
        self,
        inputs: Sequence[str | Path],
        *,
        explain: bool = False,
        trust: bool = False,
        override_gate: bool = False,
        operating_point: str | None = None,
        **_: object,
    ) -> list[Prediction]:
        """One prediction per image among ``inputs`` (the service's interface)."""
        return [
            output.prediction
            for output in self.predict_series(
                inputs, override_gate=override_gate, operating_point=operating_point
            )
        ]


__all__ = ["PlanarPipeline", "lung_field", "to_source_grid"]
