"""2-D lung-field segmentation on chest radiographs (``kind = "cxr-segmentation"``).

One MONAI UNet (2-D) with one sigmoid output channel, ``lung-field``: the visible
lung fields of a frontal chest radiograph (the hemithoraces without the heart and
mediastinum), as the phantom draws them (``masks/.../lung_field.png``).

Preprocessing is the package's own chain, the same in training and inference: the
chest X-ray chain of the classifiers (first frame, grey, the file's VOI window or
the 0.5-99.5 percentile window to [0, 1], MONOCHROME1 inverted, letterboxed to
``size`` pixels a side). Training reads a phantom cohort written to disk (DICOM, so
the pixels go through exactly the reader and chain that serving uses) and tests
on a cohort of another seed (other patients). The package it writes is a planar
segmentation package (manifest ``volume.planar``): the pipeline brings the mask
back to the source image's grid and writes a DICOM SEG.
"""

from __future__ import annotations

import json
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from overread.errors import ConfigError, EvaluationError, OverreadError
from overread.models.manifest import Code, InputSpec, LabelSpec, Task, VolumeSpec

LABEL = "lung-field"
ARCHITECTURE = "cxr-unet2d"
#: SNOMED CT "Lung" (the segmented property of the lung-field segment).
LUNG_CODE = Code(scheme="SCT", value="39607008", meaning="Lung")

Echo = Callable[[str], Any]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SegData(_Section):
    train_n: int = Field(default=400, ge=2)
    train_seed: int = 0
    test_n: int = Field(default=60, ge=1)
    test_seed: int = 1
    image_size: int = Field(default=256, ge=64, le=3000)  # phantom rows and columns
    train_dir: Path | None = None  # default: <output>/train-phantoms
    test_dir: Path | None = None  # default: <output>/test-phantoms


class SegModel(_Section):
    channels: list[int] = Field(default_factory=lambda: [8, 16, 32, 64])
    size: int = Field(default=128, ge=32, le=1024)
    num_res_units: int = Field(default=1, ge=0, le=4)
    init: Path | None = None  # start from these weights (a package or its model.pt)


class SegOptim(_Section):
    loss: Literal["dice", "dicece"] = "dicece"
    epochs: int = Field(default=6, ge=1)
    batch_size: int = Field(default=8, ge=1)
    lr: float = Field(default=3e-3, gt=0)
    shift: int = Field(default=6, ge=0)  # random translation, model pixels
    intensity: float = Field(default=0.25, ge=0, le=1)  # random gamma / contrast strength


class CxrSegConfig(_Section):
    kind: Literal["cxr-segmentation"] = "cxr-segmentation"
    name: str = "cxr-lung-seg"
    version: str = "0.1.0"
    output: Path = Path("runs/cxr-lung-seg")
    seed: int = 0
    threads: int = Field(default=2, ge=1)
    log_every: int = Field(default=20, ge=1)
    data: SegData = Field(default_factory=SegData)
    model: SegModel = Field(default_factory=SegModel)
    optim: SegOptim = Field(default_factory=SegOptim)


def is_seg_config(data: dict[str, Any]) -> bool:
    """Whether a parsed TOML table is a chest X-ray segmentation config."""
    return data.get("kind") == "cxr-segmentation"


def seg_toml(path: str | Path | None, preset: str | None) -> dict[str, Any] | None:
    """The TOML table of a config file or preset when it is a CXR segmentation config."""
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
    return data if is_seg_config(data) else None


def parse_seg_config(data: dict[str, Any], overrides: dict[str, Any] | None = None) -> CxrSegConfig:
    """Validate a config table after applying dotted overrides (``optim.epochs=2``)."""
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
        return CxrSegConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid CXR segmentation config: {problems}") from None


# ---- data ------------------------------------------------------------------------------------------


def seg_chain(size: int) -> list[dict[str, Any]]:
    """The preprocessing chain the package records (the classifiers' CXR chain)."""
    from overread.imaging.transforms import cxr_chain

    return cxr_chain(size).to_spec()


