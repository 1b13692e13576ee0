"""The typed training configuration, read from TOML.

A run is fully described by one :class:`TrainConfig`; the trainer writes the
resolved version (defaults filled in, paths made absolute) next to its outputs
so that a model can be reproduced from its package alone.
"""

from __future__ import annotations

import math
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from overread.errors import ConfigError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PhantomSource(_Section):
    """A phantom cohort to generate (or reuse when it already exists)."""

    n: int = Field(default=2000, ge=4)
    seed: int = 0
    size: int = Field(default=1024, ge=64, le=3000)  # stored image rows/columns
    workers: int = Field(default=2, ge=1)
    out: Path | None = None  # default: <output>/../phantoms/<name>-n<n>-s<seed>
    # Marginal prevalence overrides ("Fracture" = 0.12), as `phantom cxr --prevalence`:
    # enriches a training cohort in a rare finding; every other label keeps its default.
    prevalence: dict[str, float] = Field(default_factory=dict)

    @field_validator("prevalence")
    @classmethod
    def _known_labels(cls, value: dict[str, float]) -> dict[str, float]:
        from overread.phantom.sampling import validate_prevalence

        validate_prevalence(value)  # one-line error naming an unknown label or a bad value
        return value


class DataConfig(_Section):
    """Where the images and labels come from and how they are split."""

    format: Literal["phantom", "chexpert", "nih", "mimic", "folder"] = "phantom"
    labels_csv: Path | None = None
    # A separate validation label file (CheXpert's valid.csv): the validation set
    # instead of a patient split of labels_csv; split's middle fraction must then be 0.
    valid_csv: Path | None = None
    root: Path | None = None
    # "frontal": leave out lateral views (rows whose view is known to be lateral).
    views: Literal["all", "frontal"] = "all"
    # Labels whose mean AUC is reported beside the all-label mean (CheXpert's five
    # competition labels); each must be one of the data's labels.
    focus_labels: list[str] = Field(default_factory=list)
    phantom: PhantomSource | None = None
    # Held-out test cohort: other patients AND another generator seed.
    test_phantom: PhantomSource | None = None
    policy: str = "u-ignore"
    split: tuple[float, float, float] = (0.7, 0.1, 0.2)
    split_seed: int = 0
    size: int = Field(default=224, ge=16, le=2048)
    channels: Literal[1, 3] = 1
    cache: bool = True
    num_workers: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _source_given(self) -> DataConfig:
        if self.phantom is None and self.labels_csv is None:
            raise ValueError("give either [data.phantom] or data.labels_csv")
        if abs(sum(self.split) - 1.0) > 1e-6 or min(self.split) < 0:
            raise ValueError(f"split fractions must be >= 0 and sum to 1, got {self.split}")
        if self.valid_csv is not None:
            if self.labels_csv is None:
                raise ValueError("data.valid_csv needs data.labels_csv (the training labels)")
            if self.split[1] != 0:
                raise ValueError(
                    "data.valid_csv is the validation set: set split's middle (validation) "
                    f"fraction to 0, got {self.split}"
                )
        return self


class ModelConfig(_Section):
    """The network: an architecture name known to ``overread.models.build_network``."""

    architecture: str = "densenet121"
    kwargs: dict[str, Any] = Field(default_factory=dict)
    init: Path | None = None  # a checkpoint or model package to fine-tune from
    sync_batchnorm: bool = False

    @model_validator(mode="after")
    def _known(self) -> ModelConfig:
        from overread.models import ARCHITECTURES

        if self.architecture not in ARCHITECTURES:
            known = ", ".join(sorted(ARCHITECTURES))
            raise ValueError(f"unknown architecture {self.architecture!r}; known: {known}")
        return self


