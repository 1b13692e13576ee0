"""The model package manifest: what a model is, what it accepts, and how to check it.

A manifest is validated by pydantic when a package is loaded, so a package with a
missing threshold, an unknown task or a label without a name is refused before any
weights are read. Its canonical form (sorted keys, no whitespace, UTF-8, without the
``signature`` block) is what the package hash covers, so two byte-different but
equivalent manifest files hash the same and any change of meaning changes the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from overread.models.blob_cad import (
    DEFAULT_SCALES_MM,
    FEATURES,
    FEATURES_V3,
    FLOOR,
    check_trees,
)

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


class Task(StrEnum):
    """What the model's output means."""

    MULTI_LABEL_CLASSIFICATION = "multi-label-classification"
    SEGMENTATION = "segmentation"
    DETECTION = "detection"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Code(_Strict):
    """A coded concept (DICOM style: scheme designator, value, meaning)."""

    scheme: str = Field(min_length=1)
    value: str = Field(min_length=1)
    meaning: str = Field(min_length=1)


class LabelSpec(_Strict):
    """One model output: its name and, where verified, its standard codes."""

    name: str = Field(min_length=1)
    codes: list[Code] = Field(default_factory=list)


class Accepts(_Strict):
    """Which images the model is meant for; an empty list accepts anything."""

    modalities: list[str] = Field(default_factory=list)
    body_parts: list[str] = Field(default_factory=list)
    view_positions: list[str] = Field(default_factory=list)
    sop_class_uids: list[str] = Field(default_factory=list)


class StatisticSpec(_Strict):
    """One image statistic the input gate watches, with its robust fit on normal images.

    ``direction``: ``1`` when only high values are suspicious, ``-1`` only low, ``0``
    both. The statistic's score is its robust z (``(value - median) / scale``) in the
    suspicious direction, divided by ``q99``, its 99th percentile on the fit images.
    """

    name: str = Field(min_length=1)
    direction: Literal[-1, 0, 1] = 0
    median: float
    scale: float = Field(gt=0.0)
    q99: float = Field(gt=0.0)


class SubspaceSpec(_Strict):
    """A probabilistic-PCA Mahalanobis detector on a feature vector.

    ``score = (sum_k (c_k^2 / eigenvalues_k) + |residual|^2 / residual_variance) / d``
    for the centred vector's coordinates ``c`` on ``components`` (rows) and what they
    leave out, divided by ``q99``, the 99th percentile of that on the fit images.
    """

    name: str = Field(min_length=1)
    mean: list[float] = Field(min_length=1)
    components: list[list[float]] = Field(default_factory=list)
    eigenvalues: list[float] = Field(default_factory=list)
    residual_variance: float = Field(gt=0.0)
    q99: float = Field(gt=0.0)

    @model_validator(mode="after")
    def _shapes(self) -> SubspaceSpec:
        if len(self.components) != len(self.eigenvalues):
            raise ValueError("one eigenvalue per component")
        if any(len(row) != len(self.mean) for row in self.components):
            raise ValueError("components must have the mean's length")
        if any(value <= 0 for value in self.eigenvalues):
            raise ValueError("eigenvalues must be positive")
        return self


class GateSpec(_Strict):
    """The input gate: what the package refuses or flags before it runs.

    Header rules come from ``accepts`` (a present value outside it is refused; a
    missing one is decided by the pixel check) and from ``min_age_years``
    (``below_min_age`` says whether a younger patient is refused or flagged). The
    pixel check combines the detectors below: each gives a score normalised so that
    1 is its 99th percentile on the fit images, the image's score is their maximum,
    and ``flag_threshold`` / ``refuse_threshold`` were chosen on the fit images for
    the false-flag and false-refusal rates recorded in ``fit``.
    """

    min_age_years: float | None = Field(default=None, ge=0.0)
    below_min_age: Literal["refuse", "flag"] = "refuse"
    statistics: list[StatisticSpec] = Field(default_factory=list)
    structure: SubspaceSpec | None = None
    features: SubspaceSpec | None = None
    flag_threshold: float = Field(gt=0.0)
    refuse_threshold: float = Field(gt=0.0)
    fit: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _ordered(self) -> GateSpec:
        if self.flag_threshold > self.refuse_threshold:
            raise ValueError("flag_threshold must not exceed refuse_threshold")
        return self


class InputSpec(_Strict):
    """The network input and the exact preprocessing chain that produces it."""

    size: int = Field(gt=0)
    channels: int = Field(default=1, gt=0)
    chain: list[dict[str, Any]] = Field(default_factory=list)
    window: str = "file VOI window, else percentile window"
    normalisation: str = "[0, 1], bone bright"