def mask_to_model(mask: npt.NDArray[Any], size: int, box: Any) -> npt.NDArray[np.float32]:
    """A source-grid mask letterboxed as the chain letterboxes the image (area, then 0.5)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(np.asarray(mask, dtype=np.float32))[None, None]
    small = F.interpolate(tensor, size=(box.new_rows, box.new_cols), mode="area")[0, 0].numpy()
    out = np.zeros((size, size), dtype=np.float32)
    out[box.top : box.top + box.new_rows, box.left : box.left + box.new_cols] = small >= 0.5
    return out


@dataclass
class SegCohort:
    """Images of a phantom cohort read through the chain, with their lung-field masks."""

    x: npt.NDArray[np.float32]  # (N, 1, S, S)
    y: npt.NDArray[np.float32]  # (N, 1, S, S)
    paths: list[Path] = field(default_factory=list)
    masks: list[Path] = field(default_factory=list)
    patients: list[str] = field(default_factory=list)


def cohort_images(folder: Path) -> list[dict[str, Any]]:
    """The cohort's image records that carry a lung-field mask (ground_truth.json)."""
    truth = folder / "ground_truth.json"
    try:
        images = json.loads(truth.read_text())["images"]
    except (OSError, ValueError, KeyError) as exc:
        raise EvaluationError(f"{truth}: not a phantom chest X-ray cohort ({exc})") from None
    found = [record for record in images if record.get("lung_field")]
    if not found:
        raise EvaluationError(
            f"{folder}: no lung-field masks (written by overread phantom cxr since lung fields "
            "were added; generate the cohort again)"
        )
    return found


def load_seg_cohort(folder: Path, size: int) -> SegCohort:
    """Read every image of a phantom cohort through :func:`seg_chain` with its mask."""
    from PIL import Image as PILImage

    from overread.imaging.transforms import Resize, build_chain

    chain = build_chain(seg_chain(size))
    resize = next(t for t in chain if isinstance(t, Resize))
    xs, ys = [], []
    cohort = SegCohort(np.zeros(0, np.float32), np.zeros(0, np.float32))
    for record in cohort_images(folder):
        path = folder / record["path"]
        run = chain.read_and_apply(path)
        box = resize.geometry(*run.source_shape)
        mask = np.asarray(PILImage.open(folder / record["lung_field"])) > 127
        xs.append(np.asarray(run.processed.pixels, dtype=np.float32)[None])
        ys.append(mask_to_model(mask, size, box)[None])
        cohort.paths.append(path)
        cohort.masks.append(folder / record["lung_field"])
        cohort.patients.append(str(record.get("patient_id", path.parent.parent.name)))
    cohort.x = np.stack(xs)
    cohort.y = np.stack(ys)
    return cohort


def ensure_seg_phantoms(folder: Path, n: int, seed: int, size: int, echo: Echo) -> Path:
    """Write a phantom cohort (``n`` studies, ``seed``) unless one with those is there."""
    from overread.phantom import generate_cohort

    info = folder / "cohort.json"
    if info.is_file() and (folder / "ground_truth.json").is_file():
        params = json.loads(info.read_text()).get("parameters", {})
        if (params.get("n"), params.get("seed"), params.get("rows")) == (n, seed, size):
            try:
                cohort_images(folder)
                return folder
            except OverreadError:
                pass
    echo(f"writing {n} phantom studies (seed {seed}, {size} px) to {folder}")
    generate_cohort(folder, n=n, seed=seed, rows=size, cols=size, workers=1)
    return folder


# ---- training --------------------------------------------------------------------------------------


def build_seg_network(model: SegModel) -> Any:
    """The untrained 2-D UNet of :class:`SegModel` (one output channel)."""
    from overread.models.networks import build_network

    return build_network(
        ARCHITECTURE,
        in_channels=1,
        num_classes=1,
        channels=list(model.channels),
        num_res_units=model.num_res_units,
    )


def seg_loss(name: str) -> Callable[[Any, Any], Any]:
    """MONAI Dice (+ cross-entropy) on the sigmoid output."""
    from monai.losses import DiceCELoss, DiceLoss

    if name == "dice":
        return DiceLoss(sigmoid=True)  # type: ignore[no-any-return]
    return DiceCELoss(sigmoid=True)  # type: ignore[no-any-return]


