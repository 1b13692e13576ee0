"""3-D lung and nodule segmentation with a nodule centre-heatmap head, on chest CT.

One MONAI network (UNet or SegResNet) with three sigmoid output channels:

* channel 0: lung (parenchyma, vessels and nodules; not the trachea and main bronchi),
* channel 1: nodule,
* channel 2: nodule-centre heatmap (a Gaussian of sigma = radius / 2 at each centre).

Preprocessing, the same in training and inference: the HU volume ``(slices, rows,
cols)`` is resampled (trilinear) to ``target_spacing`` mm on every axis and HU is
clipped to ``[-1000, 400]`` and mapped linearly to ``[-1, 1]``. Outputs are
resampled back to the input grid. Training samples random patches (a share of
them centred on nodules) from phantom cases rendered in memory; inference is
MONAI's sliding-window inference with Gaussian blending. Detection is peak picking
on the heatmap (3x3x3 local maxima above a floor); a peak's box is the
nodule-channel component that contains it, else a cube of ``default_box_mm``.

The baseline every figure is compared with is a HU threshold (see
:func:`threshold_baseline`).
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from scipy import ndimage

from overread.errors import ConfigError
from overread.models.manifest import InputSpec, Task, VolumeSpec

HU_WINDOW = (-1000.0, 400.0)
CHANNELS = ("lung", "nodule", "nodule-centre")
SIZE_BINS: tuple[tuple[str, float, float], ...] = (
    ("<6 mm", 0.0, 6.0),
    ("6-10 mm", 6.0, 10.0),
    ("10-20 mm", 10.0, 20.0),
    (">=20 mm", 20.0, 1e9),
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CtData(_Section):
    train_n: int = Field(default=24, ge=1)
    train_seed: int = 0
    test_n: int = Field(default=12, ge=1)
    test_seed: int = 1
    size: int = Field(default=128, ge=64, le=1024)
    test_dir: Path | None = None  # default: <output>/test-phantoms (written by phantom ct)


class CtModel(_Section):
    architecture: Literal["unet", "segresnet"] = "unet"
    channels: list[int] = Field(default_factory=lambda: [8, 16, 32, 64])
    target_spacing: float = Field(default=2.5, gt=0.2, le=8.0)
    patch: list[int] = Field(default_factory=lambda: [48, 48, 48])


class CtOptim(_Section):
    loss: Literal["dice", "dicece", "focal", "tversky", "dicefocal"] = "dicece"
    # The nodule channel's own loss (None: ``loss``); Tversky weighs misses over false alarms.
    nodule_loss: Literal["dice", "dicece", "focal", "tversky", "dicefocal"] | None = None
    # Axes (0 slice, 1 row, 2 column) a training patch is flipped along, each with p = 0.5.
    flip_axes: list[int] = Field(default_factory=list)
    iterations: int = Field(default=600, ge=1)
    batch_size: int = Field(default=2, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    nodule_fraction: float = Field(default=0.6, ge=0, le=1)
    heatmap_weight: float = Field(default=0.1, ge=0)

    @field_validator("flip_axes")
    @classmethod
    def _axes(cls, value: list[int]) -> list[int]:
        if any(a not in (0, 1, 2) for a in value) or len(set(value)) != len(value):
            raise ValueError("flip_axes must name distinct axes among 0, 1, 2")
        return value


class CtInference(_Section):
    overlap: float = Field(default=0.25, ge=0, lt=1)
    peak_floor: float = Field(default=0.05, gt=0, lt=1)
    max_detections: int = Field(default=20, ge=1)
    default_box_mm: float = Field(default=6.0, gt=0)
    # The written package's pipeline: nodule mask threshold (operating point) and the
    # nodule score (FROC candidate score) rule.
    nodule_threshold: float = Field(default=0.5, gt=0, lt=1)
    nodule_score: Literal["mean", "max"] = "mean"
    # The written package cleans its masks by 3-D components (the volume section's
    # ``clean_components``): stray lung voxels and nodule specks outside the lungs go.
    # Off unless the config asks (the ct-phantom preset does), so a config written
    # before the option trains the same package as before.
    clean_components: bool = False
    nodule_min_volume_mm3: float = Field(default=0.0, ge=0)

    @model_validator(mode="after")
    def _clean_up_settings_need_clean_up(self) -> CtInference:
        if self.nodule_min_volume_mm3 > 0 and not self.clean_components:
            raise ValueError(
                "nodule_min_volume_mm3 applies only with clean_components = true; set both"
            )
        return self


class CtTrainConfig(_Section):
    kind: Literal["ct-segmentation"] = "ct-segmentation"
    name: str = "ct-phantom"
    output: Path = Path("runs/ct-phantom")
    seed: int = 0
    threads: int = Field(default=2, ge=1)
    log_every: int = Field(default=25, ge=1)
    # Every so many steps the weights so far go to checkpoint-latest.pt (0: never).
    checkpoint_every: int = Field(default=0, ge=0)
    data: CtData = Field(default_factory=CtData)
    model: CtModel = Field(default_factory=CtModel)
    optim: CtOptim = Field(default_factory=CtOptim)
    inference: CtInference = Field(default_factory=CtInference)


def is_ct_config(data: dict[str, Any]) -> bool:
    """Whether a parsed TOML table is a CT segmentation config (``kind = "ct-segmentation"``)."""
    return data.get("kind") == "ct-segmentation"


def ct_toml(path: str | Path | None, preset: str | None) -> dict[str, Any] | None:
    """The TOML table of a config file or preset when it is a CT config, else None."""
    try:
        if preset is not None:
            res = resources.files("overread.training").joinpath("presets", f"{preset}.toml")
            if not res.is_file():
                return None
            data = tomllib.loads(res.read_text(encoding="utf-8"))
        elif path is not None:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        else:
            return None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None  # the classifier loader reports unreadable files
    return data if is_ct_config(data) else None


def parse_ct_config(data: dict[str, Any], overrides: dict[str, Any] | None = None) -> CtTrainConfig:
    """Validate a CT config table after applying dotted overrides."""
    for key, value in (overrides or {}).items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {key!r}: {part!r} is not a table")
            node = child
        node[parts[-1]] = value
    try:
        return CtTrainConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid CT training config: {problems}") from None


# ---- preprocessing --------------------------------------------------------------------------------


def normalise_hu(hu: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Clip HU to the window and map it to [-1, 1]."""
    lo, hi = HU_WINDOW
    out = (np.clip(hu.astype(np.float32), lo, hi) - (lo + hi) / 2) / ((hi - lo) / 2)
    return out.astype(np.float32)