class OptimConfig(_Section):
    """Optimiser and the two fine-tuning phases."""

    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=1e-4, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    batch_size: int = Field(default=32, ge=1)  # global batch, split over DDP ranks
    epochs: int = Field(default=10, ge=1)
    head_epochs: int = Field(default=0, ge=0)  # phase 1: train the classifier head only
    body_lr_factor: float = Field(default=0.1, gt=0, le=1)  # phase 2 LR relative to lr
    layer_decay: float = Field(default=0.7, gt=0, le=1)  # per-block LR multiplier towards input
    schedule: Literal["cosine", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = Field(default=1.0, ge=0)
    grad_clip: float | None = Field(default=1.0, gt=0)
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"
    # torch.compile of the training forward pass: "gpu" compiles when training on CUDA
    # only, "on" everywhere (needs a C++ compiler on CPU). Off by default: its gain is
    # not measured here.
    compile: Literal["off", "gpu", "on"] = "off"

    @model_validator(mode="after")
    def _phases(self) -> OptimConfig:
        if self.head_epochs >= self.epochs:
            raise ValueError(
                f"head_epochs ({self.head_epochs}) must be smaller than epochs ({self.epochs})"
            )
        return self


class LossConfig(_Section):
    """Loss against class imbalance."""

    kind: Literal["bce", "focal"] = "bce"
    pos_weight: bool = True  # per-class n_neg / n_pos from the training split
    pos_weight_max: float = Field(default=50.0, gt=0)
    focal_gamma: float = Field(default=2.0, ge=0)
    sampler: Literal["shuffle", "class-balanced"] = "shuffle"
    # Per-label loss weight ("Fracture" = 3.0): scales that label's whole loss term;
    # labels not named keep 1. Names are checked against the run's labels.
    label_weights: dict[str, float] = Field(default_factory=dict)

    @field_validator("label_weights")
    @classmethod
    def _positive_weights(cls, value: dict[str, float]) -> dict[str, float]:
        for label, weight in value.items():
            if not math.isfinite(weight) or not 0 < weight <= 100:
                raise ValueError(f"{label} = {weight} is outside (0, 100]")
        return value


class AugmentConfig(_Section):
    """Light geometric and intensity augmentation on batches (seeded per step)."""

    enabled: bool = True
    max_shift: float = Field(default=0.05, ge=0, le=0.5)
    max_rotate_deg: float = Field(default=5.0, ge=0, le=45)
    max_scale: float = Field(default=0.05, ge=0, le=0.5)
    max_gamma: float = Field(default=0.15, ge=0, le=1)


class EarlyStopConfig(_Section):
    """Stop when mean validation AUC has not improved for ``patience`` epochs."""

    patience: int = Field(default=5, ge=1)
    min_delta: float = Field(default=1e-3, ge=0)


class DistillConfig(_Section):
    """Knowledge distillation from a teacher checkpoint or package."""

    teacher: Path
    alpha: float = Field(default=0.5, ge=0, le=1)  # weight of the hard-label loss
    temperature: float = Field(default=2.0, gt=0)


class PruneConfig(_Section):
    """Global magnitude pruning of the trained model, measured (no fine-tuning afterwards)."""

    amounts: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7])
    apply: float | None = None  # amount to keep in the shipped model (None: keep dense)

    @model_validator(mode="after")
    def _fractions(self) -> PruneConfig:
        for a in [*self.amounts, *([self.apply] if self.apply is not None else [])]:
            if not 0.0 < a < 1.0:
                raise ValueError(f"pruning amounts must be in (0, 1), got {a}")
        return self


class HarmonisationConfig(_Section):
    """Harmonisation steps of the imaging chain (:mod:`overread.imaging.transforms.harmonise`).

    Recorded in the package's preprocessing chain, so serving applies exactly
    what training did. ``histogram_match`` fits its reference (the mean quantile
    function) on up to ``reference_images`` training-split images.
    """

    vendor_lut: Literal["file", "ignore"] = "file"
    intensity: Literal["none", "percentile", "zscore", "histogram_match"] = "none"
    clahe: bool = False
    clahe_clip_limit: float = Field(default=2.0, ge=1.0, le=40.0)
    clahe_tiles: int = Field(default=8, ge=1, le=64)
    lower: float = Field(default=1.0, ge=0.0, lt=50.0)
    upper: float = Field(default=99.0, gt=50.0, le=100.0)
    zscore_clip_sigma: float = Field(default=3.0, gt=0.0, le=10.0)
    reference_images: int = Field(default=64, ge=1, le=10000)


