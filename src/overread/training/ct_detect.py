"""3-D nodule detection on chest CT with a centre heatmap (CenterNet-style), no torchvision.

A small MONAI 3-D UNet reads the CT at a coarse isotropic spacing and predicts
four channels per voxel:

* channel 0 (``nodule-centre``): a Gaussian heatmap at each nodule's centre
  (sigma = max(1, radius / 2) voxels, peak 1), trained with CenterNet's
  penalty-reduced focal loss;
* channels 1-3 (``size-slice``, ``size-row``, ``size-column``): the nodule's box
  size along each axis as a fraction of ``max_size_mm`` (sigmoid), trained with an
  L1 loss near the centres (where the heatmap target reaches 0.3).

Detections are the heatmap's local maxima (3x3x3 max-pooling NMS) above a floor,
each with the box of its predicted size (:func:`overread.models.centre_heatmap.decode_peaks`).
Preprocessing is that of :mod:`overread.training.ct` (trilinear resampling, HU
window [-1000, 400] to [-1, 1]); the package's ``volume`` section says so, and
its ``postprocess`` is ``centre-heatmap``: the volumetric pipeline decodes the
same peaks and measures each nodule on the source grid.
"""

from __future__ import annotations

import json
import math
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from overread.errors import ConfigError
from overread.models.manifest import Code, InputSpec, LabelSpec, Task, VolumeSpec
from overread.training.ct import (
    HU_WINDOW,
    CtPrediction,
    CtTrainResult,
    Detection,
    centre_focal_loss,
    from_resampled_index,
    normalise_hu,
    resampled_shape,
    resize,
    to_resampled_index,
)

KIND = "ct-detection"
CHANNELS = ("nodule-centre", "size-slice", "size-row", "size-column")
NODULE_CODES = [Code(scheme="SCT", value="27925004", meaning="Nodule")]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DetData(_Section):
    train_n: int = Field(default=48, ge=1)
    train_seed: int = 0
    test_n: int = Field(default=12, ge=1)
    test_seed: int = 1
    size: int = Field(default=128, ge=64, le=1024)
    test_dir: Path | None = None  # default: <output>/test-phantoms


class DetModel(_Section):
    channels: list[int] = Field(default_factory=lambda: [8, 16, 32, 64])
    target_spacing: float = Field(default=3.0, gt=0.2, le=8.0)
    patch: list[int] = Field(default_factory=lambda: [32, 48, 48])
    max_size_mm: float = Field(default=40.0, gt=0)