def resampled_shape(
    shape: Sequence[int], spacing: Sequence[float], target: float
) -> tuple[int, int, int]:
    return (
        max(1, round(shape[0] * spacing[0] / target)),
        max(1, round(shape[1] * spacing[1] / target)),
        max(1, round(shape[2] * spacing[2] / target)),
    )


def resize(array: npt.NDArray[Any], shape: Sequence[int]) -> npt.NDArray[np.float32]:
    """Trilinear resize of a ``(z, y, x)`` or ``(c, z, y, x)`` array (half-pixel centres)."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    t = t[None, None] if t.ndim == 3 else t[None]
    out = F.interpolate(t, size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False)
    result: npt.NDArray[np.float32] = out[0, 0].numpy() if array.ndim == 3 else out[0].numpy()
    return result


def to_resampled_index(
    index: Sequence[float], old: Sequence[int], new: Sequence[int]
) -> npt.NDArray[np.float64]:
    """Continuous voxel index on the old grid -> on the resampled grid (half-pixel centres)."""
    i, o, n = np.asarray(index, float), np.asarray(old, float), np.asarray(new, float)
    result: npt.NDArray[np.float64] = (i + 0.5) * n / o - 0.5
    return result


def from_resampled_index(
    index: Sequence[float], old: Sequence[int], new: Sequence[int]
) -> npt.NDArray[np.float64]:
    i, o, n = np.asarray(index, float), np.asarray(old, float), np.asarray(new, float)
    result: npt.NDArray[np.float64] = (i + 0.5) * o / n - 0.5
    return result


def heatmap_target(
    shape: Sequence[int], centres: Sequence[Sequence[float]], radii: Sequence[float]
) -> npt.NDArray[np.float32]:
    """Gaussian peaks (value 1) at ``centres`` (z, y, x voxels), sigma = max(1, radius / 2)."""
    out = np.zeros(tuple(shape), dtype=np.float32)
    for c, r in zip(centres, radii, strict=True):
        sigma = max(1.0, r / 2)
        reach = math.ceil(3 * sigma)
        lo = [max(0, math.floor(c[a]) - reach) for a in range(3)]
        hi = [min(shape[a], math.ceil(c[a]) + reach + 1) for a in range(3)]
        if any(top <= bottom for bottom, top in zip(lo, hi, strict=True)):
            continue
        zz, yy, xx = np.meshgrid(
            *[np.arange(lo[a], hi[a]) for a in range(3)], indexing="ij", sparse=True
        )
        g = np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * sigma**2))
        region = out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        np.maximum(region, g.astype(np.float32), out=region)
        peak = tuple(int(np.clip(round(c[a]), 0, shape[a] - 1)) for a in range(3))
        out[peak] = 1.0  # exactly one positive voxel per nodule for the focal loss
    return out


@dataclass
class TrainingCase:
    """One preprocessed case on the resampled grid: image, targets (3 channels), nodule centres."""

    image: npt.NDArray[np.float32]
    target: npt.NDArray[np.float32]
    nodule_centres: list[tuple[int, int, int]]


def prepare_case(
    hu: npt.NDArray[Any],
    spacing: Sequence[float],
    lung: npt.NDArray[Any],
    nodules: npt.NDArray[Any],
    centres_voxel: Sequence[Sequence[float]],
    diameters_mm: Sequence[float],
    target_spacing: float,
) -> TrainingCase:
    """Resample one case and build its three target channels. Centres are (col, row, slice)."""
    new = resampled_shape(hu.shape, spacing, target_spacing)
    image = normalise_hu(resize(hu, new))
    lung_r = (resize(lung > 0, new) >= 0.5).astype(np.float32)
    nod_r = (resize(nodules > 0, new) >= 0.5).astype(np.float32)
    zyx = [to_resampled_index((c[2], c[1], c[0]), hu.shape, new).tolist() for c in centres_voxel]
    radii = [d / 2 / target_spacing for d in diameters_mm]
    heat = heatmap_target(new, zyx, radii)
    centres = [
        (
            int(np.clip(round(c[0]), 0, new[0] - 1)),
            int(np.clip(round(c[1]), 0, new[1] - 1)),
            int(np.clip(round(c[2]), 0, new[2] - 1)),
        )
        for c in zyx
    ]
    return TrainingCase(image, np.stack([lung_r, nod_r, heat]), centres)


def phantom_training_case(seed: int, index: int, size: int, target_spacing: float) -> TrainingCase:
    """Render a phantom in memory and prepare it."""
    from overread.phantom.ct import make_case

    case = make_case(seed, index, size=size, missing_rate=0.0)
    geo = case.geometry
    truth = case.nodule_truth()
    return prepare_case(
        case.hu,
        (geo.slice_thickness, geo.pixel_spacing, geo.pixel_spacing),
        case.lung,
        case.nodules,
        [n["centre_voxel"] for n in truth],
        [n["diameter_mm"] for n in truth],
        target_spacing,
    )


# ---- network and losses ------------------------------------------------------------------------


def build_ct_network(model: CtModel) -> Any:
    """The 3-channel network of :class:`CtModel` (heatmap logits start near -4, as CenterNet's)."""
    import torch

    net = _network(model)
    last = None
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d) and module.out_channels == len(CHANNELS):
            last = module
    if last is not None and last.bias is not None:
        with torch.no_grad():
            last.bias[2] = -4.0
    return net


