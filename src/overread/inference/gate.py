"""The input gate: refuse or flag images the model was not made for, before it runs.

A model package states what it accepts (``accepts``: modality, body part, view
position, SOP class) and, in its optional ``gate`` section, a minimum patient age and
a pixel check fitted on images it was made for. :class:`InputGate` applies both:

* **Header.** A value that is present and outside ``accepts`` refuses the image
  (a CT, a lateral view, a secondary capture). A patient younger than
  ``min_age_years`` (Patient Age, else birth date against study date) is refused or
  flagged as the package says. A *missing* value is not waved through: the pixel
  check decides, and the verdict says which values were missing.
* **Pixels.** Simple statistics of the model input (saturation, noise, flat
  borders, letterbox padding, contrast between the mediastinum and the lungs,
  histogram shape...) each compared with their spread on the fit images; a
  probabilistic-PCA Mahalanobis distance on a 16 x 16 thumbnail (the layout of a
  frontal chest); and the same on the model's own pooled penultimate features. Each
  detector's score is divided by its 99th percentile on the fit images; the image's
  out-of-distribution score is the largest, compared with a flag and a refuse
  threshold chosen on the fit images for stated rates.

The verdict is ``pass``, ``flag`` (analysed, with the reason shown) or ``refuse``
(not analysed unless a radiologist overrides it, which marks the result as outside
the model's intended use). :func:`fit_gate` fits the pixel check from a cohort.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from overread.imaging import Image, ImageMetadata
from overread.imaging.transforms import Letterbox
from overread.models.manifest import Accepts, GateSpec, StatisticSpec, SubspaceSpec
from overread.results import GateVerdict, Prediction

if TYPE_CHECKING:
    from overread.models.package import ModelPackage

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Side of the thumbnail the structure detector reads.
THUMBNAIL = 16
#: Principal components kept by each subspace detector.
COMPONENTS = 16
#: Default rates the thresholds are chosen for on the fit images.
FLAG_RATE = 0.05
REFUSE_RATE = 0.02


#: The verdicts (:class:`overread.results.GateVerdict` statuses).
PASS, FLAG, REFUSE = "pass", "flag", "refuse"


# -- what the gate measures ---------------------------------------------------------


@dataclass(frozen=True)
class Statistic:
    """One image statistic: how it is computed and what a suspicious value means."""

    name: str
    direction: Literal[-1, 0, 1]
    high: str
    low: str
    floor: float


#: The statistics, in the order :func:`image_statistics` returns them. ``floor`` is
#: the smallest robust scale used (a statistic that barely varies on the fit images,
#: such as letterbox padding of square phantoms, must not refuse every small change).
STATISTICS: tuple[Statistic, ...] = (
    Statistic("mean", 0, "unusually bright image", "unusually dark image", 0.02),
    Statistic("contrast", -1, "", "very low contrast (washed out)", 0.01),
    Statistic("saturated_dark", 1, "badly windowed: much of the image is clipped black", "", 0.01),
    Statistic(
        "saturated_bright", 1, "badly windowed: much of the image is clipped white", "", 0.01
    ),
    Statistic("noise", 1, "heavy noise", "", 0.005),
    Statistic("flat_border", 1, "heavy collimation or cropping: large flat borders", "", 0.03),
    Statistic("padding", 1, "cropped or unusually shaped image (large letterbox padding)", "", 0.1),
    Statistic(
        "mediastinum_contrast",
        -1,
        "",
        "looks inverted: the mediastinum is darker than the lungs",
        0.02,
    ),
    Statistic("symmetry", -1, "", "no left-right symmetry of a frontal chest", 0.02),
    Statistic("entropy", -1, "", "few grey levels (histogram unlike a chest radiograph)", 0.05),
)
STATISTIC_NAMES = tuple(s.name for s in STATISTICS)
_BY_NAME = {s.name: s for s in STATISTICS}


def _content(x: FloatArray, box: Letterbox | None) -> FloatArray:
    if box is None:
        return x
    return x[box.top : box.top + box.new_rows, box.left : box.left + box.new_cols]


def _resize(x: FloatArray, size: int) -> FloatArray:
    """Area-average ``x`` to ``size x size`` (edges replicated when smaller)."""
    tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
    out = nn.functional.adaptive_avg_pool2d(tensor, (size, size))
    return np.asarray(out[0, 0].numpy(), dtype=np.float64)


def _noise(x: FloatArray) -> float:
    """Immerkaer's noise estimate: the mean absolute response to a Laplacian
    difference that cancels smooth structure (Immerkaer, CVIU 1996)."""
    if min(x.shape) < 3:
        return 0.0
    response = (
        x[:-2, :-2]
        - 2 * x[:-2, 1:-1]
        + x[:-2, 2:]
        - 2 * x[1:-1, :-2]
        + 4 * x[1:-1, 1:-1]
        - 2 * x[1:-1, 2:]
        + x[2:, :-2]
        - 2 * x[2:, 1:-1]
        + x[2:, 2:]
    )
    return float(math.sqrt(math.pi / 2) * np.mean(np.abs(response)) / 6)


def _flat_border(x: FloatArray) -> float:
    """Fraction of the image in rows or columns that are (nearly) constant."""
    flat_rows = x.std(axis=1) < 0.01
    flat_cols = x.std(axis=0) < 0.01
    mask = flat_rows[:, None] | flat_cols[None, :]
    return float(mask.mean())


def _region(x: FloatArray, rows: tuple[float, float], cols: tuple[float, float]) -> float:
    r, c = x.shape
    part = x[int(rows[0] * r) : max(int(rows[0] * r) + 1, int(rows[1] * r)), :]
    part = part[:, int(cols[0] * c) : max(int(cols[0] * c) + 1, int(cols[1] * c))]
    return float(part.mean())


def image_statistics(x: FloatArray, box: Letterbox | None) -> FloatArray:
    """The :data:`STATISTICS` of one model input ``(H, W)`` in [0, 1]."""
    full = np.asarray(x, dtype=np.float64)
    content = _content(full, box)
    if content.size == 0:
        content = full
    padding = 1.0 - content.size / full.size
    small = _resize(content, 64)
    histogram, _ = np.histogram(np.clip(content, 0, 1), bins=32, range=(0.0, 1.0))
    p = histogram[histogram > 0] / max(1, histogram.sum())
    lungs = 0.5 * (
        _region(small, (0.25, 0.6), (0.18, 0.36)) + _region(small, (0.25, 0.6), (0.64, 0.82))
    )
    mediastinum = _region(small, (0.2, 0.6), (0.44, 0.56))
    centred = small - small.mean()
    mirrored = centred[:, ::-1]
    norm = float(np.sqrt((centred**2).sum() * (mirrored**2).sum()))
    symmetry = float((centred * mirrored).sum() / norm) if norm > 0 else 0.0
    values = {
        "mean": float(content.mean()),
        "contrast": float(content.std()),
        "saturated_dark": float((content <= 0.005).mean()),
        "saturated_bright": float((content >= 0.995).mean()),
        "noise": _noise(content),
        "flat_border": _flat_border(content),
        "padding": float(padding),
        "mediastinum_contrast": mediastinum - lungs,
        "symmetry": symmetry,
        "entropy": float(-(p * np.log2(p)).sum()),
    }
    return np.asarray([values[name] for name in STATISTIC_NAMES], dtype=np.float64)


def thumbnail(x: FloatArray, box: Letterbox | None) -> FloatArray:
    """The image content (letterbox padding removed) averaged to 16 x 16, flattened."""
    full = np.asarray(x, dtype=np.float64)
    content = _content(full, box)
    return _resize(content if content.size else full, THUMBNAIL).ravel()


class FeatureExtractor:
    """Pooled penultimate features of a package's network (the map its classifier reads).

    ``None`` from :meth:`of` when the architecture has no such split.
    """

    def __init__(self, features: nn.Module) -> None:
        self._features = features.eval()

    @classmethod
    def of(cls, package: ModelPackage) -> FeatureExtractor | None:
        """The extractor for ``package``'s network, or None."""
        from overread.models.export import cam_parts

        parts = cam_parts(package.build_network())
        return None if parts is None else cls(parts[0])

    def __call__(self, x: np.ndarray) -> FloatArray:
        """``(N, C, H, W)`` float32 model inputs -> ``(N, D)`` pooled features."""
        with torch.inference_mode():
            tensor = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            pooled = self._features(tensor).mean(dim=(2, 3))
        return np.asarray(pooled.numpy(), dtype=np.float64)