def _augment(x: Any, y: Any, optim: SegOptim, gen: Any) -> tuple[Any, Any]:
    """Random gamma, contrast, noise and translation (the same shift for image and mask)."""
    import torch

    n = x.shape[0]
    s = optim.intensity
    if s > 0:
        gamma = torch.exp((torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * s * 1.6)
        x = x.clamp(0, 1) ** gamma
        contrast = 1 + (torch.rand(n, 1, 1, 1, generator=gen) * 2 - 1) * s
        x = ((x - 0.5) * contrast + 0.5).clamp(0, 1)
        x = x + torch.randn(x.shape, generator=gen) * 0.04 * s
    if optim.shift > 0:
        xs, ys = [], []
        for i in range(n):
            dy, dx = (torch.randint(-optim.shift, optim.shift + 1, (2,), generator=gen)).tolist()
            xs.append(torch.roll(x[i], shifts=(dy, dx), dims=(-2, -1)))
            ys.append(torch.roll(y[i], shifts=(dy, dx), dims=(-2, -1)))
        x, y = torch.stack(xs), torch.stack(ys)
    return x, y


def dice_scores(pred: npt.NDArray[np.bool_], truth: npt.NDArray[np.bool_]) -> list[float]:
    """Per-image Dice of boolean ``(N, ..., H, W)`` masks (1 when both are empty)."""
    out = []
    for p, t in zip(pred, truth, strict=True):
        total = int(p.sum()) + int(t.sum())
        out.append(1.0 if total == 0 else 2.0 * int((p & t).sum()) / total)
    return out


def predict_logits(net: Any, x: npt.NDArray[np.float32], batch: int = 8) -> npt.NDArray[np.float32]:
    """Logits ``(N, 1, S, S)`` of the network in eval mode."""
    import torch

    net.eval()
    outs = []
    with torch.inference_mode():
        for start in range(0, len(x), batch):
            outs.append(net(torch.from_numpy(x[start : start + batch])).numpy())
    return np.concatenate(outs).astype(np.float32)


@dataclass
class SegTrainResult:
    """What :func:`train_seg` made."""

    losses: list[float]
    seconds: float
    iterations: int


def train_seg(net: Any, cfg: CxrSegConfig, train: SegCohort, echo: Echo = print) -> SegTrainResult:
    """Train ``net`` in place on ``train`` (Adam, cosine learning rate)."""
    import torch

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    loss_fn = seg_loss(cfg.optim.loss)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.optim.lr)
    n = len(train.x)
    per_epoch = max(1, int(np.ceil(n / cfg.optim.batch_size)))
    total = per_epoch * cfg.optim.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.optim.lr, total_steps=total, pct_start=0.1
    )
    x_all = torch.from_numpy(train.x)
    y_all = torch.from_numpy(train.y)
    losses: list[float] = []
    started = time.perf_counter()
    step = 0
    net.train()
    for epoch in range(cfg.optim.epochs):
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, cfg.optim.batch_size):
            idx = order[start : start + cfg.optim.batch_size]
            if len(idx) < 2:
                continue  # batch norm needs two images
            x, y = _augment(x_all[idx], y_all[idx], cfg.optim, gen)
            loss = loss_fn(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.item()))
            if step % cfg.log_every == 0 or step == total:
                echo(
                    f"epoch {epoch + 1}/{cfg.optim.epochs} step {step}/{total} "
                    f"loss {np.mean(losses[-cfg.log_every :]):.4f} "
                    f"({time.perf_counter() - started:.0f} s)"
                )
    net.eval()
    return SegTrainResult(losses, time.perf_counter() - started, step)


# ---- package ---------------------------------------------------------------------------------------


def seg_volume_spec() -> VolumeSpec:
    """The manifest's ``volume`` section of a planar lung-field package."""
    return VolumeSpec(planar=True, postprocess="lung-field", lung_label=LABEL)