ARCHITECTURE_NAMES = {"unet": "ct-unet3d", "segresnet": "ct-segresnet3d"}


def _network(model: CtModel) -> Any:
    from overread.models.networks import build_network

    return build_network(
        ARCHITECTURE_NAMES[model.architecture],
        in_channels=1,
        num_classes=len(CHANNELS),
        channels=list(model.channels),
    )


def segmentation_loss(name: str) -> Callable[[Any, Any], Any]:
    """A MONAI loss on sigmoid outputs (batch-wise Dice so empty patches are well defined)."""
    from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss, TverskyLoss

    if name == "dice":
        return DiceLoss(sigmoid=True, batch=True)  # type: ignore[no-any-return]
    if name == "dicece":
        return DiceCELoss(sigmoid=True, batch=True)  # type: ignore[no-any-return]
    if name == "focal":
        return FocalLoss(gamma=2.0, use_softmax=False)  # type: ignore[no-any-return]
    if name == "tversky":
        return TverskyLoss(sigmoid=True, alpha=0.3, beta=0.7, batch=True)  # type: ignore[no-any-return]
    if name == "dicefocal":
        return DiceFocalLoss(sigmoid=True, batch=True, gamma=2.0)  # type: ignore[no-any-return]
    raise ConfigError(f"unknown loss {name!r}: use dice, dicece, focal, tversky or dicefocal")