@dataclass
class Measurements:
    """What the pixel check reads of a batch of model inputs."""

    statistics: FloatArray
    thumbnails: FloatArray
    features: FloatArray | None = None


def measure(
    x: np.ndarray,
    boxes: Sequence[Letterbox | None],
    extractor: FeatureExtractor | None,
) -> Measurements:
    """Statistics, thumbnails and (with an extractor) features of ``(N, C, H, W)`` inputs."""
    batch = np.asarray(x, dtype=np.float32)
    stats = np.stack([image_statistics(batch[i, 0], boxes[i]) for i in range(len(batch))])
    thumbs = np.stack([thumbnail(batch[i, 0], boxes[i]) for i in range(len(batch))])
    features = extractor(batch) if extractor is not None else None
    return Measurements(stats, thumbs, features)


# -- scoring ------------------------------------------------------------------------


def _statistic_scores(values: FloatArray, specs: Sequence[StatisticSpec]) -> FloatArray:
    """``(N, S)`` robust z of each statistic in its suspicious direction."""
    out = np.zeros((values.shape[0], len(specs)))
    for j, spec in enumerate(specs):
        z = (values[:, STATISTIC_NAMES.index(spec.name)] - spec.median) / spec.scale
        out[:, j] = np.abs(z) if spec.direction == 0 else np.maximum(0.0, spec.direction * z)
    return out