#: The ``classical`` lung mask's settings (``volume.lung_refine``): out of the hash when off.
LUNG_REFINE_SETTINGS: tuple[str, ...] = (
    "lung_refine",
    "lung_source_hu",
    "airway_hu",
    "airway_min_radius_mm",
    "lung_hole_max_mm2",
    "lung_hole_open_mm",
)
#: The most grid steps the ``classical`` lung mask's ball radii may span (the opening's
#: time grows with the ball's volume).
MAX_BALL_VOXELS = 6

#: The ``blob-cad`` settings added after its first manifests (in the hash once set).
CAD_SETTINGS: tuple[str, ...] = (
    "cad_revision",
    "cad_min_blobness",
    "cad_max_candidates",
    "cad_rim_hu",
    "cad_rim_ratio",
    "cad_candidate_closing_mm",
)


class VolumeSpec(_Strict):
    """How a 3-D (CT) package reads a series, for segmentation and detection tasks.

    The series is assembled into a volume (:mod:`overread.imaging.series`) in the
    stored units (HU for CT), resampled to ``spacing_mm`` (slice, row, column), and
    run by sliding windows of ``patch_size`` voxels overlapping by ``overlap`` (a
    fraction of the patch), blended with Gaussian weights (``sigma_scale`` of the
    patch). ``labels`` of the manifest name the network's output channels; a voxel is
    in a label's mask where its probability is at least the label's threshold
    (operating point). ``postprocess`` names the rule that turns masks into regions:
    ``lung-nodule`` keeps lung components away from the volume's sides and
    nodules inside the lungs, between ``min_nodule_mm`` and ``max_nodule_mm`` in
    longest diameter. ``solid_hu`` is the attenuation a nodule voxel must reach to
    count as solid (density category). ``hu_window`` ``(low, high)``, when set, clips
    HU to it and maps it linearly to ``[-1, 1]`` before the network (``None``: the
    network reads HU). ``resample`` names the interpolation to ``spacing_mm``:
    ``antialias`` (bilinear in-plane, antialiased when shrinking, then linear across
    slices) or ``trilinear`` (plain trilinear, no antialiasing: what
    ``overread train --preset ct-phantom`` trained with). ``nodule_score`` is a
    nodule's score (the FROC candidate score): the ``mean`` or the ``max`` nodule
    probability of its component on the network's grid. ``lung_output`` is what comes
    back to the source grid as the lung: the ``filled-mask`` (kept components, holes
    filled slice by slice) or the network's lung ``probability`` inside the kept
    components grown by one voxel, unfilled (for a network that calls vessels and
    nodules lung itself: slice-wise filling would also fill the diaphragm's dome),
    thresholded there.

    ``clean_components`` (``lung-nodule``; off by default, so older packages read as
    before) cleans both masks on the network's grid by 3-D components: the lung keeps
    the 26-connected components that do not touch the in-plane sides and hold at least
    ``lung_keep_fraction`` of the largest such one (stray voxels far from the lungs
    go), holes filled slice by slice; a nodule is a face-connected component (26
    would join nodules to the vessels they touch) of the nodule mask inside that lung
    grown by ``nodule_lung_margin_mm`` (a nodule on the pleura is not cut at the
    lung's edge) that holds at least ``nodule_min_volume_mm3``.

    ``lung_refine`` (``lung-nodule`` and ``blob-cad``; ``none`` by default, so older
    packages read and hash as before) ``classical`` makes the lung as clinical CAD
    pipelines do (:mod:`overread.inference.lung_mask`): on the network's grid the
    large airways (resampled HU at or below ``airway_hu``, opened by a ball of
    ``airway_min_radius_mm``, the components reaching the first or last slice) are
    taken out before the lung's components are kept, and the kept lung's holes are
    filled in 3-D and slice by slice, but for the wide part (opened by a ball of
    ``lung_hole_open_mm``) of slice-wise holes wider than ``lung_hole_max_mm2`` in a
    slice, and of the holes narrowing away from those (the diaphragm's dome);
    on the source grid, slice by slice, the lung brought back grows by the voxels at
    or below ``lung_source_hu`` within one voxel of the network's grid around it
    (the partial-volume boundary at the source resolution), not into the airways.
    It is refused with another postprocess (it would do nothing) and with
    ``lung_output`` ``probability`` (it refines the filled mask). Its settings are
    finite and bounded: ``lung_source_hu`` in [-900, 0], ``airway_hu`` in [-1100,
    -900] (darker than aerated lung, or the whole lung would be airway), the radii
    ``airway_min_radius_mm`` and ``lung_hole_open_mm`` in (0, 20] mm, at least the
    larger in-plane step of ``spacing_mm`` (a disc across a coarser slice step) and at
    most :data:`MAX_BALL_VOXELS` of its smallest,
    ``lung_hole_max_mm2`` in [0, 100000] mm².

    ``planar`` true makes it a 2-D package for projection radiographs (CR, DX): each
    image is read through the manifest's ``input.chain`` (to ``input.size`` pixels a
    side), the network maps ``(N, 1, H, W)`` to one logit per label and pixel, and
    the masks come back to the source image's grid through the chain's letterbox;
    ``spacing_mm``, ``patch_size`` and the windows are not used. Its ``postprocess``
    is ``none`` or ``lung-field`` (the label named by ``lung_label``: its two largest
    components, holes filled).

    ``centre-heatmap`` (a detector): ``centre_label`` names the nodule-centre
    heatmap channel and ``size_labels`` the box-size channels (slice, row, column;
    size in mm = probability x ``max_nodule_mm``); its local maxima (3x3x3) reaching
    the centre label's threshold, at most ``max_detections``, are the nodules
    (:mod:`overread.models.centre_heatmap`).

    ``blob-cad`` (two-stage nodule CAD, :mod:`overread.models.blob_cad`): the lung as
    ``lung-nodule`` makes it; inside it, on the source grid, the local maxima of the
    multi-scale blob filter over ``cad_scales_mm`` reaching ``cad_floor`` (HU) are the
    candidates; each is scored by the logistic ``cad_weights`` (intercept, then one
    weight per feature of :data:`overread.models.blob_cad.FEATURES`); the
    ``max_detections`` best scoring at least the nodule label's threshold are the
    nodules, each masked at half maximum (FWHM) and measured there.
    ``cad_min_blobness``, ``cad_max_candidates`` (the strongest peaks scored; more
    are reported as a warning), ``cad_rim_hu`` and ``cad_rim_ratio`` (the part-solid
    rule) default to the values of :mod:`overread.models.blob_cad` when unset; set,
    they are in the hash. ``cad_revision`` 2 names the filters and masks as they are
    now (zero-sum second-derivative kernels; masks inside the closed lung with
    vessels opened off); unset, the same code runs (manifests written before keep
    their hash). ``cad_revision`` 3 scores the candidates by the tree ensemble
    ``cad_trees`` (:func:`overread.models.blob_cad.tree_scores`) over the features of
    :data:`overread.models.blob_cad.FEATURES_V3` instead of ``cad_weights`` (then
    empty), looks for candidates inside the lung closed by a ball of
    ``cad_candidate_closing_mm``, and sets the part-solid rim's level against the
    lower of the near and the far background (``blob_cad.fwhm_mask``).
    """

    planar: bool = False
    spacing_mm: tuple[float, float, float] = (2.0, 2.0, 2.0)
    patch_size: tuple[int, int, int] = (64, 96, 96)
    overlap: float = Field(default=0.25, ge=0.0, lt=1.0)
    sigma_scale: float = Field(default=0.125, gt=0.0, le=1.0)
    sw_batch_size: int = Field(default=1, ge=1, le=64)
    postprocess: Literal["none", "lung-nodule", "lung-field", "centre-heatmap", "blob-cad"] = (
        "lung-nodule"
    )
    lung_label: str = "lung"
    nodule_label: str = "nodule"
    centre_label: str | None = None
    size_labels: tuple[str, str, str] | None = None
    max_detections: int = Field(default=20, ge=1, le=200)
    min_nodule_mm: float = Field(default=3.0, ge=0.0)
    max_nodule_mm: float = Field(default=40.0, gt=0.0)
    solid_hu: float = -300.0
    hu_window: tuple[float, float] | None = None
    resample: Literal["antialias", "trilinear"] = "antialias"
    nodule_score: Literal["mean", "max"] = "mean"
    lung_output: Literal["filled-mask", "probability"] = "filled-mask"
    clean_components: bool = False
    lung_keep_fraction: float = Field(default=0.1, gt=0.0, le=1.0)
    nodule_min_volume_mm3: float = Field(default=0.0, ge=0.0)
    nodule_lung_margin_mm: float = Field(default=5.0, ge=0.0)
    lung_refine: Literal["none", "classical"] = "none"
    # The classical lung's bounds: the source edge between aerated lung and soft
    # tissue, airways darker than any aerated lung, radii a few voxels (the balls are
    # built in memory), holes no wider than a chest slice.
    lung_source_hu: float = Field(default=-400.0, ge=-900.0, le=0.0, allow_inf_nan=False)
    airway_hu: float = Field(default=-950.0, ge=-1100.0, le=-900.0, allow_inf_nan=False)
    airway_min_radius_mm: float = Field(default=2.5, gt=0.0, le=20.0, allow_inf_nan=False)
    lung_hole_max_mm2: float = Field(default=1600.0, ge=0.0, le=100000.0, allow_inf_nan=False)
    lung_hole_open_mm: float = Field(default=5.0, gt=0.0, le=20.0, allow_inf_nan=False)
    cad_scales_mm: tuple[float, ...] = DEFAULT_SCALES_MM
    cad_floor: float = Field(default=FLOOR, ge=0.0, allow_inf_nan=False)
    cad_weights: tuple[float, ...] = ()
    cad_revision: Literal[2, 3] | None = None
    cad_trees: tuple[tuple[float, ...], ...] = ()
    cad_candidate_closing_mm: float | None = Field(
        default=None, ge=0.0, le=30.0, allow_inf_nan=False
    )
    cad_min_blobness: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)
    cad_max_candidates: int | None = Field(default=None, ge=1)
    cad_rim_hu: float | None = Field(default=None, allow_inf_nan=False)
    cad_rim_ratio: float | None = Field(default=None, gt=0.0, allow_inf_nan=False)

    @field_validator("hu_window")
    @classmethod
    def _ordered_window(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not value[0] < value[1]:
            raise ValueError("hu_window must be (low, high) with low < high")
        return value

    @field_validator("spacing_mm")
    @classmethod
    def _positive_spacing(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(v <= 0 for v in value):
            raise ValueError("spacing_mm must be positive")
        return value

    @model_validator(mode="after")
    def _classical_lung_applies(self) -> VolumeSpec:
        if self.lung_refine == "classical":
            if self.postprocess not in ("lung-nodule", "blob-cad"):
                raise ValueError(
                    "lung_refine 'classical' needs postprocess 'lung-nodule' or 'blob-cad' "
                    f"(a volumetric lung), not {self.postprocess!r}"
                )
            if self.lung_output != "filled-mask":
                raise ValueError("lung_refine 'classical' needs lung_output 'filled-mask'")
            # A ball below an in-plane step is a line or one voxel (the opening does
            # nothing across the slice); with a coarse slice step it is a disc, which
            # is accepted. One over MAX_BALL_VOXELS of the smallest steps makes the
            # opening slow.
            in_plane = max(self.spacing_mm[1:])
            for name in ("airway_min_radius_mm", "lung_hole_open_mm"):
                radius = float(getattr(self, name))
                if radius < in_plane:
                    raise ValueError(
                        f"{name} {radius:g} mm is below the in-plane grid step of spacing_mm "
                        f"{in_plane:g} mm (the ball would be a line or one voxel)"
                    )
                if radius > MAX_BALL_VOXELS * min(self.spacing_mm):
                    raise ValueError(
                        f"{name} {radius:g} mm is over {MAX_BALL_VOXELS} steps of spacing_mm "
                        f"({MAX_BALL_VOXELS * min(self.spacing_mm):g} mm)"
                    )
        return self

    @field_validator("patch_size")
    @classmethod
    def _positive_patch(cls, value: tuple[int, int, int]) -> tuple[int, int, int]:
        if any(v < 8 for v in value):
            raise ValueError("patch_size must be at least 8 voxels on each axis")
        return value


class Calibration(_Strict):
    """Per-label probability calibration applied to the logits.

    ``temperature``: p = sigmoid(logit / T); ``platt``: p = sigmoid(a * logit + b);
    ``none``: p = sigmoid(logit). Labels missing from ``parameters`` are uncalibrated.
    """

    method: Literal["none", "temperature", "platt"] = "none"
    parameters: dict[str, dict[str, float]] = Field(default_factory=dict)


class RuntimeFiles(_Strict):
    """Files (relative to the package) that the runtimes load."""

    torch_state_dict: str | None = None
    onnx_fp32: str | None = None
    onnx_int8: str | None = None


class Int8Section(_Strict):
    """How the package's INT8 model was quantised, and how far it drifted from FP32.

    Written by exports since the per-node sensitivity search
    (:mod:`overread.models.int8_tuning`); packages without it were quantised with the
    fixed settings of :func:`overread.models.export.quantize_int8` (the same as
    ``exclude == []`` here). ``exclude`` lists the nodes kept in FP32 beyond the
    input convolutions; ``max_prob_diff`` is the largest sigmoid-probability difference
    INT8 vs FP32 measured on the calibration images, ``target`` the drift the search
    aimed for (``None``: no search).
    """

    quant_format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    reduce_range: bool = True
    method: Literal["minmax", "entropy", "percentile"] = "minmax"
    float_input_layer: bool = True
    exclude: list[str] = Field(default_factory=list)
    target: float | None = Field(default=None, ge=0.0, le=1.0)
    calibration: str = ""
    max_prob_diff: float | None = Field(default=None, ge=0.0)
    baseline_max_prob_diff: float | None = Field(default=None, ge=0.0)
    #: The same on the runtime check's two synthetic chests, before calibration.
    runtime_check_max_prob_diff: float | None = Field(default=None, ge=0.0)


class FileEntry(_Strict):
    """A file's size and SHA-256, checked on every load."""

    sha256: str = Field(pattern="^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class Signature(_Strict):
    """Hash of the canonical manifest and, when a key is configured, its HMAC."""

    manifest_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    hmac_sha256: str | None = None


class TtaSettings(_Strict):
    """Test-time augmentation ranges (see :class:`overread.imaging.tta.TestTimeAugmentation`).

    ``horizontal_flip`` is the anatomy setting: a left-right flip is allowed only
    for images whose findings do not depend on the side (off for chest films).
    """

    seed: int = 0
    max_rotate_deg: float = Field(default=5.0, ge=0.0, le=45.0)
    max_scale: float = Field(default=0.05, ge=0.0, lt=1.0)
    max_shift: float = Field(default=0.03, ge=0.0, le=0.5)
    max_gamma: float = Field(default=0.15, ge=0.0, le=2.0)
    max_contrast: float = Field(default=0.1, ge=0.0, lt=1.0)
    horizontal_flip: bool = False


class UncertaintySettings(_Strict):
    """How many probability samples the pipeline draws per image by default.

    ``tta_views`` 1 and ``mc_dropout_passes`` 0 (the defaults) mean one forward pass;
    ``predict --tta N`` / ``--mc-dropout T`` override them per run.
    """

    tta_views: int = Field(default=1, ge=1, le=64)
    mc_dropout_passes: int = Field(default=0, ge=0, le=256)
    tta: TtaSettings = Field(default_factory=TtaSettings)


class ConformalSection(_Strict):
    """Split-conformal quantiles calibrated on a held-out cohort (see
    :mod:`overread.evaluation.conformal`).

    ``quantiles[label]`` holds ``marginal``, ``negative`` and ``positive`` (null: always
    include that class) and the counts ``n``, ``n_negative``, ``n_positive`` they came
    from; ``method`` says which the pipeline uses; ``scores`` records how the
    calibration probabilities were made (TTA views, dropout passes), which the
    pipeline must match for the guarantee to apply.
    """

    alpha: float = Field(gt=0.0, lt=1.0)
    method: Literal["marginal", "class-conditional"] = "class-conditional"
    quantiles: dict[str, dict[str, float | int | None]]
    n: int = Field(ge=1)
    calibration: dict[str, Any] = Field(default_factory=dict)
    scores: dict[str, Any] = Field(default_factory=dict)
    created: str = ""


class EnsembleMember(_Strict):
    """A member package, named by the hash of its manifest (name and version are hints)."""

    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    sha256: str = Field(pattern="^[0-9a-f]{64}$")


class EnsembleSection(_Strict):
    """A deep ensemble: its members' calibrated probabilities are averaged."""

    members: list[EnsembleMember] = Field(min_length=2)
    combine: Literal["mean-probability"] = "mean-probability"


class SourceFormat(StrEnum):
    """The foreign format an onboarded model came in (``overread models package``)."""

    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    MONAI_BUNDLE = "monai-bundle"
    STATE_DICT = "state-dict"


class OutputKind(StrEnum):
    """What a foreign model's raw outputs are; probabilities are turned into logits."""

    LOGITS = "logits"
    PROBABILITIES = "probabilities"


class OnboardedSection(_Strict):
    """Where an onboarded (not overread-trained) model came from and how it was checked.

    ``calibrated`` is false until ``overread models calibrate`` has fitted calibration
    and operating points on a labelled local cohort: until then every threshold is
    0.5 on the model's own probabilities, and results say so. ``source_sha256`` is
    the hash of the file (or bundle weights) it was made from; ``validation`` holds
    what the phantom check measured (output shape and range, runtime agreement).
    """

    format: SourceFormat
    source: str = Field(min_length=1)
    source_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    outputs: OutputKind
    outputs_inferred: bool
    calibrated: bool = False
    layout: str = ""
    validation: dict[str, Any] = Field(default_factory=dict)
    calibration_cohort: dict[str, Any] = Field(default_factory=dict)


class SiteLabelMap(_Strict):
    """One label's recalibration at one site, on the package-calibrated probability.

    ``temperature``: ``p' = sigmoid(logit(p) / temperature)``; ``isotonic``: ``p'`` is
    the piecewise-linear map through the knots (``x`` increasing, clipped at the
    ends). ``operating_points`` are this site's thresholds on ``p'``; ``n`` and
    ``n_positive`` the labelled images it was fitted on; ``ece_before`` /
    ``ece_after`` the expected calibration error of the package's probabilities and
    of cross-validated recalibrated ones on that sample.
    """

    temperature: float | None = Field(default=None, gt=0.0)
    x: list[float] = Field(default_factory=list)
    y: list[float] = Field(default_factory=list)
    operating_points: dict[str, float] = Field(default_factory=dict)
    n: int = Field(ge=0)
    n_positive: int = Field(ge=0)
    ece_before: float | None = None
    ece_after: float | None = None

    @model_validator(mode="after")
    def _one_map(self) -> SiteLabelMap:
        if len(self.x) != len(self.y):
            raise ValueError("isotonic knots need as many x as y")
        if any(b < a for a, b in zip(self.x, self.x[1:], strict=False)):
            raise ValueError("isotonic knots must be increasing in x")
        if any(not 0.0 <= v <= 1.0 for v in (*self.x, *self.y)):
            raise ValueError("isotonic knots must lie in [0, 1]")
        if any(not 0.0 <= t <= 1.0 for t in self.operating_points.values()):
            raise ValueError("site thresholds must lie in [0, 1]")
        return self


class SiteCalibrationEntry(_Strict):
    """The recalibration of one site: fitted labels, and those left on the global one.

    ``fallback[label]`` says why a label keeps the package's global calibration and
    thresholds there (too few images, or too few of one class).
    """

    method: Literal["temperature", "isotonic"]
    labels: dict[str, SiteLabelMap] = Field(default_factory=dict)
    fallback: dict[str, str] = Field(default_factory=dict)
    n: int = Field(ge=0)
    cohort: dict[str, Any] = Field(default_factory=dict)
    created: str = ""


class SiteCalibrationSection(_Strict):
    """Per-site recalibrations (``overread models calibrate --site``), keyed by the
    site's name as the service identifies it (institution, station or calling AE).

    ``min_images`` and ``min_per_class`` are the smallest labelled sample a label
    was fitted from; a site or label below them keeps the global calibration.
    """

    min_images: int = Field(ge=1)
    min_per_class: int = Field(ge=1)
    sites: dict[str, SiteCalibrationEntry] = Field(default_factory=dict)


#: Manifest sections added after format 1 was fixed: left out of the canonical form
#: (and of the file) when absent, so packages written before them keep their hash.
OPTIONAL_SECTIONS = (
    "uncertainty",
    "conformal",
    "ensemble",
    "gate",
    "onboarded",
    "site_calibration",
    "volume",
    "int8",
)

#: The ``architecture`` of an ensemble package (it has no network of its own).
ENSEMBLE_ARCHITECTURE = "ensemble"


class Manifest(_Strict):
    """Everything a deployment needs to know about one model version."""

    format_version: int = FORMAT_VERSION
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    version: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    task: Task = Task.MULTI_LABEL_CLASSIFICATION
    trained: bool = True
    architecture: str = Field(min_length=1)
    arch_kwargs: dict[str, Any] = Field(default_factory=dict)
    accepts: Accepts = Field(default_factory=Accepts)
    gate: GateSpec | None = None
    input: InputSpec
    labels: list[LabelSpec] = Field(min_length=1)
    operating_points: dict[str, dict[str, float]] = Field(default_factory=dict)
    default_operating_point: str = "balanced"
    refer_uncertainty: float = Field(default=0.8, ge=0.0, le=1.0)
    calibration: Calibration = Field(default_factory=Calibration)
    cam: Literal["onnx-output", "none"] = "onnx-output"
    intended_use: str = Field(min_length=1)
    training: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    runtime: RuntimeFiles = Field(default_factory=RuntimeFiles)
    files: dict[str, FileEntry] = Field(default_factory=dict)
    created: str = ""
    uncertainty: UncertaintySettings | None = None
    conformal: ConformalSection | None = None
    ensemble: EnsembleSection | None = None
    onboarded: OnboardedSection | None = None
    site_calibration: SiteCalibrationSection | None = None
    volume: VolumeSpec | None = None
    int8: Int8Section | None = None
    signature: Signature | None = None

    @field_validator("operating_points")
    @classmethod
    def _thresholds_in_unit_interval(
        cls, value: dict[str, dict[str, float]]
    ) -> dict[str, dict[str, float]]:
        for label, points in value.items():
            for point, threshold in points.items():
                if not 0.0 <= threshold <= 1.0:
                    raise ValueError(
                        f"threshold {point!r} of {label!r} is {threshold}, not in [0, 1]"
                    )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        names = [label.name for label in self.labels]
        if len(set(names)) != len(names):
            raise ValueError("label names are not unique")
        unknown = set(self.operating_points) - set(names)
        if unknown:
            raise ValueError(f"operating points for unknown labels: {sorted(unknown)}")
        unknown = set(self.calibration.parameters) - set(names)
        if unknown:
            raise ValueError(f"calibration for unknown labels: {sorted(unknown)}")
        for path in (self.runtime.torch_state_dict, self.runtime.onnx_fp32, self.runtime.onnx_int8):
            if path is not None and path not in self.files:
                raise ValueError(f"runtime file {path!r} has no sha256 entry in 'files'")
        if self.conformal is not None:
            unknown = set(self.conformal.quantiles) - set(names)
            if unknown:
                raise ValueError(f"conformal quantiles for unknown labels: {sorted(unknown)}")
        if self.site_calibration is not None:
            for site, entry in self.site_calibration.sites.items():
                unknown = (set(entry.labels) | set(entry.fallback)) - set(names)
                if unknown:
                    raise ValueError(f"site {site!r} calibrates unknown labels: {sorted(unknown)}")
        if self.ensemble is not None:
            if self.architecture != ENSEMBLE_ARCHITECTURE:
                raise ValueError(f"an ensemble's architecture must be {ENSEMBLE_ARCHITECTURE!r}")
            runtime = self.runtime
            if runtime.torch_state_dict or runtime.onnx_fp32 or runtime.onnx_int8:
                raise ValueError("an ensemble has no runtime files of its own")
            hashes = [m.sha256 for m in self.ensemble.members]
            if len(set(hashes)) != len(hashes):
                raise ValueError("an ensemble names the same member twice")
        elif self.architecture == ENSEMBLE_ARCHITECTURE:
            raise ValueError("architecture 'ensemble' needs an 'ensemble' section")
        if self.volume is not None and self.volume.postprocess == "lung-nodule":
            for needed in (self.volume.lung_label, self.volume.nodule_label):
                if needed not in names:
                    raise ValueError(f"postprocess 'lung-nodule' needs a label {needed!r}")
        if self.volume is not None:
            planar, rule = self.volume.planar, self.volume.postprocess
            if planar and rule in ("lung-nodule", "centre-heatmap", "blob-cad"):
                raise ValueError("a planar package's postprocess is 'none' or 'lung-field'")
            if rule == "lung-field" and not planar:
                raise ValueError("postprocess 'lung-field' is for planar packages")
            if rule == "lung-field" and self.volume.lung_label not in names:
                raise ValueError(
                    f"postprocess 'lung-field' needs a label {self.volume.lung_label!r}"
                )
            if planar and not self.input.chain:
                raise ValueError("a planar package needs the preprocessing chain (input.chain)")
        if self.volume is not None and self.volume.postprocess == "centre-heatmap":
            if self.volume.centre_label is None or self.volume.size_labels is None:
                raise ValueError("postprocess 'centre-heatmap' needs centre_label and size_labels")
            for needed in (self.volume.centre_label, *self.volume.size_labels):
                if needed not in names:
                    raise ValueError(f"postprocess 'centre-heatmap' needs a label {needed!r}")
        if self.volume is not None and self.volume.postprocess == "blob-cad":
            for needed in (self.volume.lung_label, self.volume.nodule_label):
                if needed not in names:
                    raise ValueError(f"postprocess 'blob-cad' needs a label {needed!r}")
            if self.volume.cad_revision == 3 or self.volume.cad_trees:
                if self.volume.cad_revision != 3 or not self.volume.cad_trees:
                    raise ValueError("cad_trees go with cad_revision 3 (and it needs them)")
                check_trees(self.volume.cad_trees, len(FEATURES_V3))
                for key in ("cad_candidate_closing_mm", "cad_max_candidates", "cad_rim_ratio"):
                    if getattr(self.volume, key) is None:
                        raise ValueError(f"cad_revision 3 needs {key}")
            elif self.volume.cad_candidate_closing_mm is not None:
                raise ValueError("cad_candidate_closing_mm is for cad_revision 3")
            elif len(self.volume.cad_weights) != len(FEATURES) + 1:
                raise ValueError(
                    f"postprocess 'blob-cad' needs {len(FEATURES) + 1} cad_weights "
                    "(intercept, then one per feature)"
                )
            elif not all(math.isfinite(w) for w in self.volume.cad_weights):
                raise ValueError("cad_weights: every weight must be a finite number")
            if not self.volume.cad_scales_mm or min(self.volume.cad_scales_mm) <= 0:
                raise ValueError("cad_scales_mm must be positive scales")
        for path in self.files:
            if path.startswith(("/", "\\")) or ".." in path.split("/") or path == MANIFEST_NAME:
                raise ValueError(f"file entry {path!r} is not a plain relative path")
        return self

    @property
    def label_names(self) -> list[str]:
        """Output names in output order."""
        return [label.name for label in self.labels]

    @property
    def calibrated(self) -> bool:
        """False for an onboarded model whose thresholds were never fitted locally."""
        return self.onboarded is None or self.onboarded.calibrated

    @property
    def is_volumetric(self) -> bool:
        """True for a package that reads a series as a volume (its ``volume`` section)."""
        return self.volume is not None

    @property
    def is_ensemble(self) -> bool:
        """True for an ensemble package (members, no network of its own)."""
        return self.ensemble is not None

    def _data(self, *, signature: bool) -> dict[str, Any]:
        data = self.model_dump(mode="json", exclude=None if signature else {"signature"})
        for key in OPTIONAL_SECTIONS:
            if data.get(key) is None:
                data.pop(key, None)
        volume = data.get("volume")
        if isinstance(volume, dict):
            # Added later with these defaults: manifests signed before keep their hash.
            for key, default in (
                ("resample", "antialias"),
                ("nodule_score", "mean"),
                ("lung_output", "filled-mask"),
                ("planar", False),
            ):
                if volume.get(key) == default:
                    volume.pop(key)
            if not volume.get("clean_components"):
                # Component clean-up, added later (off): other manifests keep their hash.
                for key in (
                    "clean_components",
                    "lung_keep_fraction",
                    "nodule_min_volume_mm3",
                    "nodule_lung_margin_mm",
                ):
                    volume.pop(key, None)
            if volume.get("lung_refine", "none") == "none":
                # The classical lung mask, added later (off): other manifests keep their hash.
                for key in LUNG_REFINE_SETTINGS:
                    volume.pop(key, None)
            if volume.get("postprocess") != "centre-heatmap":
                # Detector-only fields, added later: other manifests keep their hash.
                for key in ("centre_label", "size_labels"):
                    volume.pop(key, None)
            if volume.get("postprocess") not in ("centre-heatmap", "blob-cad"):
                volume.pop("max_detections", None)
            if volume.get("postprocess") != "blob-cad":
                # Two-stage CAD fields, added later: other manifests keep their hash.
                for key in (
                    "cad_scales_mm",
                    "cad_floor",
                    "cad_weights",
                    "cad_trees",
                    *CAD_SETTINGS,
                ):
                    volume.pop(key, None)
            else:
                # Added later, unset: manifests written before keep their hash.
                for key in CAD_SETTINGS:
                    if volume.get(key) is None:
                        volume.pop(key, None)
                if not volume.get("cad_trees"):
                    volume.pop("cad_trees", None)
        return data

    def canonical_bytes(self) -> bytes:
        """The manifest without its signature (and without absent optional sections),
        as canonical JSON bytes."""
        data = self._data(signature=False)
        return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def content_sha256(self) -> str:
        """SHA-256 of :meth:`canonical_bytes`: the package's identity."""
        return hashlib.sha256(self.canonical_bytes()).hexdigest()

    def hmac_sha256(self, key: bytes) -> str:
        """HMAC-SHA-256 of :meth:`canonical_bytes` under ``key``."""
        return hmac.new(key, self.canonical_bytes(), hashlib.sha256).hexdigest()

    def signed(self, key: bytes | None = None) -> Manifest:
        """A copy carrying a signature over its current content."""
        signature = Signature(
            manifest_sha256=self.content_sha256(),
            hmac_sha256=self.hmac_sha256(key) if key else None,
        )
        return self.model_copy(update={"signature": signature})

    def to_json(self) -> str:
        """The manifest file's text (indented for people; the hash ignores layout)."""
        return json.dumps(self._data(signature=True), indent=2, ensure_ascii=False) + "\n"


__all__ = [
    "ENSEMBLE_ARCHITECTURE",
    "FORMAT_VERSION",
    "MANIFEST_NAME",
    "MAX_BALL_VOXELS",
    "OPTIONAL_SECTIONS",
    "Accepts",
    "Calibration",
    "Code",
    "ConformalSection",
    "EnsembleMember",
    "EnsembleSection",
    "FileEntry",
    "GateSpec",
    "InputSpec",
    "Int8Section",
    "LabelSpec",
    "Manifest",
    "OnboardedSection",
    "OutputKind",
    "RuntimeFiles",
    "Signature",
    "SiteCalibrationEntry",
    "SiteCalibrationSection",
    "SiteLabelMap",
    "SourceFormat",
    "StatisticSpec",
    "SubspaceSpec",
    "Task",
    "TtaSettings",
    "UncertaintySettings",
]
