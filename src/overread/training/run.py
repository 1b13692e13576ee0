"""``overread train``: from a config to a model package, reproducibly.

Steps: generate (or reuse) the phantom cohorts; read labels; split by patient;
apply the label policy; preprocess every image once through the serving chain;
build the network; train (two phases, early stopping, checkpoints, DDP under
``torchrun``); evaluate on the held-out test patients and on the external
cohort against exact truth with patient-clustered bootstrap CIs; fit operating
points and calibration on validation; optionally prune / distil and measure
the trade-off; write the model package, ``run.json`` (resolved config, git
commit, data hashes, seed, versions, timings) and ``report.html``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from overread.errors import ConfigError, DatasetError, OverreadError
from overread.training.card import model_card
from overread.training.compression import ModelCost, magnitude_prune, measure, sparsity
from overread.training.config import PhantomSource, TrainConfig
from overread.training.data import TensorDataset, array_sha256, file_sha256, preprocess_images
from overread.training.metrics import (
    bootstrap_auc_ci,
    expected_calibration_error,
    mean_auc,
    per_class_auc,
)
from overread.training.operating import (
    apply_platt,
    operating_point_performance,
    operating_points,
    platt_calibration,
    prior_shift,
)
from overread.training.report import write_report
from overread.training.trainer import DistributedContext, Trainer, init_distributed
from overread.training.warmstart import WarmStart, load_weights, weights_at

log = logging.getLogger(__name__)

Echo = Callable[[str], None]


@dataclass
class RunResult:
    """Where a run's outputs are and its headline numbers."""

    output: Path
    package: Path | None
    report: Path
    run_record: Path
    metrics: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------- cohorts
def phantom_dir(source: PhantomSource, output: Path, name: str) -> Path:
    """The cohort folder: ``source.out`` or ``<output>/../phantoms/<name>-n<n>-s<seed>``."""
    if source.out is not None:
        return source.out
    return output.parent / "phantoms" / f"{name}-n{source.n}-s{source.seed}"


