"""``ct-threshold-baseline``: the HU-threshold lung and nodule segmenter.

A deterministic, untrained baseline for chest CT that travels through the same
package, pipeline and outputs as a trained 3-D network, so the volumetric path
(sliding windows, SEG, TID 1500 SR, routing) is testable without training, and so
a trained network has something to beat. It is *not* a clinical model.

The network maps HU ``(N, 1, D, H, W)`` to two logit channels:

* ``lung``: ``(lung_max_hu - HU) / softness`` - air-like voxels (the lungs, but
  also the air around the patient; the package's ``lung-nodule`` postprocess keeps
  the components away from the volume's sides);
* ``nodule``: ``(HU - nodule_min_hu) / softness`` - denser than aerated lung
  (nodules, but also vessels and the body wall; the postprocess keeps compact
  components inside the lungs).

Its thresholds are buffers, so they are in the package's state dict and hash.
"""

from __future__ import annotations

from pathlib import Path

from overread.models.hu_threshold import HuThreshold
from overread.models.manifest import Code, LabelSpec, Task, VolumeSpec

ARCHITECTURE = "ct-threshold"
NAME = "ct-threshold-baseline"
VERSION = "1.0.0"
LABELS = (
    LabelSpec(name="lung", codes=[Code(scheme="SCT", value="39607008", meaning="Lung")]),
    LabelSpec(name="nodule", codes=[Code(scheme="SCT", value="27925004", meaning="Nodule")]),
)
INTENDED_USE = (
    "Baseline only: HU thresholds with connected components, for testing the CT "
    "segmentation and detection path and as the reference a trained model must beat. "
    "Not for diagnosis."
)


#: The input spec of the HU packages: the network reads Hounsfield units as they are.
HU_INPUT_SPEC: dict[str, object] = {
    "size": 96,
    "channels": 1,
    "chain": [],
    "window": "none: the network reads HU",
    "normalisation": "none (HU)",
}


def baseline_volume_spec() -> VolumeSpec:
    """The baseline's volume section: the ``lung-nodule`` rule with the ``classical`` lung
    (airways out, holes filled in 3-D and slice by slice but for the diaphragm's dome,
    the boundary from the source grid's HU; :mod:`overread.inference.lung_mask`)."""
    return VolumeSpec(lung_refine="classical")


def write_baseline_package(
    out: Path | str,
    *,
    task: Task | str = Task.SEGMENTATION,
    key: bytes | None = None,
    overwrite: bool = False,
    volume: VolumeSpec | None = None,
) -> Path:
    """Write the baseline as a verified package (``segmentation`` or ``detection``).

    The two variants share the network; ``detection`` reports each nodule component
    as a box with a score, ``segmentation`` as a mask with measurements (both get
    the measurements and the boxes in the SR). ``volume`` defaults to
    :func:`baseline_volume_spec`.
    """
    from overread.models.package import resign_package, write_package

    chosen = Task(task)
    if chosen is Task.MULTI_LABEL_CLASSIFICATION:
        raise ValueError("the CT baseline is a segmentation or detection package")
    name = NAME if chosen is Task.SEGMENTATION else f"{NAME}-detection"
    path = write_package(
        out,
        network=HuThreshold(),
        architecture=ARCHITECTURE,
        labels=list(LABELS),
        input_spec=dict(HU_INPUT_SPEC),
        name=name,
        version=VERSION,
        intended_use=INTENDED_USE,
        task=chosen,
        # Not trained, but not a placeholder either: its outputs mean what they say.
        trained=True,
        accepts={"modalities": ["CT"]},
        operating_points={"lung": {"balanced": 0.5}, "nodule": {"balanced": 0.5}},
        training={"kind": "none: fixed HU thresholds (baseline)"},
        metrics={"baseline": True},
        export_onnx=False,
        key=key,
        overwrite=overwrite,
        volume=volume or baseline_volume_spec(),
    )
    (path / "MODEL_CARD.md").write_text(model_card(name, chosen), encoding="utf-8")
    resign_package(path, key=key)
    return path


def model_card(name: str, task: Task) -> str:
    """The package's card: what the baseline is and is not."""
    output = (
        "a mask per nodule and of the lungs (DICOM SEG) with measurements (SR)"
        if task is Task.SEGMENTATION
        else "a box and a score per nodule, with measurements (SR)"
    )
    return f"""# {name} {VERSION}

**This is the baseline, not a trained model.** It thresholds Hounsfield units and
keeps connected components: it exists so that the CT path (series to volume,
sliding-window inference, SEG and TID 1500 SR, routing, the service) can be tested
without training, and as the reference a trained lung/nodule model must beat.

## Intended use

{INTENDED_USE}

## How it works

- Input: a CT series (modality CT), assembled into a volume in HU and resampled to
  2 mm voxels; sliding windows of 64 x 96 x 96 voxels, overlap 0.25, Gaussian
  blending.
- Lung: HU <= -700 on the 2 mm grid without the trachea and main bronchi (air at or
  below -950 HU, opened by a 2.5 mm ball, reaching the first or last slice),
  components not touching the sides of the field of view, holes filled in 3-D and
  slice by slice (vessels and nodules inside the lung) but for the dome of the
  diaphragm; back on the source grid its edge grows to the voxels at or below
  -400 HU within 2 mm (the partial-volume boundary at the source resolution).
  Nodule: HU >= -650 inside the lungs, 3 to 40 mm across.
- Output ({task.value}): {output}. Each nodule's volume, longest diameter, mean HU,
  density (solid, part-solid, ground-glass) and Lung-RADS-style category are
  measured on the source grid.

## Limitations

- Vessels and the chest wall touch the thresholds too: expect false positives
  near the hila and at the lung borders, and ground-glass nodules that lie against
  a vessel merged with it.
- Sizes carry a partial-volume halo from the 2 mm grid (about one voxel).
- Not for diagnosis; every result goes out unverified, for research use.
"""


__all__ = [
    "ARCHITECTURE",
    "HU_INPUT_SPEC",
    "LABELS",
    "NAME",
    "VERSION",
    "HuThreshold",
    "baseline_volume_spec",
    "write_baseline_package",
]