class DetOptim(_Section):
    iterations: int = Field(default=600, ge=1)
    batch_size: int = Field(default=4, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    nodule_fraction: float = Field(default=0.6, ge=0, le=1)
    size_weight: float = Field(default=5.0, ge=0)
    flips: bool = True
    # Share of patches centred on a vessel-like voxel (lung, at least VESSEL_HU, away from
    # any nodule): hard negatives for the bright branchings the heatmap mistakes for nodules.
    hard_negative_fraction: float = Field(default=0.0, ge=0, le=1)
    # Share of the steps the one-cycle learning rate spends warming up.
    warmup: float = Field(default=0.1, gt=0, lt=1)
    # Start from a trained detector: a checkpoint.pt, a run folder holding one, or a package.
    init: Path | None = None

    @model_validator(mode="after")
    def _shares(self) -> DetOptim:
        if self.nodule_fraction + self.hard_negative_fraction > 1 + 1e-9:
            raise ValueError("nodule_fraction + hard_negative_fraction must be at most 1")
        return self


class DetInference(_Section):
    overlap: float = Field(default=0.25, ge=0, lt=1)
    peak_floor: float = Field(default=0.05, gt=0, lt=1)
    max_detections: int = Field(default=20, ge=1)
    min_size_mm: float = Field(default=3.0, ge=0)


class CtDetectConfig(_Section):
    kind: Literal["ct-detection"] = "ct-detection"
    name: str = "ct-nodule-detection"
    output: Path = Path("runs/ct-nodule-detection")
    seed: int = 0
    threads: int = Field(default=2, ge=1)
    log_every: int = Field(default=25, ge=1)
    data: DetData = Field(default_factory=DetData)
    model: DetModel = Field(default_factory=DetModel)
    optim: DetOptim = Field(default_factory=DetOptim)
    inference: DetInference = Field(default_factory=DetInference)


def detection_toml(path: str | Path | None, preset: str | None) -> dict[str, Any] | None:
    """The TOML table of a config file or preset when it is a detection config, else None."""
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
        return None
    return data if data.get("kind") == KIND else None


def parse_detection_config(
    data: dict[str, Any], overrides: dict[str, Any] | None = None
) -> CtDetectConfig:
    """Validate a detection config table after applying dotted overrides."""
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
        return CtDetectConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid CT detection config: {problems}") from None


# ---- targets -------------------------------------------------------------------------------------


@dataclass
class DetectionCase:
    """One case on the network's grid: image, heatmap, size targets (fraction), centres."""

    image: npt.NDArray[np.float32]
    heat: npt.NDArray[np.float32]
    size: npt.NDArray[np.float32]
    centres: list[tuple[int, int, int]]
    negatives: list[tuple[int, int, int]] = field(default_factory=list)


#: HU from which a lung voxel away from the nodules is a hard-negative centre (vessels).
VESSEL_HU = -400.0
#: Heatmap value under which a voxel counts as away from every nodule.
AWAY_FROM_NODULES = 0.01


def hard_negative_centres(
    image: npt.NDArray[np.float32],
    lung: npt.NDArray[np.bool_],
    heat: npt.NDArray[np.float32],
    *,
    limit: int = 512,
    seed: int = 0,
) -> list[tuple[int, int, int]]:
    """Vessel-like voxels: inside the lung, at least ``VESSEL_HU``, where the heatmap is ~0.

    ``image`` is normalised HU (:func:`normalise_hu`); at most ``limit`` of them, drawn
    with ``seed``.
    """
    bright = normalise_hu(np.array(VESSEL_HU))
    where = np.argwhere(lung & (image >= bright) & (heat < AWAY_FROM_NODULES))
    if len(where) > limit:
        where = where[np.random.default_rng(seed).choice(len(where), limit, replace=False)]
    return [(int(z), int(y), int(x)) for z, y, x in where]


def detection_targets(
    shape: Sequence[int],
    centres: Sequence[Sequence[float]],
    diameters_vox: Sequence[float],
    sizes: Sequence[float],
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Heatmap (peak 1 at each centre) and a size map (the nearest-centre nodule's size)."""
    heat = np.zeros(tuple(shape), dtype=np.float32)
    size = np.zeros((3, *shape), dtype=np.float32)
    owner = np.zeros(tuple(shape), dtype=np.float32)
    for c, dv, s in zip(centres, diameters_vox, sizes, strict=True):
        sigma = max(1.0, dv / 4)
        reach = math.ceil(3 * sigma)
        lo = [max(0, math.floor(c[a]) - reach) for a in range(3)]
        hi = [min(shape[a], math.ceil(c[a]) + reach + 1) for a in range(3)]
        if any(top <= bottom for bottom, top in zip(lo, hi, strict=True)):
            continue
        zz, yy, xx = np.meshgrid(
            *[np.arange(lo[a], hi[a]) for a in range(3)], indexing="ij", sparse=True
        )
        g = np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * sigma**2))
        g = g.astype(np.float32)
        sl = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
        better = g > owner[sl]
        owner[sl] = np.where(better, g, owner[sl])
        for a in range(3):
            size[a][sl] = np.where(better, np.float32(s), size[a][sl])
        np.maximum(heat[sl], g, out=heat[sl])
        peak = tuple(int(np.clip(round(c[a]), 0, shape[a] - 1)) for a in range(3))
        heat[peak] = 1.0
    return heat, size


def phantom_detection_case(seed: int, index: int, size: int, model: DetModel) -> DetectionCase:
    """Render a phantom in memory and build its targets on the network's grid."""
    from overread.phantom.ct import make_case

    case = make_case(seed, index, size=size, missing_rate=0.0)
    geo = case.geometry
    spacing = (geo.slice_thickness, geo.pixel_spacing, geo.pixel_spacing)
    new = resampled_shape(case.hu.shape, spacing, model.target_spacing)
    image = normalise_hu(resize(case.hu, new))
    truth = case.nodule_truth()
    zyx = [
        to_resampled_index(
            (n["centre_voxel"][2], n["centre_voxel"][1], n["centre_voxel"][0]), case.hu.shape, new
        ).tolist()
        for n in truth
    ]
    diam_vox = [n["diameter_mm"] / model.target_spacing for n in truth]
    fractions = [min(1.0, n["diameter_mm"] / model.max_size_mm) for n in truth]
    heat, sizes = detection_targets(new, zyx, diam_vox, fractions)
    centres = [tuple(int(np.clip(round(c[a]), 0, new[a] - 1)) for a in range(3)) for c in zyx]
    lung = resize(case.lung.astype(np.float32), new) >= 0.5
    negatives = hard_negative_centres(image, lung, heat, seed=seed * 100_003 + index)
    return DetectionCase(image, heat, sizes, centres, negatives)  # type: ignore[arg-type]


# ---- network and training -----------------------------------------------------------------------


def build_detection_network(model: DetModel) -> Any:
    """The 4-channel UNet (heatmap logits start near -4, as CenterNet's)."""
    import torch

    from overread.models.networks import build_network

    net = build_network(
        "ct-unet3d", in_channels=1, num_classes=len(CHANNELS), channels=list(model.channels)
    )
    last = None
    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d | torch.nn.ConvTranspose3d) and (
            module.out_channels == len(CHANNELS)
        ):
            last = module
    if last is not None and last.bias is not None:
        with torch.no_grad():
            last.bias[0] = -4.0
    return net