def _subspace_raw(values: FloatArray, spec: SubspaceSpec) -> FloatArray:
    mean = np.asarray(spec.mean)
    centred = values - mean
    if spec.components:
        basis = np.asarray(spec.components)
        coords = centred @ basis.T
        residual = centred - coords @ basis
        inside = (coords**2 / np.asarray(spec.eigenvalues)).sum(axis=1)
    else:
        residual, inside = centred, np.zeros(len(values))
    outside = (residual**2).sum(axis=1) / spec.residual_variance
    return np.asarray((inside + outside) / mean.size, dtype=np.float64)


@dataclass(frozen=True)
class DetectorScores:
    """Normalised scores ``(N,)`` per detector name (1 = 99th percentile of fit images)."""

    scores: dict[str, FloatArray] = field(default_factory=dict)

    def combined(self) -> FloatArray:
        """The largest detector score per image."""
        return np.asarray(np.max(np.stack(list(self.scores.values())), axis=0), dtype=np.float64)


def detector_scores(measured: Measurements, spec: GateSpec) -> DetectorScores:
    """Every detector's normalised score for each measured image."""
    scores: dict[str, FloatArray] = {}
    raw = _statistic_scores(measured.statistics, spec.statistics)
    for j, stat in enumerate(spec.statistics):
        scores[stat.name] = raw[:, j] / stat.q99
    if spec.structure is not None:
        scores["structure"] = _subspace_raw(measured.thumbnails, spec.structure) / (
            spec.structure.q99
        )
    if spec.features is not None and measured.features is not None:
        scores["features"] = _subspace_raw(measured.features, spec.features) / spec.features.q99
    return DetectorScores(scores)


def _detector_reason(name: str, index: int, measured: Measurements, spec: GateSpec) -> str:
    if name == "structure":
        return "the image's layout is unlike a frontal chest radiograph"
    if name == "features":
        return "the model's features are unlike those of the images it was made for"
    stat = _BY_NAME[name]
    statistic = next(s for s in spec.statistics if s.name == name)
    value = measured.statistics[index, STATISTIC_NAMES.index(name)]
    text = stat.high if value >= statistic.median else stat.low
    return text or f"unusual {name.replace('_', ' ')}"


# -- the gate -------------------------------------------------------------------------


def patient_age_years(meta: ImageMetadata) -> float | None:
    """Patient Age in years, else birth date against study date; None when unknown."""
    age = (meta.patient_age or "").strip().upper()
    if len(age) == 4 and age[:3].isdigit() and age[3] in "DWMY":
        per_year = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}[age[3]]
        return int(age[:3]) / per_year
    born, seen = _date(meta.patient_birth_date), _date(meta.study_date)
    if born is None or seen is None or seen < born:
        return None
    return (seen - born).days / 365.25