def write_seg_package(
    net: Any,
    cfg: CxrSegConfig,
    out: str | Path,
    *,
    metrics: dict[str, Any] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write the trained network as a planar segmentation package (no ONNX)."""
    from overread.models.package import write_package

    size = cfg.model.size
    return write_package(
        out,
        network=net,
        architecture=ARCHITECTURE,
        arch_kwargs={
            "channels": list(cfg.model.channels),
            "num_res_units": cfg.model.num_res_units,
        },
        labels=[LabelSpec(name=LABEL, codes=[LUNG_CODE])],
        input_spec=InputSpec(
            size=size,
            channels=1,
            chain=seg_chain(size),
            window="the file's VOI window, else the 0.5-99.5 percentile window",
            normalisation="[0, 1] after MONOCHROME1 inversion (bone bright); zero padding",
        ),
        name=cfg.name,
        version=cfg.version,
        intended_use=(
            "Research: lung-field segmentation of frontal chest radiographs (CR, DX), "
            "trained on synthetic phantoms only. Not for clinical use."
        ),
        operating_points={LABEL: {"balanced": 0.5}},
        accepts={"modalities": ["CR", "DX"], "body_parts": ["CHEST"]},
        task=Task.SEGMENTATION,
        training={"config": json.loads(cfg.model_dump_json())},
        volume=seg_volume_spec(),
        metrics=metrics or {},
        export_onnx=False,
        overwrite=overwrite,
    )


def seg_model_card(cfg: CxrSegConfig, metrics: dict[str, Any]) -> str:
    """The package's ``MODEL_CARD.md``: what it is, how it was trained, what it reached."""
    test = metrics.get("test_dice_model_grid", {})
    return "\n".join(
        [
            f"# {cfg.name} {cfg.version}",
            "",
            "Lung-field segmentation of frontal chest radiographs (CR, DX): one mask, the",
            "visible lung fields (hemithoraces without the heart and mediastinum), as a",
            "DICOM SEG on the source image's grid. **Research use only; trained on",
            "synthetic phantoms only, not for clinical use.**",
            "",
            "## Training",
            "",
            f"- `overread train --preset cxr-lung-seg`: 2-D MONAI UNet (`{ARCHITECTURE}`,",
            f"  channels {list(cfg.model.channels)}) at {cfg.model.size} px through the",
            "  chest X-ray chain (VOI window, MONOCHROME1 inverted, letterboxed).",
            f"- {metrics.get('train_images')} phantom studies (seed {cfg.data.train_seed},"
            f" {cfg.data.image_size} px), {cfg.optim.epochs} epochs of batch"
            f" {cfg.optim.batch_size}, loss `{cfg.optim.loss}`, Adam (one-cycle, max lr"
            f" {cfg.optim.lr:g}), {metrics.get('train_seconds')} s.",
            "",
            "## Figures",
            "",
            f"- Test Dice on the model grid: {test.get('mean', float('nan')):.4f} (min"
            f" {test.get('min', float('nan')):.4f}) on {test.get('images')} phantom images of"
            f" seed {cfg.data.test_seed} (other patients).",
            "- On the source grid, as the SEG holds it: `overread evaluate --model PACKAGE",
            "  --data PHANTOM_DIR` (Dice, HD95, NSD with patient-level intervals;",
            "  docs/evaluation.md).",
            "",
            "## Limits",
            "",
            "- Phantom anatomy only: real radiographs (projection of real lungs, devices,",
            "  lateral views, paediatric patients) are outside what it has seen.",
            "- The lung field is the phantom's geometric lung field: lung hidden behind the",
            "  heart or below the domes is not part of it.",
            "",
        ]
    )


@dataclass
class SegRunResult:
    """Paths and figures of :func:`run_seg_training`."""

    package: Path
    metrics: dict[str, Any]


def run_seg_training(cfg: CxrSegConfig, echo: Echo = print) -> SegRunResult:
    """Phantoms -> training -> test Dice on another seed -> package and metrics.json."""
    import torch

    from overread.models.package import resign_package

    torch.set_num_threads(cfg.threads)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    data = cfg.data
    size = cfg.model.size
    train_dir = data.train_dir or ensure_seg_phantoms(
        out / "train-phantoms", data.train_n, data.train_seed, data.image_size, echo
    )
    test_dir = data.test_dir or ensure_seg_phantoms(
        out / "test-phantoms", data.test_n, data.test_seed, data.image_size, echo
    )
    train = load_seg_cohort(Path(train_dir), size)
    test = load_seg_cohort(Path(test_dir), size)
    echo(f"train: {len(train.x)} images; test: {len(test.x)} images (other seed)")
    torch.manual_seed(cfg.seed)
    net = build_seg_network(cfg.model)
    if cfg.model.init is not None:
        weights = Path(cfg.model.init)
        weights = weights / "model.pt" if weights.is_dir() else weights
        try:
            net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        except (OSError, RuntimeError) as exc:
            raise ConfigError(f"model.init {weights}: cannot load these weights ({exc})") from None
        echo(f"starting from {weights}")
    result = train_seg(net, cfg, train, echo)
    logits = predict_logits(net, test.x)
    dice = dice_scores(logits[:, 0] >= 0.0, test.y[:, 0] >= 0.5)
    metrics: dict[str, Any] = {
        "test_dice_model_grid": {
            "mean": float(np.mean(dice)),
            "min": float(np.min(dice)),
            "images": len(dice),
            "description": f"Dice at {size} px on {len(dice)} phantom images of another seed",
        },
        "train_images": len(train.x),
        "train_seconds": round(result.seconds, 1),
        "iterations": result.iterations,
        "final_loss": float(np.mean(result.losses[-10:])) if result.losses else None,
    }
    echo(
        f"test Dice (model grid, {len(dice)} images): mean {np.mean(dice):.4f}, "
        f"min {np.min(dice):.4f}; trained in {result.seconds:.0f} s"
    )
    package = write_seg_package(net, cfg, out / "package", metrics=metrics)
    (package / "MODEL_CARD.md").write_text(seg_model_card(cfg, metrics), encoding="utf-8")
    resign_package(package)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return SegRunResult(package, metrics)


__all__ = [
    "ARCHITECTURE",
    "LABEL",
    "CxrSegConfig",
    "SegCohort",
    "build_seg_network",
    "cohort_images",
    "dice_scores",
    "is_seg_config",
    "load_seg_cohort",
    "mask_to_model",
    "parse_seg_config",
    "run_seg_training",
    "seg_chain",
    "seg_toml",
    "seg_volume_spec",
    "train_seg",
    "write_seg_package",
]