def _crop(
    case: DetectionCase,
    patch: Sequence[int],
    rng: np.random.Generator,
    on_nodule: bool,
    around: Sequence[tuple[int, int, int]] | None = None,
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """A patch of image and targets (4 channels: heat, 3 sizes), padded when the case is small.

    ``on_nodule``: centred (with a random shift of up to a third of the patch) near one of
    ``around`` (default: the case's nodule centres).
    """
    stacked = np.concatenate([case.image[None], case.heat[None], case.size])
    shape = stacked.shape[1:]
    pad = [max(0, patch[a] - shape[a]) for a in range(3)]
    if any(pad):
        width = [(p // 2, p - p // 2) for p in pad]
        image = np.pad(stacked[0], width, constant_values=-1.0)
        rest = np.pad(stacked[1:], [(0, 0), *width])
        stacked = np.concatenate([image[None], rest])
        shape = stacked.shape[1:]
    anchors = case.centres if around is None else around
    if on_nodule and anchors:
        c = anchors[int(rng.integers(len(anchors)))]
        start = [
            int(
                np.clip(
                    c[a]
                    + pad[a] // 2
                    - patch[a] // 2
                    + rng.integers(-patch[a] // 3, patch[a] // 3 + 1),
                    0,
                    shape[a] - patch[a],
                )
            )
            for a in range(3)
        ]
    else:
        start = [int(rng.integers(0, shape[a] - patch[a] + 1)) for a in range(3)]
    sl = (slice(None), *(slice(start[a], start[a] + patch[a]) for a in range(3)))
    out = stacked[sl]
    return out[0], out[1:]


def _flip(
    image: npt.NDArray[np.float32], target: npt.NDArray[np.float32], rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    for axis in range(3):
        if rng.uniform() < 0.5:
            image = np.flip(image, axis)
            target = np.flip(target, axis + 1)
    return np.ascontiguousarray(image), np.ascontiguousarray(target)


def detection_loss(logits: Any, target: Any, size_weight: float) -> tuple[Any, Any]:
    """(focal heatmap loss, L1 size loss near the centres)."""
    import torch

    heat = centre_focal_loss(logits[:, 0:1], target[:, 0:1])
    near = (target[:, 0:1] >= 0.3).float()
    pred = torch.sigmoid(logits[:, 1:4])
    l1 = (torch.abs(pred - target[:, 1:4]) * near).sum() / (3 * near.sum()).clamp(min=1)
    return heat, size_weight * l1


#: What a detector training run leaves (the same as a segmentation run).
DetTrainResult = CtTrainResult


def train_detector(
    cfg: CtDetectConfig,
    *,
    echo: Callable[[str], None] = print,
    cases: Sequence[DetectionCase] | None = None,
) -> tuple[Any, DetTrainResult]:
    """Train on phantoms rendered in memory; write ``checkpoint.pt``."""
    import torch

    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    initial = _initial_weights(cfg.optim.init, cfg.model) if cfg.optim.init is not None else None
    if cases is None:
        echo(f"rendering {cfg.data.train_n} training phantoms (seed {cfg.data.train_seed})")
        cases = [
            phantom_detection_case(cfg.data.train_seed, i, cfg.data.size, cfg.model)
            for i in range(cfg.data.train_n)
        ]
    net = build_detection_network(cfg.model)
    if initial is not None:
        try:
            net.load_state_dict(initial)
        except RuntimeError:
            raise ConfigError(
                f"optim.init: {cfg.optim.init}: weights do not fit model.channels"
            ) from None
        echo(f"starting from {cfg.optim.init}")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.optim.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.optim.lr, total_steps=cfg.optim.iterations, pct_start=cfg.optim.warmup
    )
    with_nodules = [c for c in cases if c.centres]
    hard_share = cfg.optim.hard_negative_fraction
    with_negatives = [c for c in cases if c.negatives] if hard_share > 0 else []
    net.train()
    running = (0.0, 0.0)
    for it in range(1, cfg.optim.iterations + 1):
        images, targets = [], []
        for _ in range(cfg.optim.batch_size):
            draw = rng.uniform() if with_nodules or with_negatives else 1.0
            on_nodule = bool(with_nodules) and draw < cfg.optim.nodule_fraction
            nf = cfg.optim.nodule_fraction
            hard = bool(with_negatives) and nf <= draw < nf + hard_share  # never on_nodule
            pool = with_nodules if on_nodule else with_negatives if hard else cases
            case = pool[int(rng.integers(len(pool)))]
            around = case.negatives if hard else None
            img, tgt = _crop(case, cfg.model.patch, rng, on_nodule or hard, around)
            if cfg.optim.flips:
                img, tgt = _flip(img, tgt, rng)
            images.append(img[None])
            targets.append(tgt)
        x = torch.from_numpy(np.stack(images))
        y = torch.from_numpy(np.stack(targets))
        heat, size = detection_loss(net(x), y, cfg.optim.size_weight)
        loss = heat + size
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
        opt.step()
        sched.step()
        parts = (float(heat.item()), float(size.item()))
        running = (
            parts
            if it == 1
            else (0.9 * running[0] + 0.1 * parts[0], 0.9 * running[1] + 0.1 * parts[1])
        )
        if it % (cfg.log_every * 4) == 0 and it < cfg.optim.iterations:
            _save(net, cfg, out / "checkpoint.pt")  # an interrupted run leaves its latest weights
        if it % cfg.log_every == 0 or it == cfg.optim.iterations:
            echo(
                f"iter {it}/{cfg.optim.iterations} centre {running[0]:.4f} size "
                f"{running[1]:.4f} ({time.perf_counter() - start:.0f} s)"
            )
    checkpoint = out / "checkpoint.pt"
    _save(net, cfg, checkpoint)
    net.eval()
    return net, DetTrainResult(out, checkpoint, time.perf_counter() - start, sum(running))


def _initial_weights(path: Path, model: DetModel) -> dict[str, Any]:
    """The state dict of a checkpoint.pt, a run folder holding one, or a detection
    package's model.pt, refused (one line naming the setting) when it was trained for
    another grid or box scale than ``model``: the weights would load, but the heatmap
    and the size head would mean something else."""
    import torch

    path = Path(path)
    candidates = [path] if path.is_file() else [path / "checkpoint.pt", path / "model.pt"]
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(f"optim.init: {path}: no checkpoint.pt or model.pt there")
    try:
        blob = torch.load(str(found), map_location="cpu", weights_only=True)
    except Exception as exc:  # any unreadable file is the same user error
        raise ConfigError(f"optim.init: {found}: not a detector checkpoint ({exc})") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict):
        raise ConfigError(f"optim.init: {found}: not a detector checkpoint")
    trained = _trained_for(found, blob)
    wanted = {
        "target_spacing": float(model.target_spacing),
        "max_size_mm": float(model.max_size_mm),
    }
    for key, value in wanted.items():
        if key in trained and abs(float(trained[key]) - value) > 1e-6:
            raise ConfigError(
                f"optim.init: {found}: trained with model.{key} = {trained[key]:g}, "
                f"this run has {value:g}"
            )
    return state


def _trained_for(found: Path, blob: Any) -> dict[str, float]:
    """The grid and box scale a checkpoint (its saved config) or a package (its
    manifest's volume section) was trained for; refuses a package that is not a
    centre-heatmap detector."""
    if isinstance(blob, dict) and isinstance(blob.get("config"), dict):
        model = blob["config"].get("model") or {}
        return {k: float(model[k]) for k in ("target_spacing", "max_size_mm") if k in model}
    manifest = found.parent / "manifest.json"
    if not manifest.is_file():
        return {}
    try:
        volume = json.loads(manifest.read_text()).get("volume") or {}
    except (OSError, ValueError):
        raise ConfigError(f"optim.init: {manifest}: unreadable manifest") from None
    if volume.get("postprocess") != "centre-heatmap":
        raise ConfigError(
            f"optim.init: {found.parent}: not a detection package "
            f"(postprocess {volume.get('postprocess')!r}, not 'centre-heatmap')"
        )
    found_for: dict[str, float] = {}
    spacing = volume.get("spacing_mm") or []
    if spacing:
        found_for["target_spacing"] = float(spacing[0])
    if "max_nodule_mm" in volume:
        found_for["max_size_mm"] = float(volume["max_nodule_mm"])
    return found_for


def _save(net: Any, cfg: CtDetectConfig, path: Path) -> None:
    import torch

    torch.save({"state_dict": net.state_dict(), "config": json.loads(cfg.model_dump_json())}, path)


def load_detector(checkpoint: str | Path) -> tuple[Any, CtDetectConfig]:
    """A trained detector and its config from ``checkpoint.pt``."""
    import torch

    blob = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    cfg = CtDetectConfig.model_validate(blob["config"])
    net = build_detection_network(cfg.model)
    net.load_state_dict(blob["state_dict"])
    net.eval()
    return net, cfg


# ---- inference (as the pipeline does it) ---------------------------------------------------------


def detection_volume_spec(cfg: CtDetectConfig) -> VolumeSpec:
    """The package's ``volume`` section: training's preprocessing, ``centre-heatmap`` decoding."""
    s = float(cfg.model.target_spacing)
    p = cfg.model.patch
    return VolumeSpec(
        spacing_mm=(s, s, s),
        patch_size=(int(p[0]), int(p[1]), int(p[2])),
        overlap=cfg.inference.overlap,
        sw_batch_size=2,
        postprocess="centre-heatmap",
        nodule_label="nodule",
        centre_label=CHANNELS[0],
        size_labels=(CHANNELS[1], CHANNELS[2], CHANNELS[3]),
        max_detections=cfg.inference.max_detections,
        min_nodule_mm=cfg.inference.min_size_mm,
        max_nodule_mm=cfg.model.max_size_mm,
        hu_window=HU_WINDOW,
        resample="trilinear",
    )


def predict_detections(
    net: Any, hu: npt.NDArray[Any], spacing: Sequence[float], cfg: CtDetectConfig
) -> CtPrediction:
    """Detections on one HU volume ``(slices, rows, cols)`` (boxes on the input grid)."""
    import torch
    from monai.inferers import sliding_window_inference

    from overread.models.centre_heatmap import decode_peaks

    new = resampled_shape(hu.shape, spacing, cfg.model.target_spacing)
    x = torch.from_numpy(normalise_hu(resize(hu, new)))[None, None]
    roi = tuple(min(p, n) for p, n in zip(cfg.model.patch, new, strict=True))
    with torch.inference_mode():
        logits = sliding_window_inference(
            x,
            roi_size=roi,
            sw_batch_size=2,
            predictor=net,
            overlap=cfg.inference.overlap,
            mode="gaussian",
            padding_mode="replicate",
        )
        probs = torch.sigmoid(logits)[0].numpy()
    step = [cfg.model.target_spacing] * 3
    peaks = decode_peaks(
        probs[0],
        probs[1:4],
        step,
        floor=cfg.inference.peak_floor,
        max_detections=cfg.inference.max_detections,
        max_size_mm=cfg.model.max_size_mm,
        min_size_mm=cfg.inference.min_size_mm,
    )
    detections = []
    for peak in peaks:
        centre = from_resampled_index(peak.centre, hu.shape, new)
        half = np.array(peak.size_mm) / 2 / np.asarray(spacing, dtype=float)
        lo, hi = centre - half, centre + half
        detections.append(
            Detection(
                (float(centre[0]), float(centre[1]), float(centre[2])),
                (float(lo[0]), float(lo[1]), float(lo[2])),
                (float(hi[0]), float(hi[1]), float(hi[2])),
                peak.score,
            )
        )
    empty = np.zeros(hu.shape, dtype=bool)
    return CtPrediction(empty, empty, detections)


# ---- package -------------------------------------------------------------------------------------


def write_detection_package(
    net: Any,
    cfg: CtDetectConfig,
    out: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    version: str = "0.1.0",
    overwrite: bool = True,
) -> Path:
    """Write the trained detector as a model package (task ``detection``, no ONNX)."""
    from overread.models.package import write_package

    labels: list[str | LabelSpec] = [
        LabelSpec(name=CHANNELS[0], codes=NODULE_CODES),
        *CHANNELS[1:],
    ]
    return write_package(
        out,
        network=net,
        architecture="ct-unet3d",
        arch_kwargs={"channels": list(cfg.model.channels)},
        labels=labels,
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
            "Research: pulmonary nodule detection (boxes and scores) on chest CT by a "
            "centre-heatmap network, trained on synthetic phantoms only."
        ),
        operating_points={
            CHANNELS[0]: {"balanced": cfg.inference.peak_floor},
            **{c: {"balanced": 0.5} for c in CHANNELS[1:]},
        },
        accepts={"modalities": ["CT"], "body_parts": ["CHEST"]},
        task=Task.DETECTION,
        training={"ct_detection": True, "config": json.loads(cfg.model_dump_json())},
        volume=detection_volume_spec(cfg),
        metrics=metrics or {},
        export_onnx=False,
        overwrite=overwrite,
    )


def run_detection_training(
    cfg: CtDetectConfig, *, echo: Callable[[str], None] = print
) -> DetTrainResult:
    """Train, write the package, evaluate it and the HU threshold on the held-out cohort."""
    from overread.phantom.ct import write_ct_cohort
    from overread.training.ct import threshold_baseline
    from overread.training.ct_eval import evaluate_cohort

    net, result = train_detector(cfg, echo=echo)
    echo(f"trained in {result.seconds:.0f} s; checkpoint {result.checkpoint}")
    out = Path(cfg.output)
    test_dir = cfg.data.test_dir or (out / "test-phantoms")
    if not (test_dir / "cases.json").is_file():
        echo(
            f"writing {cfg.data.test_n} held-out phantoms (seed {cfg.data.test_seed}) to {test_dir}"
        )
        write_ct_cohort(test_dir, cfg.data.test_n, cfg.data.test_seed, size=cfg.data.size)

    def model(hu: npt.NDArray[np.float32], spacing: tuple[float, float, float]) -> CtPrediction:
        return predict_detections(net, hu, spacing, cfg)

    echo("evaluating the detector")
    metrics = evaluate_cohort(test_dir, model, echo=echo)
    echo("evaluating the HU threshold")
    baseline = evaluate_cohort(test_dir, threshold_baseline, echo=echo)
    summary: dict[str, Any] = {
        "model": {k: metrics[k] for k in ("detection", "by_size", "by_density", "nodules")},
        "threshold": {k: baseline[k] for k in ("detection", "by_size", "by_density", "nodules")},
        "test_dir": str(test_dir),
        "train_seconds": round(result.seconds, 1),
    }
    result.metrics = summary
    (out / "metrics.json").write_text(json.dumps(summary, indent=1) + "\n")
    result.package = write_detection_package(net, cfg, out / "package", metrics=summary)
    md = detection_table(metrics, baseline)
    (out / "report.md").write_text(md)
    echo(md)
    return result


def detection_table(model: dict[str, Any], baseline: dict[str, Any]) -> str:
    """Sensitivity at 1 FP/scan and CPM of the detector and the HU threshold, by group."""

    def fmt(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = [
        "| Group (n) | Detector sens@1FP / CPM | HU threshold sens@1FP / CPM |",
        "|---|---|---|",
    ]
    d, b = model["detection"], baseline["detection"]
    lines.append(
        f"| all ({model.get('nodules')}) | {fmt(d.get('sensitivity_at_1fp'))} / {fmt(d.get('cpm'))} "
        f"| {fmt(b.get('sensitivity_at_1fp'))} / {fmt(b.get('cpm'))} |"
    )
    for group in ("by_size", "by_density"):
        for name, block in model[group].items():
            base = baseline[group][name]
            lines.append(
                f"| {name} ({block.get('nodules', 0)}) | {fmt(block.get('sensitivity_at_1fp'))} / "
                f"{fmt(block.get('cpm'))} | {fmt(base.get('sensitivity_at_1fp'))} / "
                f"{fmt(base.get('cpm'))} |"
            )
    return "\n".join(lines) + "\n"


__all__ = [
    "CHANNELS",
    "CtDetectConfig",
    "build_detection_network",
    "detection_toml",
    "parse_detection_config",
    "predict_detections",
    "run_detection_training",
    "train_detector",
    "write_detection_package",
]