def centre_focal_loss(logits: Any, target: Any) -> Any:
    """CenterNet's penalty-reduced focal loss on a Gaussian heatmap, per positive peak."""
    import torch

    p = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = target >= 0.99
    pos_loss = -((1 - p) ** 2) * torch.log(p) * pos
    neg_loss = -((1 - target) ** 4) * (p**2) * torch.log(1 - p) * (~pos)
    n = pos.sum().clamp(min=1)
    return (pos_loss.sum() + neg_loss.sum()) / n


# ---- training ----------------------------------------------------------------------------------


def _crop(
    case: TrainingCase, patch: Sequence[int], rng: np.random.Generator, on_nodule: bool
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    shape = case.image.shape
    pad = [max(0, patch[a] - shape[a]) for a in range(3)]
    image, target = case.image, case.target
    if any(pad):
        width = [(p // 2, p - p // 2) for p in pad]
        image = np.pad(image, width, constant_values=-1.0)
        target = np.pad(target, [(0, 0), *width])
        shape = image.shape
    if on_nodule and case.nodule_centres:
        c = case.nodule_centres[int(rng.integers(len(case.nodule_centres)))]
        c = tuple(c[a] + (pad[a] // 2) for a in range(3))
        start = [
            int(
                np.clip(
                    c[a] - patch[a] // 2 + rng.integers(-patch[a] // 4, patch[a] // 4 + 1),
                    0,
                    shape[a] - patch[a],
                )
            )
            for a in range(3)
        ]
    else:
        start = [int(rng.integers(0, shape[a] - patch[a] + 1)) for a in range(3)]
    sl = tuple(slice(start[a], start[a] + patch[a]) for a in range(3))
    return image[sl], target[(slice(None), *sl)]


def _flip(
    image: npt.NDArray[np.float32],
    target: npt.NDArray[np.float32],
    axes: Sequence[int],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Flip a patch and its targets along each of ``axes`` with probability 0.5."""
    for axis in axes:
        if rng.uniform() < 0.5:
            image = np.flip(image, axis)
            target = np.flip(target, axis + 1)
    return np.ascontiguousarray(image), np.ascontiguousarray(target)


@dataclass
class CtTrainResult:
    output: Path
    checkpoint: Path
    seconds: float
    final_loss: float
    metrics: dict[str, Any] | None = None
    package: Path | None = None


def train_ct(
    cfg: CtTrainConfig,
    *,
    echo: Callable[[str], None] = print,
    cases: Sequence[TrainingCase] | None = None,
) -> tuple[Any, CtTrainResult]:
    """Train the network on phantoms rendered in memory; write ``checkpoint.pt``."""
    import torch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if cases is None:
        echo(f"rendering {cfg.data.train_n} training phantoms (seed {cfg.data.train_seed})")
        cases = [
            phantom_training_case(cfg.data.train_seed, i, cfg.data.size, cfg.model.target_spacing)
            for i in range(cfg.data.train_n)
        ]
    net = build_ct_network(cfg.model)
    seg_loss = segmentation_loss(cfg.optim.loss)
    nodule_loss = segmentation_loss(cfg.optim.nodule_loss or cfg.optim.loss)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.optim.lr, total_steps=cfg.optim.iterations, pct_start=0.1
    )
    with_nodules = [c for c in cases if c.nodule_centres]
    net.train()
    running = 0.0
    seg_run: tuple[float, ...] = (0.0, 0.0)
    for it in range(1, cfg.optim.iterations + 1):
        images, targets = [], []
        for _ in range(cfg.optim.batch_size):
            on_nodule = bool(with_nodules) and rng.uniform() < cfg.optim.nodule_fraction
            pool = with_nodules if on_nodule else cases
            case = pool[int(rng.integers(len(pool)))]
            img, tgt = _crop(case, cfg.model.patch, rng, on_nodule)
            if cfg.optim.flip_axes:
                img, tgt = _flip(img, tgt, cfg.optim.flip_axes, rng)
            images.append(img[None])
            targets.append(tgt)
        x = torch.from_numpy(np.stack(images))
        y = torch.from_numpy(np.stack(targets))
        logits = net(x)
        # Channel by channel: with several channels MONAI's DiceCE uses a softmax cross
        # entropy, which treats overlapping labels (a nodule is also lung) as exclusive.
        seg = seg_loss(logits[:, 0:1], y[:, 0:1]) + nodule_loss(logits[:, 1:2], y[:, 1:2])
        heat = centre_focal_loss(logits[:, 2:], y[:, 2:])
        loss = seg + cfg.optim.heatmap_weight * heat if cfg.optim.heatmap_weight else seg
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        value = float(loss.item())
        running = 0.9 * running + 0.1 * value if it > 1 else value
        parts = (float(seg.item()), float(heat.item()))
        seg_run = (
            parts
            if it == 1
            else tuple(0.9 * a + 0.1 * b for a, b in zip(seg_run, parts, strict=True))
        )
        every = cfg.checkpoint_every
        if every and it % every == 0 and it < cfg.optim.iterations:
            _save(net, cfg, out / "checkpoint-latest.pt")
        if it % cfg.log_every == 0 or it == cfg.optim.iterations:
            echo(
                f"iter {it}/{cfg.optim.iterations} loss {running:.4f} (segmentation "
                f"{seg_run[0]:.4f}, centre {seg_run[1]:.4f}; {time.perf_counter() - start:.0f} s)"
            )
    checkpoint = _save(net, cfg, out / "checkpoint.pt")
    net.eval()
    return net, CtTrainResult(out, checkpoint, time.perf_counter() - start, running)


def _save(net: Any, cfg: CtTrainConfig, path: Path) -> Path:
    import torch

    torch.save({"state_dict": net.state_dict(), "config": json.loads(cfg.model_dump_json())}, path)
    return path


def load_ct_network(checkpoint: str | Path) -> tuple[Any, CtTrainConfig]:
    """A trained network and its config from ``checkpoint.pt``."""
    import torch

    blob = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    cfg = CtTrainConfig.model_validate(blob["config"])
    net = build_ct_network(cfg.model)
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return net, cfg


# ---- model package -----------------------------------------------------------------------------


def ct_inference_settings(cfg: CtTrainConfig) -> dict[str, Any]:
    """What a runtime needs to reproduce :func:`predict_ct` (stored in the manifest)."""
    return {
        "channels": list(CHANNELS),
        "target_spacing_mm": [cfg.model.target_spacing] * 3,
        "hu_window": list(HU_WINDOW),
        "normalisation": "clip HU to hu_window, map linearly to [-1, 1]",
        "output": "sigmoid per channel; lung/nodule mask = probability >= 0.5 after "
        "resampling back to the input grid",
        "sliding_window": {
            "roi": list(cfg.model.patch),
            "overlap": cfg.inference.overlap,
            "mode": "gaussian",
        },
        "peaks": {
            "channel": "nodule-centre",
            "neighbourhood": 3,
            "floor": cfg.inference.peak_floor,
            "max_detections": cfg.inference.max_detections,
            "box": "nodule component containing the peak, else a cube of default_box_mm",
            "default_box_mm": cfg.inference.default_box_mm,
        },
    }


def ct_volume_spec(cfg: CtTrainConfig) -> VolumeSpec:
    """The manifest's ``volume`` section: the volumetric pipeline reads as training did.

    Same spacing, patch, overlap and Gaussian blending as :func:`predict_ct`, the HU
    window mapped to [-1, 1] (:func:`normalise_hu`) and plain trilinear resampling
    (:func:`resize`, no antialiasing).
    """
    from overread.models.manifest import VolumeSpec

    spacing = float(cfg.model.target_spacing)
    patch = cfg.model.patch
    return VolumeSpec(
        spacing_mm=(spacing, spacing, spacing),
        patch_size=(int(patch[0]), int(patch[1]), int(patch[2])),
        overlap=cfg.inference.overlap,
        sw_batch_size=2,
        postprocess="lung-nodule",
        lung_label=CHANNELS[0],
        nodule_label=CHANNELS[1],
        hu_window=HU_WINDOW,
        resample="trilinear",
        nodule_score=cfg.inference.nodule_score,
        # The network calls vessels and nodules lung itself: no slice-wise filling.
        lung_output="probability",
        clean_components=cfg.inference.clean_components,
        nodule_min_volume_mm3=cfg.inference.nodule_min_volume_mm3,
    )


def write_ct_package(
    net: Any,
    cfg: CtTrainConfig,
    out: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    version: str = "0.1.0",
    overwrite: bool = True,
) -> Path:
    """Write the trained network as a model package (task ``segmentation``, no ONNX)."""
    from overread.models.package import write_package

    settings = ct_inference_settings(cfg)
    return write_package(
        out,
        network=net,
        architecture=ARCHITECTURE_NAMES[cfg.model.architecture],
        arch_kwargs={"channels": list(cfg.model.channels)},
        labels=list(CHANNELS),
        input_spec=InputSpec(
            size=cfg.model.patch[-1],
            channels=1,
            chain=[],
            window=f"HU [{HU_WINDOW[0]:g}, {HU_WINDOW[1]:g}]",
            normalisation="[-1, 1] linear in HU over the window; resampled to "
            f"{cfg.model.target_spacing:g} mm isotropic",
        ),
        name=cfg.name,
        version=version,
        intended_use=(
            "Research: 3-D lung and pulmonary nodule segmentation with nodule-centre "
            "detection on chest CT, trained on synthetic phantoms only."
        ),
        operating_points={
            "lung": {"balanced": 0.5},
            "nodule": {"balanced": cfg.inference.nodule_threshold},
            "nodule-centre": {"balanced": cfg.inference.peak_floor},
        },
        accepts={"modalities": ["CT"], "body_parts": ["CHEST"]},
        task=Task.SEGMENTATION,
        training={"ct": settings, "config": json.loads(cfg.model_dump_json())},
        volume=ct_volume_spec(cfg),
        metrics=metrics or {},
        export_onnx=False,
        overwrite=overwrite,
    )


def load_ct_package(path: str | Path) -> tuple[Any, CtTrainConfig]:
    """The network and config of a package written by :func:`write_ct_package`."""
    from overread.models.package import load_package

    package = load_package(path)
    config = package.manifest.training.get("config")
    if package.manifest.training.get("ct") is None or config is None:
        raise ConfigError(f"{path}: not a CT segmentation package")
    return package.build_network(), CtTrainConfig.model_validate(config)


# ---- inference ---------------------------------------------------------------------------------


@dataclass
class Detection:
    """A nodule candidate: centre as (slice, row, col) voxels of the input grid, box, score."""

    centre: tuple[float, float, float]
    box_min: tuple[float, float, float]
    box_max: tuple[float, float, float]
    score: float


@dataclass
class CtPrediction:
    lung: npt.NDArray[np.bool_]
    nodule: npt.NDArray[np.bool_]
    detections: list[Detection]
    probabilities: npt.NDArray[np.float32] | None = None


def predict_ct(
    net: Any,
    hu: npt.NDArray[Any],
    spacing: Sequence[float],
    cfg: CtTrainConfig,
) -> CtPrediction:
    """Segment and detect on one HU volume ``(slices, rows, cols)`` with ``spacing`` (mm)."""
    import torch
    from monai.inferers import sliding_window_inference

    new = resampled_shape(hu.shape, spacing, cfg.model.target_spacing)
    image = normalise_hu(resize(hu, new))
    x = torch.from_numpy(image)[None, None]
    with torch.no_grad():
        logits = sliding_window_inference(
            x,
            roi_size=tuple(cfg.model.patch),
            sw_batch_size=2,
            predictor=net,
            overlap=cfg.inference.overlap,
            mode="gaussian",
            padding_mode="replicate",
        )
        probs = torch.sigmoid(logits)[0].numpy()
    detections = _peaks(probs, hu.shape, cfg.inference, cfg.model.target_spacing, spacing)
    back = resize(probs[:2], hu.shape)
    lung = back[0] >= 0.5
    nodule = back[1] >= 0.5
    return CtPrediction(lung, nodule, detections, probs)


def _peaks(
    probs: npt.NDArray[np.float32],
    old_shape: Sequence[int],
    inf: CtInference,
    target_spacing: float,
    spacing: Sequence[float],
) -> list[Detection]:
    heat = probs[2]
    local = ndimage.maximum_filter(heat, size=3, mode="nearest")
    peaks = np.argwhere((heat == local) & (heat >= inf.peak_floor))
    order = np.argsort(-heat[tuple(peaks.T)])[: inf.max_detections]
    labels, _ = ndimage.label(probs[1] >= 0.5)
    objects = ndimage.find_objects(labels)
    new = probs.shape[1:]
    out: list[Detection] = []
    for i in order:
        p = peaks[i]
        score = float(heat[tuple(p)])
        centre = from_resampled_index(p.astype(float), old_shape, new)
        lab = int(labels[tuple(p)])
        if lab and objects[lab - 1] is not None:
            sl = objects[lab - 1]
            lo_r = [s.start - 0.5 for s in sl]
            hi_r = [s.stop - 0.5 for s in sl]
            lo = from_resampled_index(lo_r, old_shape, new)
            hi = from_resampled_index(hi_r, old_shape, new)
        else:
            half = np.array([inf.default_box_mm / 2 / s for s in spacing])
            lo, hi = centre - half, centre + half
        out.append(
            Detection(
                (float(centre[0]), float(centre[1]), float(centre[2])),
                (float(lo[0]), float(lo[1]), float(lo[2])),
                (float(hi[0]), float(hi[1]), float(hi[2])),
                score,
            )
        )
    return out


# ---- the HU threshold baseline ------------------------------------------------------------------


def threshold_baseline(hu: npt.NDArray[Any], spacing: Sequence[float]) -> CtPrediction:
    """Lung: HU < -400 inside the body, the largest components, holes filled slice by slice.

    Nodules: HU > -700 inside that lung mask (eroded by one voxel), connected
    components no larger than a 32 mm sphere, scored by compactness (volume over
    the volume of the sphere spanning the component's longest box side); the
    nodule mask is the union of components scoring >= 0.3.
    """
    voxel = float(np.prod(spacing))
    body = hu > -500
    for k in range(body.shape[0]):
        lab, n = ndimage.label(body[k])
        if n:
            sizes = ndimage.sum(body[k], lab, range(1, n + 1))
            body[k] = ndimage.binary_fill_holes(lab == (int(np.argmax(sizes)) + 1))
    air = (hu < -400) & body
    lab, n = ndimage.label(air)
    lung = np.zeros(hu.shape, dtype=bool)
    if n:
        sizes = np.asarray(ndimage.sum(air, lab, range(1, n + 1)))
        order = np.argsort(-sizes)
        keep = [order[0]] + [i for i in order[1:2] if sizes[i] >= 0.1 * sizes[order[0]]]
        lung = np.isin(lab, [int(i) + 1 for i in keep])
        for k in range(hu.shape[0]):
            lung[k] = ndimage.binary_fill_holes(lung[k])
    inner = ndimage.binary_erosion(lung, iterations=1)
    dense = (hu > -700) & inner
    lab, n = ndimage.label(dense)
    nodule = np.zeros(hu.shape, dtype=bool)
    detections: list[Detection] = []
    max_volume = math.pi / 6 * 32.0**3
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        comp = lab[sl] == i
        volume = float(comp.sum()) * voxel
        if volume > max_volume:
            continue
        extent = max((s.stop - s.start) * sp for s, sp in zip(sl, spacing, strict=True))
        score = float(min(1.0, volume / (math.pi / 6 * extent**3)))
        centre = [float(v) + s.start for v, s in zip(ndimage.center_of_mass(comp), sl, strict=True)]
        detections.append(
            Detection(
                (centre[0], centre[1], centre[2]),
                (sl[0].start - 0.5, sl[1].start - 0.5, sl[2].start - 0.5),
                (sl[0].stop - 0.5, sl[1].stop - 0.5, sl[2].stop - 0.5),
                score,
            )
        )
        if score >= 0.3:
            nodule[sl] |= comp
    detections.sort(key=lambda d: -d.score)
    return CtPrediction(lung, nodule, detections[:100])


__all__ = [
    "CHANNELS",
    "HU_WINDOW",
    "CtPrediction",
    "CtTrainConfig",
    "Detection",
    "build_ct_network",
    "load_ct_network",
    "normalise_hu",
    "predict_ct",
    "threshold_baseline",
    "train_ct",
]