class PackageConfig(_Section):
    """The model package written at the end."""

    name: str = "cxr-model"
    version: str = "1.0.0"
    intended_use: str = "Research and demonstration only; not for clinical use."
    export_onnx: bool = True
    # Test-time augmentation views the package asks for by default (1: none); the
    # flip stays off (chest anatomy is not left-right symmetric).
    tta_views: int = Field(default=1, ge=1, le=64)


class TrainConfig(_Section):
    """Everything a training run needs; see docs/training.md for the choices."""

    name: str = "run"
    output: Path = Path("runs/run")
    seed: int = 0
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")
    threads: int | None = Field(default=None, ge=1)
    checkpoint_every: int = Field(default=0, ge=0)  # steps; 0 = only at epoch ends
    log_every: int = Field(default=20, ge=1)
    progress: bool = True
    data: DataConfig
    model: ModelConfig = Field(default_factory=ModelConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    harmonisation: HarmonisationConfig = Field(default_factory=HarmonisationConfig)
    early_stop: EarlyStopConfig = Field(default_factory=EarlyStopConfig)
    distill: DistillConfig | None = None
    prune: PruneConfig | None = None
    package: PackageConfig = Field(default_factory=PackageConfig)


def _format_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_config(data: dict[str, Any], *, source: str = "<config>") -> TrainConfig:
    """Validate a configuration mapping.

    Raises
    ------
    ConfigError
        Naming ``source`` and every invalid field.
    """
    try:
        return TrainConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid training config: {_format_errors(exc)}") from None


def preset_names() -> list[str]:
    """Names of the presets shipped inside the package."""
    folder = resources.files("overread.training").joinpath("presets")
    return sorted(
        p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml")
    )


def preset_text(name: str) -> str:
    """The TOML text of a shipped preset."""
    res = resources.files("overread.training").joinpath("presets", f"{name}.toml")
    if not res.is_file():
        raise ConfigError(f"unknown preset {name!r}; known: {', '.join(preset_names())}")
    return res.read_text(encoding="utf-8")


def load_config(
    path: str | Path | None = None,
    *,
    preset: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> TrainConfig:
    """Read a TOML file or a shipped preset, apply dotted ``overrides``, validate.

    Parameters
    ----------
    path
        A TOML file (relative paths inside it are resolved against its folder).
    preset
        A preset name (see :func:`preset_names`); paths resolve against the
        working directory.
    overrides
        ``{"optim.epochs": 2, "data.phantom.n": 40}``: applied after reading, so a
        preset can be shrunk for a smoke run without editing it.
    """
    if (path is None) == (preset is None):
        raise ConfigError("give exactly one of a config file or a preset")
    if path is not None:
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read config: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file}: cannot read config: not UTF-8 text ({exc})") from None
        source, base = str(file), file.resolve().parent
    else:
        assert preset is not None
        text, source, base = preset_text(preset), f"preset {preset}", Path.cwd()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    for key, value in (overrides or {}).items():
        _set_dotted(data, key, value)
    config = parse_config(data, source=source)
    return resolve_paths(config, base)


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key!r}: {part!r} is not a table")
        node = child
    node[parts[-1]] = value


def resolve_paths(config: TrainConfig, base: Path) -> TrainConfig:
    """Make every relative path absolute against ``base``."""

    def fix(p: Path | None) -> Path | None:
        if p is None:
            return None
        return p if p.is_absolute() else (base / p).resolve()

    out = config.model_copy(deep=True)
    out.output = fix(out.output) or out.output
    out.data.labels_csv = fix(out.data.labels_csv)
    out.data.valid_csv = fix(out.data.valid_csv)
    out.data.root = fix(out.data.root)
    for src in (out.data.phantom, out.data.test_phantom):
        if src is not None:
            src.out = fix(src.out)
    out.model.init = fix(out.model.init)
    if out.distill is not None:
        out.distill.teacher = fix(out.distill.teacher) or out.distill.teacher
    return out


__all__ = [
    "AugmentConfig",
    "DataConfig",
    "DistillConfig",
    "EarlyStopConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "PackageConfig",
    "PhantomSource",
    "PruneConfig",
    "TrainConfig",
    "load_config",
    "parse_config",
    "preset_names",
    "preset_text",
    "resolve_paths",
]