def _date(text: str | None) -> dt.date | None:
    try:
        return dt.datetime.strptime((text or "").strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


@dataclass(frozen=True)
class HeaderCheck:
    """What the header says: reasons to refuse or flag, and which values were missing."""

    refuse: tuple[str, ...] = ()
    flag: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()


def check_header(meta: ImageMetadata, accepts: Accepts, spec: GateSpec | None) -> HeaderCheck:
    """The header rules of :class:`InputGate` (see the module)."""
    refuse: list[str] = []
    flag: list[str] = []
    missing: list[str] = []
    checks = [
        ("modality", meta.modality, accepts.modalities),
        ("body part", meta.body_part, accepts.body_parts),
        ("view position", meta.view_position, accepts.view_positions),
        ("SOP class", meta.sop_class_uid, accepts.sop_class_uids),
    ]
    for what, value, allowed in checks:
        if not allowed:
            continue
        text = (value or "").strip()
        if not text:
            missing.append(what)
        elif text.upper() not in {a.upper() for a in allowed}:
            refuse.append(f"{what} {text} is not accepted (accepts {', '.join(allowed)})")
    if spec is not None and spec.min_age_years is not None:
        age = patient_age_years(meta)
        if age is None:
            missing.append("patient age")
        elif age < spec.min_age_years:
            reason = (
                f"patient age {age:.1f} years is below the model's minimum of "
                f"{spec.min_age_years:g} years"
            )
            (refuse if spec.below_min_age == "refuse" else flag).append(reason)
    return HeaderCheck(tuple(refuse), tuple(flag), tuple(missing))


def record_verdict(
    prediction: Prediction,
    header: HeaderCheck | None,
    verdict: GateVerdict,
    override_gate: bool,
) -> bool:
    """Record the gate's ``verdict`` on ``prediction`` as every pipeline does: a warning
    for header values the image decided, a refusal overridden by a reader marking the
    result outside intended use, else a refusal as the prediction's error. True when
    the image is refused (nothing for the model to analyse)."""
    if header is not None and header.missing and verdict.status != REFUSE:
        prediction.warnings.append(
            f"{', '.join(header.missing)} not in the header: decided by the image"
        )
    refused = verdict.status == REFUSE and not override_gate
    if verdict.status == REFUSE and override_gate:
        verdict = GateVerdict(verdict.status, verdict.reasons, verdict.ood_score, True)
        prediction.outside_intended_use = True
    elif refused:
        prediction.error = f"not analysed: {verdict.reason}"
    prediction.gate = verdict
    return refused


class InputGate:
    """Header rules and the fitted pixel check of one model package.

    Parameters
    ----------
    accepts
        The package's ``accepts`` section.
    spec
        Its ``gate`` section (``None``: header rules only, and an image whose header
        lacks a value the package checks is flagged, since nothing can decide it).
    extractor
        The network's feature extractor, needed when ``spec`` has a feature detector.
    """

    def __init__(
        self,
        accepts: Accepts,
        spec: GateSpec | None,
        extractor: FeatureExtractor | None = None,
    ) -> None:
        self.accepts = accepts
        self.spec = spec
        self.extractor = extractor if spec is not None and spec.features is not None else None

    @classmethod
    def of(cls, package: ModelPackage) -> InputGate:
        """The gate a package states."""
        spec = package.manifest.gate
        extractor = FeatureExtractor.of(package) if spec is not None and spec.features else None
        return cls(package.manifest.accepts, spec, extractor)

    def check_header(self, image: Image) -> HeaderCheck:
        """The header rules for one image."""
        return check_header(image.metadata, self.accepts, self.spec)

    def verdicts(
        self,
        headers: Sequence[HeaderCheck],
        x: np.ndarray | None,
        boxes: Sequence[Letterbox | None],
    ) -> list[GateVerdict]:
        """Verdicts for a batch: header results and the ``(N, C, H, W)`` model inputs."""
        spec = self.spec
        combined: FloatArray | None = None
        scores: DetectorScores | None = None
        measured: Measurements | None = None
        if spec is not None and x is not None and len(headers):
            measured = measure(x, boxes, self.extractor)
            scores = detector_scores(measured, spec)
            combined = scores.combined()
        out = []
        for i, header in enumerate(headers):
            refuse, flag = list(header.refuse), list(header.flag)
            ood = None if combined is None else float(combined[i])
            if spec is None or scores is None or measured is None or ood is None:
                if header.missing:
                    flag.append(
                        f"{', '.join(header.missing)} not in the header and the model has "
                        "no image check to decide"
                    )
            elif ood > spec.flag_threshold:
                named = sorted(
                    (name for name, s in scores.scores.items() if s[i] > spec.flag_threshold),
                    key=lambda name: -scores.scores[name][i],
                )
                reasons = [_detector_reason(n, i, measured, spec) for n in named]
                where = refuse if ood > spec.refuse_threshold else flag
                missing = (
                    f" ({', '.join(header.missing)} not in the header)" if header.missing else ""
                )
                where.append(
                    f"image unlike those the model was made for (score {ood:.2f}, "
                    f"refused above {spec.refuse_threshold:.2f}): "
                    + "; ".join(dict.fromkeys(reasons))
                    + missing
                )
            status = REFUSE if refuse else FLAG if flag else PASS
            out.append(GateVerdict(status, tuple(refuse + flag), ood))
        return out


# -- fitting --------------------------------------------------------------------------


def _fit_subspace(name: str, values: FloatArray, components: int) -> SubspaceSpec:
    mean = values.mean(axis=0)
    centred = values - mean
    n, d = centred.shape
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    eigen = singular**2 / max(1, n - 1)
    k = max(0, min(components, n - 2, d - 1))
    kept = eigen[:k]
    kept = np.maximum(kept, 1e-12)
    rest = eigen[k:]
    residual = float(rest.sum() / max(1, d - k)) if rest.size else 1e-12
    return SubspaceSpec(
        name=name,
        mean=_rounded(mean),
        components=[_rounded(row) for row in vt[:k]],
        eigenvalues=_rounded(kept),
        residual_variance=max(residual, 1e-12),
        q99=1.0,
    )


def _rounded(values: Any) -> list[float]:
    return [float(f"{v:.6g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def _positive(value: float) -> float:
    return value if value > 1e-9 else 1e-9


def _fit_statistic(stat: Statistic, values: FloatArray) -> StatisticSpec:
    median = float(np.median(values))
    mad = float(np.median(np.abs(values - median))) * 1.4826
    scale = max(mad, stat.floor)
    return StatisticSpec(
        name=stat.name,
        direction=stat.direction,
        median=float(f"{median:.6g}"),
        scale=float(f"{scale:.6g}"),
        q99=1.0,
    )


def _fit_detectors(measured: Measurements, components: int) -> GateSpec:
    """Every detector fitted on ``measured`` (``q99`` still 1: see :func:`_normalised`)."""
    return GateSpec(
        statistics=[
            _fit_statistic(stat, measured.statistics[:, j]) for j, stat in enumerate(STATISTICS)
        ],
        structure=_fit_subspace("structure", measured.thumbnails, components),
        features=None
        if measured.features is None
        else _fit_subspace("features", measured.features, components),
        flag_threshold=1.0,
        refuse_threshold=1.0,
    )


def _subset(measured: Measurements, index: npt.NDArray[np.intp]) -> Measurements:
    return Measurements(
        measured.statistics[index],
        measured.thumbnails[index],
        None if measured.features is None else measured.features[index],
    )


def _held_out_scores(measured: Measurements, components: int, folds: int) -> dict[str, FloatArray]:
    """Each image's unnormalised detector scores from detectors fitted without it."""
    n = measured.statistics.shape[0]
    out: dict[str, FloatArray] = {}
    # Contiguous folds in input order: a cohort's files are grouped by patient, so a
    # patient's studies stay in one fold and held-out means a new patient.
    bounds = np.linspace(0, n, folds + 1).astype(int)
    for fold in range(folds):
        test = np.arange(bounds[fold], bounds[fold + 1])
        train = np.setdiff1d(np.arange(n), test)
        spec = _fit_detectors(_subset(measured, train), components)
        scores = detector_scores(_subset(measured, test), spec).scores
        for name, values in scores.items():
            out.setdefault(name, np.zeros(n))[test] = values
    return out


def _normalised(spec: GateSpec, q99: dict[str, float]) -> GateSpec:
    """``spec`` with each detector's ``q99`` set from held-out scores."""
    statistics = [
        s.model_copy(update={"q99": float(f"{q99[s.name]:.6g}")}) for s in spec.statistics
    ]
    structure = spec.structure
    if structure is not None:
        structure = structure.model_copy(update={"q99": float(f"{q99['structure']:.6g}")})
    features = spec.features
    if features is not None:
        features = features.model_copy(update={"q99": float(f"{q99['features']:.6g}")})
    return spec.model_copy(
        update={"statistics": statistics, "structure": structure, "features": features}
    )


def fit_gate(
    measured: Measurements,
    *,
    min_age_years: float | None = None,
    below_min_age: str = "refuse",
    flag_rate: float = FLAG_RATE,
    refuse_rate: float = REFUSE_RATE,
    components: int = COMPONENTS,
    folds: int = 5,
    provenance: dict[str, Any] | None = None,
) -> GateSpec:
    """Fit the pixel check on images the model was made for.

    Each detector is normalised by its 99th percentile on these images; the flag and
    refuse thresholds are the ``1 - flag_rate`` and ``1 - refuse_rate`` quantiles of
    the combined score, both on held-out scores (``folds``-fold cross-fitting), so
    about ``refuse_rate`` of new images like these are refused.
    """
    n = measured.statistics.shape[0]
    if n < 30:
        raise ValueError(f"fitting the input gate needs at least 30 images, got {n}")
    if not 0 < refuse_rate <= flag_rate < 1:
        raise ValueError("need 0 < refuse_rate <= flag_rate < 1")
    draft = _fit_detectors(measured, components)
    # Scores of images the detectors did not see: each fold scored by detectors fitted
    # on the others. A detector scores its own fit images lower than new ones (the
    # subspace detectors most of all), so normalising and choosing thresholds on them
    # would refuse far more new images than the stated rate.
    held_out = _held_out_scores(measured, components, folds)
    # A statistic's score of 1 is at least a robust z of 1 (some barely vary).
    q99 = {
        name: max(1.0 if name in STATISTIC_NAMES else 0.0, _positive(float(np.quantile(v, 0.99))))
        for name, v in held_out.items()
    }
    draft = _normalised(draft, q99)
    combined = np.max(np.stack([held_out[name] / q99[name] for name in held_out]), axis=0)
    flag = float(np.quantile(combined, 1 - flag_rate))
    refuse = max(flag, float(np.quantile(combined, 1 - refuse_rate)))
    fit = {
        "images": n,
        "flag_rate": flag_rate,
        "refuse_rate": refuse_rate,
        "flagged_on_fit": round(float((combined > flag).mean()), 4),
        "refused_on_fit": round(float((combined > refuse).mean()), 4),
        "components": components,
        "folds": folds,
        "thumbnail": THUMBNAIL,
        **(provenance or {}),
    }
    return draft.model_copy(
        update={
            "min_age_years": min_age_years,
            "below_min_age": "flag" if below_min_age == "flag" else "refuse",
            "flag_threshold": float(f"{flag:.6g}"),
            "refuse_threshold": float(f"{refuse:.6g}"),
            "fit": fit,
        }
    )


def measure_files(
    paths: Sequence[str],
    chain: Callable[[Image], tuple[np.ndarray, Letterbox | None]],
    extractor: FeatureExtractor | None,
    *,
    batch_size: int = 16,
    read: Callable[[str], Image] | None = None,
) -> Measurements:
    """Measure files through a model's preprocessing (unreadable files are skipped)."""
    from overread.imaging import read as read_image

    reader = read or read_image
    stats: list[FloatArray] = []
    thumbs: list[FloatArray] = []
    feats: list[FloatArray] = []
    for start in range(0, len(paths), batch_size):
        xs: list[np.ndarray] = []
        boxes: list[Letterbox | None] = []
        for path in paths[start : start + batch_size]:
            try:
                x, box = chain(reader(path))
            except Exception as exc:  # a bad file is left out of the fit
                logger.warning("%s: left out of the gate fit: %s", path, exc)
                continue
            xs.append(x)
            boxes.append(box)
        if not xs:
            continue
        part = measure(np.stack(xs), boxes, extractor)
        stats.append(part.statistics)
        thumbs.append(part.thumbnails)
        if part.features is not None:
            feats.append(part.features)
    if not stats:
        raise ValueError("no readable image to measure")
    return Measurements(
        np.concatenate(stats),
        np.concatenate(thumbs),
        np.concatenate(feats) if feats else None,
    )


__all__ = [
    "FLAG",
    "FLAG_RATE",
    "PASS",
    "REFUSE",
    "REFUSE_RATE",
    "STATISTICS",
    "DetectorScores",
    "FeatureExtractor",
    "HeaderCheck",
    "InputGate",
    "Measurements",
    "check_header",
    "detector_scores",
    "fit_gate",
    "image_statistics",
    "measure",
    "measure_files",
    "patient_age_years",
    "record_verdict",
    "thumbnail",
]