def ensure_phantom(source: PhantomSource, folder: Path, echo: Echo) -> Path:
    """Reuse the cohort in ``folder`` when it matches ``n`` and ``seed``, else generate it."""
    cohort = folder / "cohort.json"
    if cohort.is_file() and (folder / "labels.csv").is_file():
        try:
            info = json.loads(cohort.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            info = {}
        if _matches(info, source):
            echo(f"reusing phantom cohort {folder}")
            return folder
        raise ConfigError(
            f"{folder}: holds a phantom cohort with other parameters than n={source.n}, "
            f"seed={source.seed}, prevalence {dict(source.prevalence) or 'default'}; "
            "remove it or choose another folder"
        )
    try:
        from overread.phantom import CohortOptions, write_cohort
    except ImportError:
        raise ConfigError(
            "phantom generation is not available in this installation (overread.phantom)"
        ) from None

    echo(f"generating {source.n} phantom studies (seed {source.seed}) in {folder}")
    # What ``overread phantom cxr --n N --out FOLDER --seed S --size Z --workers W`` writes:
    # every other option at its default.
    options = CohortOptions(
        n=source.n,
        seed=source.seed,
        rows=source.size,
        cols=source.size,
        workers=source.workers,
        prevalence=dict(source.prevalence),
    )
    summary = write_cohort(folder, options)
    if not (folder / "labels.csv").is_file():
        raise DatasetError(f"{folder}: phantom generation wrote no labels.csv")
    echo(
        f"wrote {summary.studies} studies of {summary.patients} patients to {summary.out_dir} "
        f"in {summary.seconds:.1f} s ({summary.studies_per_minute:.0f} studies/min)"
    )
    echo("sites: " + json.dumps(summary.per_site, sort_keys=True))
    return folder


def enrichment_shifts(config: TrainConfig, labels: list[str]) -> dict[str, tuple[float, float]]:
    """``{label: (cohort prevalence, default prevalence)}`` for labels the phantom cohort enriches."""
    source = config.data.phantom
    if config.data.format != "phantom" or source is None or not source.prevalence:
        return {}
    from overread.phantom.sampling import DEFAULT_PREVALENCE

    return {  # a label generated absent (0) has nothing to calibrate: it is left alone
        label: (float(value), float(DEFAULT_PREVALENCE[label]))
        for label, value in source.prevalence.items()
        if label in labels and 0.0 < value < 1.0 and value != DEFAULT_PREVALENCE[label]
    }


def _matches(info: dict[str, Any], source: PhantomSource) -> bool:
    def find(key: str) -> Any:
        if key in info:
            return info[key]
        for value in info.values():
            if isinstance(value, dict) and key in value:
                return value[key]
        return None

    from overread.phantom.sampling import validate_prevalence

    seed, n, rows = find("seed"), find("n"), find("rows")
    prevalence = find("prevalence") or {}
    return (
        (seed is None or int(seed) == source.seed)
        and (n is None or int(n) == source.n)
        and (rows is None or int(rows) == source.size)
        and validate_prevalence(prevalence) == validate_prevalence(source.prevalence)
    )


# ---------------------------------------------------------------- datasets
@dataclass
class Splits:
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset | None  # held-out patients, exact truth
    external: TensorDataset | None  # other cohort (other seed), exact truth
    labels: list[str]
    hashes: dict[str, str]
    counts: dict[str, int]
    left_out: list[str]
    chain_spec: list[dict[str, Any]] = field(default_factory=list)


#: Gives the chain spec once the training split's image paths are known.
ChainFor = Callable[[list[Path]], list[dict[str, Any]]]


def training_chain(config: TrainConfig) -> list[dict[str, Any]] | ChainFor:
    """The run's preprocessing chain: ``cxr_chain`` with the configured harmonisation.

    Histogram matching needs a reference fitted on training images, so then the
    chain is a function of the training split's paths (the first
    ``reference_images`` of them, read through the chain up to the match).
    """
    from overread.imaging.transforms import (
        Harmonisation,
        build_chain,
        cxr_chain,
        reference_quantiles,
    )

    section = config.harmonisation.model_dump(exclude={"reference_images"})
    harmonisation = Harmonisation.from_dict(section)
    size = config.data.size
    if not harmonisation.needs_reference:
        return cxr_chain(size, harmonisation=harmonisation).to_spec()
    limit = config.harmonisation.reference_images

    def chain_for(paths: list[Path]) -> list[dict[str, Any]]:
        before = Harmonisation(vendor_lut=harmonisation.vendor_lut)
        upto = build_chain(cxr_chain(size, harmonisation=before).to_spec()[:-1])
        images = []
        for path in paths[:limit]:
            try:
                images.append(upto(path).pixels)
            except OverreadError as exc:
                log.warning("histogram reference: %s left out (%s)", path, exc)
        reference = reference_quantiles(images)
        return cxr_chain(size, harmonisation=harmonisation.with_reference(reference)).to_spec()

    return chain_for


def _tensors(
    table: Any,
    targets: np.ndarray,
    mask: np.ndarray,
    config: TrainConfig,
    chain_spec: list[dict[str, Any]],
    cache_dir: Path | None,
    left_out: list[str],
) -> TensorDataset:
    paths = [table.image_path(i) for i in range(len(table))]
    images, errors = preprocess_images(
        paths,
        chain_spec,
        config.data.size,
        cache_dir=cache_dir,
        num_workers=config.data.num_workers,
    )
    ok = np.array([not e for e in errors], dtype=bool)
    left_out.extend(e for e in errors if e)
    ds = TensorDataset(
        images=images,
        targets=targets.astype(np.float32),
        mask=mask.astype(np.float32),
        patient_ids=[str(p) for p in table.frame["patient_id"]],
        paths=[str(p) for p in table.frame["path"]],
    )
    return ds if ok.all() else ds.subset(ok)


def _truth_for(table: Any, folder: Path) -> tuple[np.ndarray, np.ndarray]:
    """Exact 0/1 labels of the table's images from the cohort's truth.csv."""
    from overread.data import read_labels

    truth = read_labels("phantom-truth", folder, root=folder)
    index = {str(p): i for i, p in enumerate(truth.frame["path"])}
    rows = [index.get(str(p), -1) for p in table.frame["path"]]
    if min(rows, default=0) < 0:
        raise DatasetError(f"{folder}: truth.csv lacks images that labels.csv lists")
    raw = truth.raw[np.asarray(rows, dtype=int)]
    return np.nan_to_num(raw, nan=0.0).clip(0, 1), np.isfinite(raw).astype(np.float32)


def build_splits(
    config: TrainConfig,
    ctx: DistributedContext,
    chain: list[dict[str, Any]] | ChainFor,
    echo: Echo,
) -> Splits:
    """Read, split, apply the policy and preprocess (rank 0 first, then the others reuse)."""
    from overread.data import apply_policy, patient_split, read_labels

    data = config.data
    hashes: dict[str, str] = {}
    folder: Path | None = None
    if data.phantom is not None:
        folder = phantom_dir(data.phantom, config.output, "train")
        if ctx.is_main:
            ensure_phantom(data.phantom, folder, echo)
        _barrier(ctx)
        table = read_labels("phantom", folder / "labels.csv", root=folder)
    else:
        assert data.labels_csv is not None
        table = read_labels(data.format, data.labels_csv, root=data.root)
    if table.skipped:
        echo(f"{len(table.skipped)} label rows skipped (e.g. {table.skipped[0]})")
    table = select_views(table, data.views, echo)
    source = table.source or data.labels_csv
    if source is not None and Path(source).is_file():
        hashes[f"labels:{Path(source).name}"] = file_sha256(Path(source))
    if folder is not None:
        for name in ("truth.csv", "cohort.json"):
            if (folder / name).is_file():
                hashes[f"train-cohort:{name}"] = file_sha256(folder / name)
    labels = list(table.labels)
    unknown = [name for name in data.focus_labels if name not in labels]
    if unknown:
        raise ConfigError(
            f"data.focus_labels names label(s) the data does not have: {', '.join(unknown)}"
        )
    if data.valid_csv is not None:
        val_t = read_labels(data.format, data.valid_csv, root=data.root)
        if val_t.skipped:
            echo(f"{len(val_t.skipped)} validation label rows skipped (e.g. {val_t.skipped[0]})")
        val_t = select_views(val_t, data.views, echo)
        if list(val_t.labels) != labels:
            raise DatasetError(f"{data.valid_csv}: its labels differ from {data.labels_csv}'s")
        if not len(val_t):
            raise DatasetError(f"{data.valid_csv}: no usable validation images")
        hashes[f"valid-labels:{data.valid_csv.name}"] = file_sha256(data.valid_csv)
        # Patients in both files would leak into validation: train without them.
        shared = set(val_t.frame["patient_id"]) & set(table.frame["patient_id"])
        if shared:
            echo(
                f"{len(shared)} patient(s) of {data.valid_csv.name} also in the training labels: left out of training"
            )
            keep = ~table.frame["patient_id"].isin(shared).to_numpy()
            table = table.take(np.flatnonzero(keep))
        train_t, _, test_t = patient_split(table, data.split, seed=data.split_seed)
    else:
        train_t, val_t, test_t = patient_split(table, data.split, seed=data.split_seed)
    chain_spec = (
        chain([Path(train_t.image_path(i)) for i in range(len(train_t))])
        if callable(chain)
        else chain
    )
    cache_dir = (config.output.parent / "cache") if data.cache else None
    left_out: list[str] = []

    def policy(t: Any) -> tuple[np.ndarray, np.ndarray]:
        targets, mask = apply_policy(t, data.policy, labels)
        return np.asarray(targets), np.asarray(mask)

    if ctx.is_main:
        echo(
            f"patients: train {train_t.n_patients}, val {val_t.n_patients}, "
            f"test {test_t.n_patients}; images {len(train_t)}/{len(val_t)}/{len(test_t)}"
        )
    # Rank 0 fills the cache first; the other ranks then read it.
    if not ctx.is_main:
        _barrier(ctx)
    datasets: dict[str, TensorDataset | None] = {}
    datasets["train"] = _tensors(train_t, *policy(train_t), config, chain_spec, cache_dir, left_out)
    datasets["val"] = _tensors(val_t, *policy(val_t), config, chain_spec, cache_dir, left_out)
    datasets["test"] = None
    if len(test_t):
        test_labels = _truth_for(test_t, folder) if folder is not None else policy(test_t)
        datasets["test"] = _tensors(test_t, *test_labels, config, chain_spec, cache_dir, left_out)
    datasets["external"] = None
    if data.test_phantom is not None:
        ext_folder = phantom_dir(data.test_phantom, config.output, "test")
        if ctx.is_main:
            ensure_phantom(data.test_phantom, ext_folder, echo)
        ext = read_labels("phantom", ext_folder / "labels.csv", root=ext_folder)
        for name in ("truth.csv", "cohort.json"):
            if (ext_folder / name).is_file():
                hashes[f"test-cohort:{name}"] = file_sha256(ext_folder / name)
        datasets["external"] = _tensors(
            ext, *_truth_for(ext, ext_folder), config, chain_spec, cache_dir, left_out
        )
    if ctx.is_main:
        _barrier(ctx)
    train, val = datasets["train"], datasets["val"]
    assert train is not None and val is not None
    for key, ds in datasets.items():
        if ds is not None:
            hashes[f"pixels:{key}"] = array_sha256(np.asarray(ds.images))
            hashes[f"targets:{key}"] = array_sha256(ds.targets)
    counts = {k: len(v) for k, v in datasets.items() if v is not None}
    counts["patients_train"] = len(set(train.patient_ids))
    counts["patients_val"] = len(set(val.patient_ids))
    return Splits(
        train=train,
        val=val,
        test=datasets["test"],
        external=datasets["external"],
        labels=labels,
        hashes=hashes,
        counts=counts,
        left_out=left_out,
        chain_spec=chain_spec,
    )


def select_views(table: Any, views: str, echo: Echo) -> Any:
    """``views="frontal"``: the table without rows whose view is known to be lateral."""
    if views == "all":
        return table
    frame = table.frame
    lateral = np.zeros(len(frame), dtype=bool)
    for column in ("view", "frontal_lateral"):
        if column in frame.columns:
            lateral |= frame[column].astype(str).str.strip().str.lower().eq("lateral").to_numpy()
    if lateral.any():
        echo(f"{int(lateral.sum())} lateral image(s) left out (views = frontal)")
        return table.take(np.flatnonzero(~lateral))
    return table


def _barrier(ctx: DistributedContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.barrier()


# ----------------------------------------------------------------- network
def input_transform(channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Grey images in [0, 1]; repeated to 3 channels for 3-channel networks."""

    def transform(x: torch.Tensor) -> torch.Tensor:
        return x.expand(-1, 3, -1, -1) if channels == 3 and x.shape[1] == 1 else x

    return transform


def build_model(
    config: TrainConfig, labels: Sequence[str], *, start: WarmStart | None = None
) -> nn.Module:
    """The configured network, optionally initialised from ``model.init`` (a checkpoint,
    a run folder or a verified model package; see :mod:`overread.training.warmstart`).

    ``start`` is that init, already read by :func:`warm_start`; None reads it here.
    """
    from overread.models import build_network

    torch.manual_seed(config.seed)
    net = build_network(
        config.model.architecture,
        in_channels=config.data.channels,
        num_classes=len(labels),
        **config.model.kwargs,
    )
    if start is None and config.model.init is not None:
        start = warm_start(config, labels)
    if start is not None:
        load_weights(net, start)
    if config.model.sync_batchnorm and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)  # type: ignore[no-untyped-call]
    return net


def warm_start(config: TrainConfig, labels: Sequence[str]) -> WarmStart | None:
    """The verified weights ``model.init`` names (None without one)."""
    if config.model.init is None:
        return None
    return weights_at(
        config.model.init,
        architecture=config.model.architecture,
        channels=config.data.channels,
        kwargs=dict(config.model.kwargs),
        labels=labels,
    )


def load_teacher(path: Path, channels: int, num_classes: int) -> nn.Module:
    """A teacher from a previous run folder (its run.json names the architecture)."""
    from overread.models import build_network

    record = path / "run.json"
    if not record.is_file():
        raise ConfigError(f"{path}: a distillation teacher must be a run folder with run.json")
    info = json.loads(record.read_text(encoding="utf-8"))
    model = info["config"]["model"]
    net = build_network(
        model["architecture"], in_channels=channels, num_classes=num_classes, **model["kwargs"]
    )
    start = weights_at(
        path, architecture=model["architecture"], channels=channels, kwargs=model["kwargs"]
    )
    load_weights(net, start)
    return net.eval()


# -------------------------------------------------------------- evaluation
def evaluate(
    trainer: Trainer,
    ds: TensorDataset,
    labels: list[str],
    description: str,
    n_boot: int,
    *,
    focus: list[str] | None = None,
    truth: str | None = None,
) -> dict[str, Any]:
    """Per-label AUC with patient-clustered 95% bootstrap CI.

    ``focus`` labels get their own mean AUC (``focus_mean_auc``); ``truth`` says
    what the labels are when they are not a phantom's exact truth.
    """
    probs, targets, mask, _ = trainer.predict(ds)
    aucs = per_class_auc(probs, targets, mask)
    cis = bootstrap_auc_ci(probs, targets, clusters=ds.patient_ids or None, n_boot=n_boot)
    per_label = {
        label: {
            "auc": aucs[i],
            "ci95": _ci(cis[i]),
            "n_positive": int(targets[:, i].sum()),
            "n": int(mask[:, i].sum()),
        }
        for i, label in enumerate(labels)
    }
    block: dict[str, Any] = {
        "description": description,
        "n_images": len(ds),
        "n_patients": len(set(ds.patient_ids)),
        "mean_auc": mean_auc(aucs),
        "per_label": per_label,
    }
    if focus:
        block["focus_labels"] = list(focus)
        block["focus_mean_auc"] = mean_auc([aucs[labels.index(name)] for name in focus])
    if truth:
        block["truth"] = truth
    return block


def calibration_report(
    trainer: Trainer,
    ds: TensorDataset,
    labels: list[str],
    calibration: dict[str, Any],
    points: dict[str, dict[str, float]],
) -> dict[str, Any]:
    """ECE per label before and after calibration, and every operating point's
    sensitivity and specificity on the calibrated probabilities, against exact truth."""
    probs, targets, mask, _ = trainer.predict(ds)
    calibrated = apply_platt(probs, calibration, labels)
    raw_ece = expected_calibration_error(probs, targets, mask)
    cal_ece = expected_calibration_error(calibrated, targets, mask)
    return {
        "ece": {
            label: {"raw": raw_ece[i], "calibrated": cal_ece[i]} for i, label in enumerate(labels)
        },
        "operating_points": operating_point_performance(calibrated, targets, mask, points, labels),
    }


def _ci(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


def git_commit() -> dict[str, Any]:
    """The source tree's commit and whether it had uncommitted changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", str(here.parent)],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(dirty.stdout.strip())}


def _versions() -> dict[str, str]:
    import monai

    from overread import __version__

    return {
        "overread": __version__,
        "torch": torch.__version__,
        "monai": str(monai.__version__),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


# --------------------------------------------------------------------- run
def run_training(
    config: TrainConfig, *, resume: bool = True, echo: Echo | None = None
) -> RunResult:
    """Run a whole training job as configured; see the module docstring."""
    say: Echo = echo or (lambda msg: log.info("%s", msg))
    started = time.time()
    if config.threads:
        torch.set_num_threads(config.threads)
    ctx = init_distributed(config.device)
    out = config.output
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    splits = build_splits(config, ctx, training_chain(config), say)
    chain_spec = splits.chain_spec
    prep_seconds = time.time() - t0
    labels = splits.labels
    start = warm_start(config, labels)
    net = build_model(config, labels, start=start)
    teacher = None
    if config.distill is not None:
        teacher = load_teacher(config.distill.teacher, config.data.channels, len(labels))
    trainer = Trainer(
        net,
        splits.train,
        splits.val,
        output=out,
        optim=config.optim,
        loss=config.loss,
        augment=config.augment,
        early_stop=config.early_stop,
        seed=config.seed,
        device=config.device,
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
        progress=config.progress,
        input_transform=input_transform(config.data.channels),
        teacher=teacher,
        distill=config.distill,
        labels=labels,
    )
    say(
        f"training {config.model.architecture} on {len(splits.train)} images "
        f"({trainer.ctx.world_size} process(es), {trainer.device}, "
        f"{trainer.steps_per_epoch} steps/epoch)"
    )
    t0 = time.time()
    fit = trainer.fit(resume=resume)
    train_seconds = time.time() - t0
    trainer.load_best()
    result = RunResult(
        output=out, package=None, report=out / "report.html", run_record=out / "run.json"
    )
    if not ctx.is_main:
        return result
    trainer.local_predict = True

    n_boot = 300 if len(splits.train) < 200 else 1000
    evaluations: dict[str, Any] = {}
    focus = list(config.data.focus_labels) or None
    labelled = (
        None if config.data.phantom is not None else f"labels with policy {config.data.policy}"
    )
    if splits.test is not None and len(splits.test):
        evaluations["test"] = evaluate(
            trainer,
            splits.test,
            labels,
            "held-out patients of the training cohort",
            n_boot,
            focus=focus,
            truth=labelled,
        )
    if config.data.valid_csv is not None:
        evaluations["validation"] = evaluate(
            trainer,
            splits.val,
            labels,
            f"{config.data.valid_csv.name}, the validation set (also used for early stopping, "
            "calibration and operating points: not an independent test)",
            n_boot,
            focus=focus,
            truth=f"labels with policy {config.data.policy}",
        )
    if splits.external is not None and len(splits.external):
        assert config.data.test_phantom is not None
        evaluations["external"] = evaluate(
            trainer,
            splits.external,
            labels,
            f"separate phantom cohort, seed {config.data.test_phantom.seed}",
            n_boot,
            focus=focus,
        )
    val_probs, val_t, val_m, _ = trainer.predict(splits.val)
    # Calibrate first, then choose thresholds on the calibrated probabilities: the
    # pipeline compares calibrated probabilities with the thresholds.
    calibration = platt_calibration(val_probs, val_t, val_m, labels)
    points = operating_points(apply_platt(val_probs, calibration, labels), val_t, val_m, labels)
    # The validation split is as enriched as the cohort: the package serves at the
    # population's prevalence. The held-out split of the (enriched) training cohort is
    # scored with the calibration as fitted, the separate cohort (default prevalence)
    # with the shifted one.
    fitted = (calibration, points)
    shifts = enrichment_shifts(config, labels)
    if shifts:
        calibration, points = prior_shift(calibration, points, shifts)
    for name, ds in (("test", splits.test), ("external", splits.external)):
        if name in evaluations and ds is not None:
            cal, pts = fitted if name == "test" else (calibration, points)
            evaluations[name].update(calibration_report(trainer, ds, labels, cal, pts))

    shape = (config.data.channels, config.data.size, config.data.size)
    primary = evaluations.get("external") or evaluations.get("test")
    eval_ds = splits.external if "external" in evaluations else splits.test

    def auc_of(model: nn.Module) -> float | None:
        if eval_ds is None:
            return None
        keep = trainer.network
        trainer.network = model.to(trainer.device)
        try:
            p, t, m, _ = trainer.predict(eval_ds)
        finally:
            trainer.network = keep
        return mean_auc(per_class_auc(p, t, m))

    costs: list[ModelCost] = [
        measure(
            net,
            config.model.architecture,
            shape,
            evaluate=lambda _m: primary["mean_auc"] if primary else None,
        )
    ]
    if teacher is not None:
        costs.append(measure(teacher, "teacher", shape, evaluate=auc_of))
    shipped = net
    if config.prune is not None:
        for amount in config.prune.amounts:
            pruned = magnitude_prune(copy.deepcopy(net).cpu(), amount)
            costs.append(
                measure(
                    pruned,
                    f"pruned {amount:.0%} (sparsity {sparsity(pruned):.2f})",
                    shape,
                    evaluate=auc_of,
                )
            )
            if config.prune.apply is not None and abs(amount - config.prune.apply) < 1e-9:
                shipped = pruned
        if config.prune.apply is not None and shipped is net:
            shipped = magnitude_prune(copy.deepcopy(net).cpu(), config.prune.apply)

    metrics = {
        "evaluations": evaluations,
        "validation_best_mean_auc": fit.best_metric,
        "best_epoch": fit.best_epoch,
        "epochs_run": len(fit.history),
        "stopped_early": fit.stopped_early,
    }
    record = {
        "name": config.name,
        "config": json.loads(config.model_dump_json()),
        "git": git_commit(),
        "seed": config.seed,
        "data_hashes": splits.hashes,
        "counts": splits.counts,
        "left_out_images": splits.left_out,
        "world_size": trainer.ctx.world_size,
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "versions": _versions(),
        "timings_seconds": {
            "preprocess": round(prep_seconds, 1),
            "train": round(train_seconds, 1),
            "total": round(time.time() - started, 1),
        },
        "metrics": metrics,
        "compression": [c.to_dict() for c in costs],
        "input_spec": {"size": config.data.size, "channels": config.data.channels},
        # Where the starting weights came from; for a package its verified content hash.
        "init": None if start is None else start.record(),
    }
    result.metrics = metrics
    record_path = out / "run.json"
    record_path.write_text(json.dumps(record, indent=2, default=str), encoding="utf-8")
    (out / "resolved-config.json").write_text(
        json.dumps(record["config"], indent=2), encoding="utf-8"
    )
    write_report(
        out / "report.html",
        {
            "name": config.name,
            "facts": {
                "architecture": config.model.architecture,
                "input": f"{config.data.channels} x {config.data.size} x {config.data.size}",
                "training images": len(splits.train),
                "validation images": len(splits.val),
                "epochs run": len(fit.history),
                "best epoch": fit.best_epoch + 1,
                "best validation mean AUC": fit.best_metric,
                "processes": trainer.ctx.world_size,
                "device": str(trainer.device),
                "train minutes": round(train_seconds / 60, 1),
                "git commit": record["git"]["commit"],
            },
            "evaluations": evaluations,
            "compression": record["compression"],
            "config": record["config"],
        },
        fit.history,
    )
    calib = np.asarray(splits.train.images[: min(64, len(splits.train))], dtype=np.float32)
    if config.data.channels == 3:
        calib = np.repeat(calib, 3, axis=1)
    result.package = write_model_package(
        config, shipped.cpu().eval(), labels, chain_spec, points, calibration, record, calib
    )
    say(f"wrote {result.report}")
    return result


def write_model_package(
    config: TrainConfig,
    net: nn.Module,
    labels: list[str],
    chain_spec: list[dict[str, Any]],
    points: dict[str, dict[str, float]],
    calibration: dict[str, Any],
    record: dict[str, Any],
    int8_images: np.ndarray | None = None,
) -> Path | None:
    """Write ``<output>/package`` through ``overread.models.write_package`` (with a model card)."""
    try:
        from overread.models import write_package
    except ImportError:
        log.warning("overread.models.write_package is not available: no package written")
        return None
    from overread.models import resign_package
    from overread.models.default import CXR_ACCEPTS, cxr_input_spec

    input_spec = cxr_input_spec(config.data.size)
    input_spec["channels"] = config.data.channels
    input_spec["chain"] = chain_spec
    harmonisation = config.harmonisation
    if harmonisation != type(harmonisation)():
        input_spec["normalisation"] += (
            f"; harmonised: vendor LUT {harmonisation.vendor_lut}, intensity "
            f"{harmonisation.intensity}, CLAHE {'on' if harmonisation.clahe else 'off'}"
        )
    training = {
        key: record[key]
        for key in (
            "name",
            "git",
            "seed",
            "data_hashes",
            "counts",
            "timings_seconds",
            "versions",
            "init",
        )
    }
    training["config"] = record["config"]
    training["label_policy"] = config.data.policy
    training["device"] = record["device"]
    training["world_size"] = record["world_size"]
    training["harmonisation"] = config.harmonisation.model_dump()
    shifted = enrichment_shifts(config, labels)
    if shifted:  # what the calibration was moved by: `models prior-shift` will not repeat it
        training["prior_shift"] = {
            label: {"fitted": fitted, "served": served, "version": config.package.version}
            for label, (fitted, served) in shifted.items()
        }
    path: Path = write_package(
        config.output / "package",
        network=net,
        architecture=config.model.architecture,
        arch_kwargs=dict(config.model.kwargs),
        labels=labels,
        input_spec=input_spec,
        name=config.package.name,
        version=config.package.version,
        operating_points=points,
        calibration=calibration,
        metrics=record["metrics"],
        training=training,
        intended_use=config.package.intended_use,
        export_onnx=config.package.export_onnx,
        accepts=CXR_ACCEPTS,
        int8_calibration=int8_images if config.package.export_onnx else None,
        uncertainty={"tta_views": config.package.tta_views}
        if config.package.tta_views > 1
        else None,
        overwrite=True,
    )
    # The card goes in after the weights; re-signing lists it with its checksum.
    (path / "MODEL_CARD.md").write_text(model_card(config, labels, record), encoding="utf-8")
    resign_package(path)
    return path


__all__ = [
    "RunResult",
    "build_model",
    "build_splits",
    "calibration_report",
    "ensure_phantom",
    "evaluate",
    "git_commit",
    "input_transform",
    "load_teacher",
    "phantom_dir",
    "run_training",
    "warm_start",
    "write_model_package",
]
