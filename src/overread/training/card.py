"""The model card (MODEL_CARD.md) written into every trained package.

After Mitchell et al., "Model Cards for Model Reporting" (FAT* 2019): intended
use, training data, evaluation data, per-label metrics with uncertainty, and
known failure modes, in plain words next to the weights they describe.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from overread.errors import ConfigError
from overread.training.config import TrainConfig
from overread.training.warmstart import init_kind

#: Mean AUC the default model should reach on phantoms of another seed.
TARGET_MEAN_AUC = 0.90

#: Why each label is easy or hard for a classifier; used in the card's per-label table.
LABEL_NOTES: dict[str, str] = {
    "No Finding": "defined by absence of all others: inherits every other label's errors",
    "Enlarged Cardiomediastinum": "subtle widening, overlaps with Cardiomegaly",
    "Cardiomegaly": "large, global shape change: easiest",
    "Lung Opacity": "umbrella label over several findings of different look",
    "Lung Lesion": "small focal nodules, few pixels at low resolution",
    "Edema": "diffuse, bilateral, low-contrast texture",
    "Consolidation": "dense focal opacity, overlaps Pneumonia/Opacity",
    "Pneumonia": "clinical diagnosis; looks like Consolidation on the image",
    "Atelectasis": "small volume loss, thin linear opacities",
    "Pneumothorax": "thin pleural line, often at the apex: few pixels",
    "Pleural Effusion": "blunted costophrenic angle, usually visible",
    "Pleural Other": "rare, heterogeneous",
    "Fracture": "thin cortical breaks; lost when downsampled",
    "Support Devices": "thin lines and tubes: high contrast but a pixel or two wide after downsampling",
}


def _fmt(x: Any) -> str:
    return f"{x:.3f}" if isinstance(x, float) else "n/a"


def _calibration_lines(block: dict[str, Any]) -> list[str]:
    """ECE before/after Platt scaling and the operating points' sensitivity/specificity."""
    ece, points = block.get("ece"), block.get("operating_points")
    if not ece or not points:
        return []
    lines = [
        "Calibration (expected calibration error, 10 bins, against exact truth) and the "
        "operating points chosen on validation, applied to the calibrated probabilities "
        "as the pipeline applies them (sensitivity / specificity):",
        "",
        "| label | ECE raw | ECE calibrated | balanced | high sensitivity | high specificity |",
        "| --- | ---: | ---: | --- | --- | --- |",
    ]

    def pair(item: dict[str, Any] | None) -> str:
        if not item or item.get("sensitivity") is None or item.get("specificity") is None:
            return "n/a"
        return f"{item['sensitivity']:.2f} / {item['specificity']:.2f}"

    for label, e in ece.items():
        p = points.get(label, {})
        lines.append(
            f"| {label} | {_fmt(e.get('raw'))} | {_fmt(e.get('calibrated'))} | "
            f"{pair(p.get('balanced'))} | {pair(p.get('high sensitivity'))} | "
            f"{pair(p.get('high specificity'))} |"
        )
    lines.append("")
    return lines


def _focus(block: dict[str, Any]) -> str:
    focus = block.get("focus_labels")
    if not focus:
        return ""
    return f"; over {', '.join(focus)}: **{_fmt(block.get('focus_mean_auc'))}**"


def _package_id(init: dict[str, Any] | None, folder: Path) -> str:
    """`name version` and content hash of the verified package the run started from, as
    recorded in run.json; the folder name when the record does not say."""
    if init and init.get("kind") == "package" and init.get("name"):
        return f"`{init['name']} {init['version']}` (verified; sha256 `{init.get('sha256')}`)"
    return f"`{folder.name}`"


def _class_map_grid(config: TrainConfig, last_stride: int) -> int:
    """Side of the network's final feature map (the class map) at ``config.data.size``."""
    from overread.models import build_network

    kwargs = {**config.model.kwargs, "last_stride": last_stride}
    net = build_network(
        config.model.architecture, in_channels=config.data.channels, num_classes=1, **kwargs
    )
    features = getattr(net, "features", None)
    if not isinstance(features, torch.nn.Module):
        raise ConfigError(f"{config.model.architecture}: no feature map to measure")
    size = config.data.size
    with torch.no_grad():
        shape = features.eval()(torch.zeros(1, config.data.channels, size, size)).shape
    return int(shape[-1])


