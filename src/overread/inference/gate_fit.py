"""Fit a package's input gate and measure it.

:func:`write_gated_package` measures a cohort of images the model was made for
through the package's own preprocessing and network, fits the pixel check
(:func:`overread.inference.gate.fit_gate`) and writes a *new* package version with
the ``gate`` section: a verified package is never edited in place.
:func:`evaluate_gate` runs a gate over groups of images (normal chests of another
seed, lateral views, other modalities, spoiled chests) and counts its verdicts,
once with each image's header as stored and once on the pixels alone (the header
values removed), which is what decides when a header is missing.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from overread.errors import ConfigError, ModelPackageError
from overread.imaging import Image
from overread.imaging.transforms import Letterbox
from overread.inference.gate import (
    FLAG,
    FLAG_RATE,
    REFUSE,
    REFUSE_RATE,
    FeatureExtractor,
    HeaderCheck,
    fit_gate,
    measure_files,
)
from overread.inference.pipeline import Pipeline
from overread.models.manifest import GateSpec
from overread.models.package import ModelPackage, load_package, resign_package


def next_version(version: str) -> str:
    """The version after ``version``: its last number plus one (``1.1.0`` -> ``1.1.1``)."""
    match = re.search(r"(\d+)(?!.*\d)", version)
    if match is None:
        return f"{version}.1"
    return f"{version[: match.start()]}{int(match.group(1)) + 1}{version[match.end() :]}"


def measure_with(pipeline: Pipeline) -> Callable[[Image], tuple[np.ndarray, Letterbox | None]]:
    """The package's preprocessing as the gate measures it: model input and letterbox."""

    def chain(image: Image) -> tuple[np.ndarray, Letterbox | None]:
        x, _ = pipeline.preprocess(image)
        return x, pipeline.letterbox(image)

    return chain


def fit_package_gate(
    package: ModelPackage,
    images: Sequence[str | Path],
    *,
    min_age_years: float | None = None,
    below_min_age: str = "refuse",
    flag_rate: float = FLAG_RATE,
    refuse_rate: float = REFUSE_RATE,
    provenance: Mapping[str, Any] | None = None,
    features: bool = True,
) -> GateSpec:
    """The gate section fitted for ``package`` on ``images`` (files it was made for).

    ``features=False`` leaves out the detector on the network's own features (it costs
    a second, torch, pass of the feature layers per image)."""
    pipeline = Pipeline(package, runtime="onnx" if package.manifest.runtime.onnx_fp32 else "torch")
    extractor = FeatureExtractor.of(package) if features else None
    measured = measure_files([str(p) for p in images], measure_with(pipeline), extractor)
    return fit_gate(
        measured,
        min_age_years=min_age_years,
        below_min_age=below_min_age,
        flag_rate=flag_rate,
        refuse_rate=refuse_rate,
        provenance=dict(provenance or {}),
    )


def write_gated_package(
    package: ModelPackage,
    gate: GateSpec,
    out: str | Path,
    *,
    version: str | None = None,
    key: bytes | None = None,
) -> ModelPackage:
    """A copy of ``package`` as a new version carrying ``gate``; returns it verified.

    Raises
    ------
    ModelPackageError
        If ``out`` exists or the version is not new.
    """
    target = Path(out)
    if target.exists():
        raise ModelPackageError(f"{target}: already exists; choose a new folder")
    new_version = version or next_version(package.version)
    if new_version == package.version:
        raise ModelPackageError(f"version {new_version} is the package's own; choose a new one")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        shutil.copytree(package.path, staging, dirs_exist_ok=True)
        resign_package(staging, key=key, version=new_version, gate=gate.model_dump(mode="python"))
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return load_package(target, key=key)


@dataclass(frozen=True)
class GateCounts:
    """How a gate judged one group of images."""

    kind: str
    images: int
    refused: int
    flagged: int
    refused_pixels_only: int
    flagged_pixels_only: int
    unreadable: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form with rates."""
        n = max(1, self.images)
        return {
            "kind": self.kind,
            "images": self.images,
            "refused": self.refused,
            "flagged": self.flagged,
            "refused_rate": round(self.refused / n, 4),
            "refused_pixels_only": self.refused_pixels_only,
            "flagged_pixels_only": self.flagged_pixels_only,
            "refused_pixels_only_rate": round(self.refused_pixels_only / n, 4),
            "unreadable": self.unreadable,
        }


def evaluate_gate(
    pipeline: Pipeline, groups: Mapping[str, Sequence[str | Path]]
) -> list[GateCounts]:
    """Count the gate's verdicts on each group, with headers and on pixels alone.

    An unreadable file counts as refused (the service cannot analyse it either) and
    is reported in ``unreadable``.
    """
    if pipeline.gate.spec is None:
        raise ConfigError(
            f"{pipeline.model.name} {pipeline.model.version} has no fitted gate to evaluate"
        )
    out = []
    for kind, paths in groups.items():
        admitted = pipeline.admit(list(paths), explain=False)
        statuses = [p.gate.status if p.gate is not None else REFUSE for p, _ in admitted]
        unreadable = sum(1 for p, _ in admitted if p.gate is not None and p.gate.ood_score is None)
        pixels = _pixels_only(pipeline, paths)
        out.append(
            GateCounts(
                kind=kind,
                images=len(statuses),
                refused=statuses.count(REFUSE),
                flagged=statuses.count(FLAG),
                refused_pixels_only=pixels.count(REFUSE) + unreadable,
                flagged_pixels_only=pixels.count(FLAG),
                unreadable=unreadable,
            )
        )
    return out


def _pixels_only(pipeline: Pipeline, paths: Sequence[str | Path]) -> list[str]:
    """Verdicts of the pixel check alone (as if the header said nothing)."""
    from overread.imaging import read

    xs, boxes = [], []
    for path in paths:
        try:
            image = read(path)
            x, box = measure_with(pipeline)(image)
        except Exception:  # counted as unreadable by the caller
            continue
        xs.append(x)
        boxes.append(box)
    if not xs:
        return []
    headers = [HeaderCheck() for _ in xs]
    return [v.status for v in pipeline.gate.verdicts(headers, np.stack(xs), boxes)]


__all__ = [
    "GateCounts",
    "evaluate_gate",
    "fit_package_gate",
    "measure_with",
    "next_version",
    "write_gated_package",
]