def _pool_lines(config: TrainConfig) -> list[str]:
    """Lines on the pooling head and the class map when they are not the defaults."""
    kwargs = config.model.kwargs
    lines: list[str] = []
    if kwargs.get("pool") == "lse":
        r = float(kwargs.get("pool_r", 5.0))
        lines.append(
            f"- Pooling: log-sum-exp of the class map, logit = (1/r) log mean exp(r * cam), "
            f"r = {r:g}: the CAM is the exact per-location logit and the score a smooth "
            "maximum of it (a global average pool would dilute one-cell findings)."
        )
    if kwargs.get("last_stride") == 1:
        fine, coarse = _class_map_grid(config, 1), _class_map_grid(config, 2)
        size = config.data.size
        lines.append(
            "- Class map: the last stage does not downsample (`last_stride = 1`), so the map "
            f"(and the CAM) is {fine} x {fine} at {size} px instead of {coarse} x {coarse}."
        )
    return lines


def model_card(config: TrainConfig, labels: list[str], record: dict[str, Any]) -> str:
    """Markdown model card from a finished run's record."""
    metrics = record["metrics"]
    evals = metrics.get("evaluations", {})
    timings = record.get("timings_seconds", {})
    counts = record.get("counts", {})
    lines = [
        f"# Model card: {config.package.name} {config.package.version}",
        "",
        "## Intended use",
        "",
        config.package.intended_use,
        "",
    ]
    if config.data.phantom is not None:
        lines += [
            "Research and demonstration: this model was trained on synthetic phantoms, "
            "**not for clinical use**. It exists so that the whole overread pipeline "
            "(DICOM in, findings, explanations and structured reports out) runs offline on a "
            "fresh install. Its outputs on real radiographs are meaningless.",
            "",
        ]
    else:
        lines += [
            f"Trained on a `{config.data.format}` label file; **not for clinical use** "
            "unless validated locally (`overread evaluate`) and cleared for that use.",
            "",
        ]
    init = config.model.init
    if init is None:
        origin = "trained from scratch (no pre-trained weights)"
    elif (kind := init_kind(init)) == "package":
        package = _package_id(record.get("init"), init)
        origin = f"initialised from the weights of model package {package}, then trained further"
    elif kind == "file":  # a checkpoint or state-dict file
        origin = f"initialised from `{init.parent.name}/{init.name}`, then trained further"
    else:  # a run folder: its best checkpoint
        origin = f"initialised from the best checkpoint of run `{init.name}`, then trained further"
    lines += [
        "## Model",
        "",
        f"- Architecture: `{config.model.architecture}` (built by "
        f"`overread.models.build_network`), {origin}.",
        *_pool_lines(config),
        f"- Input: {config.data.channels} channel(s), {config.data.size} x {config.data.size}, "
        "through the standard chest X-ray chain (`cxr_chain`, recorded in the manifest), "
        "values in [0, 1].",
        f"- Output: {len(labels)} independent sigmoid probabilities (CheXpert label order), "
        "Platt-calibrated on validation; three operating points per label (balanced, "
        "high sensitivity, high specificity) chosen on validation.",
        "",
        "## Training data",
        "",
    ]
    data = config.data
    if data.phantom is not None:
        enriched = "".join(
            f" --prevalence {label}={value:g}" for label, value in data.phantom.prevalence.items()
        )
        lines.append(
            f"- Phantom cohort: `overread phantom cxr --n {data.phantom.n} --seed "
            f"{data.phantom.seed}{enriched}`; labels as a report labeller would give them "
            f"(uncertain, noisy), label policy `{data.policy}`."
        )
        if enriched:
            lines.append(
                "- Enriched labels: the validation split is enriched too, so their calibration "
                "and thresholds are moved to the phantom's default prevalence (prior shift: "
                "the logit moves by logit(default) - logit(enriched); every image stays on "
                "the same side of each threshold, the indeterminate band moves with the "
                "probabilities). The held-out split of the training cohort is scored with "
                "the calibration as fitted, the separate cohort with the shifted one."
            )
    elif data.labels_csv is not None:
        valid = f", validation labels `{data.valid_csv.name}`" if data.valid_csv else ""
        lines.append(
            f"- `{data.format}` labels `{data.labels_csv.name}`{valid}; views `{data.views}`; "
            f"label policy `{data.policy}`."
        )
    lines += [
        f"- Patient-level split {tuple(data.split)} (seed {data.split_seed}): "
        f"{counts.get('train', '?')} training images ({counts.get('patients_train', '?')} "
        f"patients), {counts.get('val', '?')} validation images.",
        f"- Loss `{config.loss.kind}` with per-class pos_weight={config.loss.pos_weight}, "
        f"sampler `{config.loss.sampler}`, {config.optim.optimizer} lr {config.optim.lr}, "
        f"{config.optim.schedule} schedule, batch {config.optim.batch_size}, "
        f"{metrics.get('epochs_run')} epochs (best {int(metrics.get('best_epoch', -1)) + 1}).",
        f"- Trained on `{record.get('device')}` with {record.get('world_size')} process(es) "
        f"and {record.get('threads')} thread(s): preprocessing "
        f"{timings.get('preprocess')} s, training {timings.get('train')} s.",
        f"- Source commit `{record.get('git', {}).get('commit')}`, seed {record.get('seed')}; "
        "data hashes in the manifest's training record.",
        "",
        "## Evaluation",
        "",
    ]
    for name, block in evals.items():
        target = ""
        if name == "external":
            met = isinstance(block["mean_auc"], float) and block["mean_auc"] >= TARGET_MEAN_AUC
            target = (
                f" The project's target, mean AUC >= {TARGET_MEAN_AUC:.2f} on a cohort of "
                f"another seed, is **{'met' if met else 'not met'}**."
            )
        lines += [
            f"### {block['description']}",
            "",
            f"{block['n_images']} images of {block['n_patients']} patients, "
            f"{block.get('truth', 'exact ground truth (truth.csv)')}. "
            f"Mean AUC **{_fmt(block['mean_auc'])}**{_focus(block)}. 95% CIs: percentile "
            f"bootstrap resampling patients.{target}",
            "",
            "| label | positives | AUC | 95% CI | why it is easy or hard |",
            "| --- | ---: | ---: | --- | --- |",
        ]
        for label, item in block["per_label"].items():
            ci = item.get("ci95")
            ci_text = f"{ci[0]:.3f} - {ci[1]:.3f}" if ci else "n/a"
            lines.append(
                f"| {label} | {item['n_positive']} | {_fmt(item['auc'])} | {ci_text} | "
                f"{LABEL_NOTES.get(label, '')} |"
            )
        lines.append("")
        lines += _calibration_lines(block)
    lines += [
        "## Known failure modes",
        "",
        "- Real radiographs: the phantoms' anatomy, noise and findings are simplified; "
        "expect near-chance performance and confident errors on real images.",
        "- Small, thin findings (fracture, pneumothorax line, small lesions) lose detail at "
        f"{config.data.size} px; they are the weakest labels.",
        "- Co-occurring labels (Consolidation / Pneumonia / Lung Opacity) are entangled: the "
        "model cannot tell a clinical diagnosis from its image appearance.",
        "- Labels trained with uncertain or blank report labels inherit the labeller's noise; "
        "thresholds were set on noisy validation labels.",
        "- Site and scanner shift: calibration holds only for acquisition like the training "
        "cohort's; monitor drift before trusting probabilities.",
        "",
    ]
    return "\n".join(lines)


__all__ = ["LABEL_NOTES", "TARGET_MEAN_AUC", "model_card"]
